// Hugging Face directories and safetensors: config parsing, tensor views, sharding, and corrupt files.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/hf_config.h"
#include "engine/safetensors.h"
#include "loader_test_util.h"

namespace qs::loader_test {
namespace {

using nlohmann::json;

double sum_of(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += x;
  return s;
}

TEST(Safetensors, OpensTinyDirectory) {
  const json exp = expected()["tiny_st"];
  auto m = ModelFile::open(fixture("tiny_st"));
  EXPECT_EQ(m->format(), "safetensors");
  const ModelConfig& c = m->config();
  EXPECT_EQ(c.arch, Architecture::kLlama);
  EXPECT_EQ(c.name, "tiny_st");
  EXPECT_EQ(c.hidden_size, 16);
  EXPECT_EQ(c.num_heads, 2);
  EXPECT_EQ(c.num_kv_heads, 1);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.rotary_dim, 8);
  EXPECT_EQ(c.vocab_size, 259);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.eos_token_id, 258);   // generation_config.json's first eos
  EXPECT_EQ(m->tokenizer_spec().eos_id, 258);
  EXPECT_NE(c.chat_template.find("messages"), std::string::npos);
  EXPECT_EQ(m->tokenizer_spec().tokens.size(), 259u);

  for (const auto& [name, t] : exp["tensors"].items()) {
    SCOPED_TRACE(name);
    const StoredTensor& st = m->get(name, shape_of(t["shape"]));
    EXPECT_EQ(dtype_name(st.dtype), t["dtype"].get<std::string>());
    EXPECT_EQ(st.nbytes, dtype_bytes(st.dtype, st.numel()));
    EXPECT_NE(st.file.find("model.safetensors"), std::string::npos);
    const std::vector<float> v = m->get_f32(name, shape_of(t["shape"]));
    for (size_t i = 0; i < t["first"].size(); ++i) EXPECT_EQ(v[i], t["first"][i].get<float>()) << i;
    EXPECT_DOUBLE_EQ(sum_of(v), t["sum"].get<double>());
  }
  // An I64 buffer is known to the file but not loaded; asking for it says why.
  EXPECT_EQ(m->find("model.rotary_emb.position_ids"), nullptr);
  expect_error([&] { m->get("model.rotary_emb.position_ids", {4}); }, ErrorCode::kUnsupported,
               {"model.rotary_emb.position_ids", "I64"});
}

TEST(Safetensors, ViewsPointIntoOneMapping) {
  auto m = ModelFile::open(fixture("tiny_st/model.safetensors"));   // a single file with config.json beside it
  const StoredTensor* a = m->find("model.embed_tokens.weight");
  const StoredTensor* b = m->find("model.norm.weight");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  // Both views lie inside the same file-sized region: nothing was copied out.
  const auto lo = std::min(reinterpret_cast<uintptr_t>(a->data), reinterpret_cast<uintptr_t>(b->data));
  const auto hi = std::max(reinterpret_cast<uintptr_t>(a->data) + a->nbytes, reinterpret_cast<uintptr_t>(b->data) + b->nbytes);
  EXPECT_LE(hi - lo, fs::file_size(fixture("tiny_st/model.safetensors")));
}

TEST(Safetensors, GetChecksPresenceAndShape) {
  auto m = ModelFile::open(fixture("tiny_st"));
  expect_error([&] { m->get("model.layers.7.mlp.up_proj.weight", {32, 16}); }, ErrorCode::kInvalidModel,
               {"tiny_st", "model.layers.7.mlp.up_proj.weight", "missing", "[32, 16]"});
  expect_error([&] { m->get("model.norm.weight", {17}); }, ErrorCode::kInvalidModel,
               {"model.safetensors", "model.norm.weight", "[16]", "[17]"});
}

TEST(Safetensors, OpensShardedDirectoryAndIndex) {
  const json exp = expected()["sharded"];
  for (const std::string& path : {fixture("sharded"), fixture("sharded/model.safetensors.index.json")}) {
    SCOPED_TRACE(path);
    auto m = ModelFile::open(path);
    EXPECT_EQ(m->tensors().size(), exp["tensors"].size());
    for (const auto& [name, t] : exp["tensors"].items()) {
      const std::vector<float> v = m->get_f32(name, shape_of(t["shape"]));
      for (size_t i = 0; i < t["first"].size(); ++i) EXPECT_EQ(v[i], t["first"][i].get<float>());
    }
    EXPECT_NE(m->find("model.embed_tokens.weight")->file.find("model-00001-of-00002"), std::string::npos);
    EXPECT_NE(m->find("model.norm.weight")->file.find("model-00002-of-00002"), std::string::npos);
  }
}

TEST(Safetensors, ShardProblems) {
  {
    TempDir tmp;
    const std::string dir = tmp.copy_fixture("sharded");
    fs::remove(dir + "/model-00002-of-00002.safetensors");
    expect_open_error(dir, ErrorCode::kInvalidModel, {"model-00002-of-00002.safetensors"});
  }
  {
    TempDir tmp;
    const std::string dir = tmp.copy_fixture("sharded");
    json index = json::parse(read_bytes(dir + "/model.safetensors.index.json"));
    index["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors";
    write_bytes(dir + "/model.safetensors.index.json", index.dump());
    expect_open_error(dir, ErrorCode::kInvalidModel, {"model.safetensors.index.json", "model.norm.weight"});
  }
  {
    TempDir tmp;
    const std::string dir = tmp.copy_fixture("sharded");
    json index = json::parse(read_bytes(dir + "/model.safetensors.index.json"));
    index["weight_map"]["model.norm.weight"] = "../../etc/passwd";
    write_bytes(dir + "/model.safetensors.index.json", index.dump());
    expect_open_error(dir, ErrorCode::kInvalidModel, {"model.norm.weight", "not a file name"});
  }
}

// ---- corrupt safetensors -----------------------------------------------------------------------------------

struct StFile {
  json header;
  std::string data;   // everything after the header
};
StFile split_safetensors(const std::string& bytes) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(bytes[size_t(i)]);
  return {json::parse(bytes.substr(8, n)), bytes.substr(8 + n)};
}
std::string join_safetensors(const json& header, const std::string& data) {
  const std::string text = header.dump();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((uint64_t(text.size()) >> (8 * i)) & 0xff);
  return out + text + data;
}

// A copy of tiny_st whose model.safetensors header `edit` changes.
template <typename Edit>
std::string corrupt_header(const TempDir& tmp, Edit edit) {
  const std::string dir = tmp.copy_fixture("tiny_st");
  const std::string file = dir + "/model.safetensors";
  StFile st = split_safetensors(read_bytes(file));
  edit(st.header);
  write_bytes(file, join_safetensors(st.header, st.data));
  return dir;
}

const char* kQ = "model.layers.0.self_attn.q_proj.weight";

TEST(SafetensorsCorrupt, Truncated) {
  TempDir tmp;
  const std::string dir = tmp.copy_fixture("tiny_st");
  const std::string file = dir + "/model.safetensors";
  const std::string bytes = read_bytes(file);
  // The tensor whose data ends last is the one a truncation cuts.
  const StFile st = split_safetensors(bytes);
  std::string last;
  uint64_t last_end = 0;
  for (const auto& [name, e] : st.header.items()) {
    if (name != "__metadata__" && e["data_offsets"][1].get<uint64_t>() > last_end) {
      last_end = e["data_offsets"][1].get<uint64_t>();
      last = name;
    }
  }
  write_bytes(file, bytes.substr(0, bytes.size() - 10));
  expect_open_error(dir, ErrorCode::kInvalidModel, {"model.safetensors", "'" + last + "'", "not within the file",
                                                    "corrupted or incomplete"});
  write_bytes(file, bytes.substr(0, 5));
  expect_open_error(file, ErrorCode::kInvalidModel, {"model.safetensors", "too short"});
  write_bytes(file, bytes.substr(0, 40));
  expect_open_error(file, ErrorCode::kInvalidModel, {"model.safetensors", "past the end of the file"});
  write_bytes(file, "");
  expect_open_error(file, ErrorCode::kInvalidModel, {"model.safetensors"});
}

TEST(SafetensorsCorrupt, OffsetsOutOfBounds) {
  TempDir tmp;
  const std::string dir = corrupt_header(tmp, [](json& h) { h[kQ]["data_offsets"] = {0, 1000000000}; });
  expect_open_error(dir, ErrorCode::kInvalidModel, {"model.safetensors", kQ, "not within the file"});
}

TEST(SafetensorsCorrupt, OffsetsBackwards) {
  TempDir tmp;
  const std::string dir = corrupt_header(tmp, [](json& h) { h[kQ]["data_offsets"] = {100, 50}; });
  expect_open_error(dir, ErrorCode::kInvalidModel, {"model.safetensors", kQ});
}

TEST(SafetensorsCorrupt, ShapeDisagreesWithSize) {
  TempDir tmp;
  const std::string dir = corrupt_header(tmp, [](json& h) { h[kQ]["shape"] = {16, 17}; });
  expect_open_error(dir, ErrorCode::kInvalidModel, {"model.safetensors", kQ, "[16, 17]", "bytes"});
}

TEST(SafetensorsCorrupt, DtypeDisagreesWithSize) {
  TempDir tmp;
  const std::string dir = corrupt_header(tmp, [](json& h) { h[kQ]["dtype"] = "F32"; });
  expect_open_error(dir, ErrorCode::kInvalidModel, {"model.safetensors", kQ, "F32", "bytes"});
}

TEST(SafetensorsCorrupt, UnknownDtype) {
  TempDir tmp;
  const std::string dir = corrupt_header(tmp, [](json& h) { h[kQ]["dtype"] = "F99"; });
  expect_open_error(dir, ErrorCode::kUnsupported, {"model.safetensors", kQ, "F99"});
}

TEST(SafetensorsCorrupt, NegativeOrFractionalShape) {
  TempDir tmp;
  const std::string dir = corrupt_header(tmp, [](json& h) { h[kQ]["shape"] = {-16, -16}; });
  expect_open_error(dir, ErrorCode::kInvalidModel, {"model.safetensors", kQ, "shape"});
  TempDir tmp2;
  const std::string dir2 = corrupt_header(tmp2, [](json& h) { h[kQ]["shape"] = {1.5, 16}; });
  expect_open_error(dir2, ErrorCode::kInvalidModel, {"model.safetensors", kQ, "shape"});
}

TEST(SafetensorsCorrupt, HugeShapeOverflow) {
  TempDir tmp;
  const std::string dir =
      corrupt_header(tmp, [](json& h) { h[kQ]["shape"] = {uint64_t(1) << 40, uint64_t(1) << 40}; });
  expect_open_error(dir, ErrorCode::kInvalidModel, {"model.safetensors", kQ});
}

TEST(SafetensorsCorrupt, OverlappingTensors) {
  TempDir tmp;
  const std::string dir = corrupt_header(tmp, [](json& h) {
    const uint64_t begin = h[kQ]["data_offsets"][0].get<uint64_t>();
    h["model.norm.weight"]["data_offsets"] = {begin + 8, begin + 8 + 64};   // 16 F32 inside q's bytes
  });
  expect_open_error(dir, ErrorCode::kInvalidModel, {"model.safetensors", "overlaps", "model.norm.weight", kQ});
}

TEST(SafetensorsCorrupt, HeaderNotJsonOrTooLarge) {
  TempDir tmp;
  const std::string dir = tmp.copy_fixture("tiny_st");
  const std::string file = dir + "/model.safetensors";
  std::string bytes = read_bytes(file);
  std::string garbled = bytes;
  garbled[8] = '[';
  garbled[9] = '}';
  write_bytes(file, garbled);
  expect_open_error(dir, ErrorCode::kInvalidModel, {"model.safetensors", "not valid JSON"});

  std::string array_header = join_safetensors(json::array({1, 2}), "");
  write_bytes(file, array_header);
  expect_open_error(dir, ErrorCode::kInvalidModel, {"model.safetensors", "not an object"});

  std::string huge = bytes;
  const uint64_t n = 200'000'000;
  for (int i = 0; i < 8; ++i) huge[size_t(i)] = char((n >> (8 * i)) & 0xff);
  write_bytes(file, huge);
  expect_open_error(dir, ErrorCode::kInvalidModel, {"model.safetensors", "100 MB"});

  std::string all_ones = bytes;
  for (int i = 0; i < 8; ++i) all_ones[size_t(i)] = char(0xff);
  write_bytes(file, all_ones);
  expect_open_error(dir, ErrorCode::kInvalidModel, {"model.safetensors"});
}

TEST(SafetensorsCorrupt, EntryMissingFields) {
  TempDir tmp;
  const std::string dir = corrupt_header(tmp, [](json& h) { h[kQ].erase("data_offsets"); });
  expect_open_error(dir, ErrorCode::kInvalidModel, {"model.safetensors", kQ, "data_offsets"});
  TempDir tmp2;
  const std::string dir2 = corrupt_header(tmp2, [](json& h) { h[kQ] = "nonsense"; });
  expect_open_error(dir2, ErrorCode::kInvalidModel, {"model.safetensors", kQ});
}

// ---- paths that are not models -----------------------------------------------------------------------------

TEST(ModelPaths, NotModels) {
  TempDir tmp;
  expect_open_error(tmp / "does-not-exist", ErrorCode::kNotFound, {"does-not-exist"});
  expect_open_error(tmp.path(), ErrorCode::kInvalidModel, {tmp.path(), "not a model directory"});
  write_bytes(tmp / "notes.txt", "just some text, long enough to look like something\n");
  expect_open_error(tmp / "notes.txt", ErrorCode::kInvalidModel, {"notes.txt", "not a model"});
  write_bytes(tmp / "fake.gguf", "not really gguf");
  expect_open_error(tmp / "fake.gguf", ErrorCode::kInvalidModel, {"fake.gguf", "GGUF"});
  fs::create_directory(tmp / "bin_only");
  write_bytes(tmp / "bin_only/config.json", "{}");
  write_bytes(tmp / "bin_only/pytorch_model.bin", "x");
  expect_open_error(tmp / "bin_only", ErrorCode::kUnsupported, {"bin_only", "safetensors"});
  expect_open_error("", ErrorCode::kNotFound, {});
}

TEST(ModelPaths, MissingConfigOrTokenizer) {
  {
    TempDir tmp;
    const std::string dir = tmp.copy_fixture("tiny_st");
    fs::remove(dir + "/config.json");
    expect_open_error(dir, ErrorCode::kInvalidModel, {"config.json"});
  }
  {
    TempDir tmp;
    const std::string dir = tmp.copy_fixture("tiny_st");
    fs::remove(dir + "/vocab.json");
    expect_open_error(dir, ErrorCode::kInvalidModel, {"tokenizer"});
  }
  {
    TempDir tmp;
    const std::string dir = tmp.copy_fixture("tiny_st");
    write_bytes(dir + "/config.json", "{ not json");
    expect_open_error(dir, ErrorCode::kInvalidModel, {"config.json", "JSON"});
  }
}

// ---- config.json -------------------------------------------------------------------------------------------

TEST(HfConfig, Gpt2) {
  const ModelConfig c = parse_hf_config(R"({"model_type": "gpt2", "vocab_size": 50257, "n_embd": 768, "n_layer": 12,
      "n_head": 12, "n_inner": null, "n_positions": 1024, "layer_norm_epsilon": 1e-5,
      "activation_function": "gelu_new", "bos_token_id": 50256, "eos_token_id": 50256})", "config.json");
  EXPECT_EQ(c.arch, Architecture::kGpt2);
  EXPECT_EQ(c.intermediate_size, 4 * 768);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.num_kv_heads, 12);
  EXPECT_EQ(c.max_positions, 1024);
  EXPECT_EQ(c.hidden_act, HiddenAct::kGeluTanh);
  EXPECT_EQ(c.rotary_dim, 0);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.eos_token_id, 50256);
}

TEST(HfConfig, GptNeoX) {
  const ModelConfig c = parse_hf_config(R"({"model_type": "gpt_neox", "vocab_size": 50304, "hidden_size": 512,
      "num_hidden_layers": 6, "num_attention_heads": 8, "intermediate_size": 2048, "max_position_embeddings": 2048,
      "rotary_pct": 0.25, "rotary_emb_base": 10000, "use_parallel_residual": true, "hidden_act": "gelu",
      "layer_norm_eps": 1e-5})", "config.json");
  EXPECT_EQ(c.arch, Architecture::kGptNeoX);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.rotary_dim, 16);
  EXPECT_TRUE(c.parallel_residual);
  EXPECT_EQ(c.hidden_act, HiddenAct::kGeluErf);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FLOAT_EQ(c.rope_theta, 10000.f);
}

TEST(HfConfig, Llama) {
  const ModelConfig c = parse_hf_config(R"({"model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
      "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536,
      "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000, "tie_word_embeddings": true,
      "hidden_act": "silu", "rope_scaling": null})", "config.json");
  EXPECT_EQ(c.arch, Architecture::kLlama);
  EXPECT_EQ(c.num_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.rotary_dim, 64);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.hidden_act, HiddenAct::kSilu);
  EXPECT_FLOAT_EQ(c.rope_theta, 100000.f);
  EXPECT_FLOAT_EQ(c.norm_eps, 1e-5f);
  const ModelConfig d = parse_hf_config(R"({"model_type": "llama", "vocab_size": 10, "hidden_size": 64,
      "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 128, "head_dim": 32})", "c.json");
  EXPECT_EQ(d.num_kv_heads, 4);
  EXPECT_EQ(d.head_dim, 32);
}

TEST(HfConfig, Refusals) {
  expect_error([] { parse_hf_config(R"({"model_type": "llama", "vocab_size": 10, "hidden_size": 64,
      "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 128,
      "rope_scaling": {"type": "linear", "factor": 2.0}})", "cfg/config.json"); },
               ErrorCode::kUnsupported, {"cfg/config.json", "rope_scaling"});
  expect_error([] { parse_hf_config(R"({"model_type": "mamba"})", "config.json"); }, ErrorCode::kUnsupported,
               {"config.json", "'mamba'"});
  expect_error([] { parse_hf_config(R"({"model_type": "gpt2", "n_embd": 8})", "config.json"); },
               ErrorCode::kInvalidModel, {"config.json", "missing"});
  expect_error([] { parse_hf_config(R"({"model_type": "gpt2", "vocab_size": 10, "n_embd": "big", "n_layer": 1,
      "n_head": 1, "n_positions": 8})", "config.json"); }, ErrorCode::kInvalidModel, {"config.json", "n_embd"});
  expect_error([] { parse_hf_config(R"({"model_type": "llama", "vocab_size": 10, "hidden_size": 64,
      "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 3, "intermediate_size": 128})",
      "config.json"); }, ErrorCode::kInvalidModel, {"config.json", "key/value heads"});
  expect_error([] { parse_hf_config("{}", "config.json"); }, ErrorCode::kInvalidModel, {"model_type"});
}

// The conformance fixtures other tests run: every one must open, with canonical names.
TEST(Safetensors, OpensConformanceFixtures) {
  const std::string root = std::string(QS_SOURCE_DIR) + "/tests/fixtures/models";
  if (!fs::is_directory(root)) GTEST_SKIP() << "no conformance fixtures";
  int opened = 0;
  for (const auto& entry : fs::directory_iterator(root)) {
    if (!entry.is_directory() || !fs::exists(entry.path() / "config.json")) continue;
    SCOPED_TRACE(entry.path().string());
    auto m = ModelFile::open(entry.path().string());
    ++opened;
    EXPECT_FALSE(m->tensors().empty());
    EXPECT_FALSE(m->tokenizer_spec().empty());
    const ModelConfig& c = m->config();
    if (c.arch == Architecture::kGpt2) {
      EXPECT_NE(m->find("transformer.h.0.attn.c_attn.weight"), nullptr);
      m->get("transformer.wte.weight", {c.vocab_size, c.hidden_size});
    } else if (c.arch == Architecture::kGptNeoX) {
      m->get("gpt_neox.embed_in.weight", {c.vocab_size, c.hidden_size});
    } else {   // the Llama family and Gemma 3 share Llama's names
      m->get("model.embed_tokens.weight", {c.vocab_size, c.hidden_size});
      m->get("model.layers.0.self_attn.k_proj.weight", {c.num_kv_heads * c.head_dim, c.hidden_size});
    }
    if (c.qk_norm) m->get("model.layers.0.self_attn.q_norm.weight", {c.head_dim});
  }
  EXPECT_GT(opened, 0);
}

}  // namespace
}  // namespace qs::loader_test
