// GGUF: metadata and tensor parsing, llama.cpp -> Hugging Face names and layouts, corrupt files, the default model.
#include <gtest/gtest.h>

#include <cstring>

#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "loader_test_util.h"

namespace qs::loader_test {
namespace {

using nlohmann::json;

TEST(Gguf, ParsesMetadataOfEveryKind) {
  const GgufFile g = read_gguf(fixture("tiny_llama.gguf"));
  EXPECT_EQ(g.version, 3u);
  EXPECT_EQ(g.alignment, 32u);
  EXPECT_EQ(g.data_offset % 32, 0u);
  EXPECT_EQ(g.get_string("general.architecture", ""), "llama");
  EXPECT_EQ(g.get_int("llama.block_count", 0), 1);
  EXPECT_DOUBLE_EQ(g.get_float("llama.rope.freq_base", 0), 100000.0);
  EXPECT_DOUBLE_EQ(g.get_float("general.test_f64", 0), 0.5);
  EXPECT_EQ(g.get_int("general.test_i8", 0), -3);
  const GgufValue* tags = g.find("general.tags");
  ASSERT_NE(tags, nullptr);
  ASSERT_TRUE(tags->is_array());
  ASSERT_EQ(tags->arrays.size(), 2u);
  ASSERT_EQ(tags->array_size(), 2u);
  ASSERT_TRUE(tags->arrays[1].is_array());
  EXPECT_EQ(tags->arrays[1].strings.at(1), "strings");
  const GgufValue* types = g.find("tokenizer.ggml.token_type");
  ASSERT_NE(types, nullptr);
  EXPECT_EQ(types->ints.size(), 259u);
  EXPECT_EQ(types->ints[258], 3);
  EXPECT_EQ(g.tensors.size(), 11u);
  // GGUF stores dims innermost-first; the reader gives PyTorch order.
  for (const StoredTensor& t : g.tensors) {
    if (t.name == "token_embd.weight") {
      EXPECT_EQ(t.shape, (std::vector<int64_t>{259, 32}));
      EXPECT_EQ(t.dtype, DType::Q8_0);
    }
  }
  expect_error([&] { g.get_int("general.architecture", 0); }, ErrorCode::kInvalidModel,
               {"general.architecture", "integer"});
}

TEST(Gguf, OpensTinyLlamaWithHfNamesAndLayouts) {
  const json exp = expected()["tiny_llama.gguf"];
  auto m = ModelFile::open(fixture("tiny_llama.gguf"));
  EXPECT_EQ(m->format(), "gguf");
  const ModelConfig& c = m->config();
  const json& ec = exp["config"];
  EXPECT_EQ(c.arch, Architecture::kLlama);
  EXPECT_EQ(c.name, "tiny llama");
  EXPECT_EQ(c.hidden_size, ec["hidden"].get<int64_t>());
  EXPECT_EQ(c.num_heads, ec["heads"].get<int64_t>());
  EXPECT_EQ(c.num_kv_heads, ec["kv_heads"].get<int64_t>());
  EXPECT_EQ(c.head_dim, ec["head_dim"].get<int64_t>());
  EXPECT_EQ(c.rotary_dim, ec["head_dim"].get<int64_t>());
  EXPECT_EQ(c.intermediate_size, ec["ff"].get<int64_t>());
  EXPECT_EQ(c.vocab_size, ec["vocab"].get<int64_t>());
  EXPECT_EQ(c.num_layers, ec["layers"].get<int64_t>());
  EXPECT_EQ(c.max_positions, 128);
  EXPECT_FLOAT_EQ(c.rope_theta, ec["rope_theta"].get<float>());
  EXPECT_FLOAT_EQ(c.norm_eps, 1e-5f);
  EXPECT_EQ(c.hidden_act, HiddenAct::kSilu);
  EXPECT_TRUE(c.tie_word_embeddings);   // no output.weight
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.eos_token_id, ec["eos"].get<int32_t>());
  EXPECT_FALSE(c.chat_template.empty());
  EXPECT_EQ(m->find("blk.0.attn_q.weight"), nullptr);

  for (const auto& [name, t] : exp["tensors"].items()) {
    SCOPED_TRACE(name);
    const StoredTensor& st = m->get(name, shape_of(t["shape"]));
    EXPECT_EQ(dtype_name(st.dtype), t["dtype"].get<std::string>());
    const std::vector<float> v = m->get_f32(name, shape_of(t["shape"]));
    if (!t["values"].is_null()) {
      // Q and K: llama.cpp's row permutation undone; exactly the Hugging Face weights the tool started from.
      const std::vector<float> ref = t["values"].get<std::vector<float>>();
      ASSERT_EQ(v.size(), ref.size());
      size_t mismatches = 0;
      for (size_t i = 0; i < v.size(); ++i) mismatches += v[i] != ref[i];
      EXPECT_EQ(mismatches, 0u);
    }
    for (size_t i = 0; i < t["first"].size(); ++i) EXPECT_EQ(v[i], t["first"][i].get<float>()) << i;
    double sum = 0;
    for (float x : v) sum += x;
    EXPECT_DOUBLE_EQ(sum, t["sum"].get<double>());
  }
  // Before un-permuting, the stored first row of Q is a different row of the HF weight.
  const std::vector<float> q = m->get_f32("model.layers.0.self_attn.q_proj.weight", {32, 32});
  const std::vector<float> stored_row0 = exp["q_stored_first_rows"][0].get<std::vector<float>>();
  EXPECT_EQ(q[0 * 32 + 0], stored_row0[0]);   // row 0 stays row 0
  const std::vector<float> stored_row1 = exp["q_stored_first_rows"][1].get<std::vector<float>>();
  // Stored row 1 is HF row head_dim/2 = 4.
  for (int j = 0; j < 4; ++j) EXPECT_EQ(q[4 * 32 + j], stored_row1[size_t(j)]);

  const TokenizerSpec& s = m->tokenizer_spec();
  EXPECT_EQ(s.tokens.size(), 259u);
  ASSERT_EQ(s.merges.size(), 2u);
  EXPECT_EQ(s.merges[0].first, "\xC4\xA0");   // "Ġ"
  EXPECT_EQ(s.merges[0].second, "t");
  EXPECT_EQ(s.special_ids, std::vector<int32_t>{258});
  EXPECT_EQ(s.pretokenizer, "gpt2-digits");
  EXPECT_EQ(s.eos_id, 258);
  EXPECT_FALSE(s.add_bos);
}

TEST(Gguf, OpensTinyGpt2WithConv1DLayout) {
  const json exp = expected()["tiny_gpt2.gguf"]["c_attn"];
  auto m = ModelFile::open(fixture("tiny_gpt2.gguf"));
  const ModelConfig& c = m->config();
  EXPECT_EQ(c.arch, Architecture::kGpt2);
  EXPECT_EQ(c.hidden_size, 32);
  EXPECT_EQ(c.max_positions, 16);
  EXPECT_EQ(c.intermediate_size, 128);
  EXPECT_EQ(c.hidden_act, HiddenAct::kGeluTanh);
  EXPECT_EQ(m->tokenizer_spec().pretokenizer, "gpt2");
  m->get("transformer.wte.weight", {259, 32});
  m->get("transformer.wpe.weight", {16, 32});
  m->get("transformer.h.0.attn.c_attn.bias", {96});
  m->get("transformer.ln_f.weight", {32});
  const std::vector<float> w = m->get_f32(exp["name"].get<std::string>(), shape_of(exp["shape"]));
  EXPECT_EQ(w, exp["values"].get<std::vector<float>>());
}

// ---- corrupt GGUF ------------------------------------------------------------------------------------------

struct GgufCopy {
  TempDir tmp;
  std::string path;
  std::string bytes;
  GgufCopy() : path(tmp.copy_fixture("tiny_llama.gguf")), bytes(read_bytes(path)) {}
  void save() const { write_bytes(path, bytes); }
};

TEST(GgufCorrupt, BadMagicAndVersion) {
  GgufCopy f;
  f.bytes[0] = 'X';
  f.save();
  expect_open_error(f.path, ErrorCode::kInvalidModel, {"tiny_llama.gguf", "magic"});
  f.bytes[0] = 'G';
  poke<uint32_t>(f.bytes, 4, 1);
  f.save();
  expect_open_error(f.path, ErrorCode::kUnsupported, {"tiny_llama.gguf", "version 1"});
  poke<uint32_t>(f.bytes, 4, 0x03000000);   // what a big-endian file looks like
  f.save();
  expect_open_error(f.path, ErrorCode::kUnsupported, {"tiny_llama.gguf", "version"});
  poke<uint32_t>(f.bytes, 4, 2);            // v2 has the same layout and is accepted
  f.save();
  EXPECT_NO_THROW(ModelFile::open(f.path));
}

TEST(GgufCorrupt, Truncated) {
  GgufCopy f;
  const std::string full = f.bytes;
  // Cut inside the data: the last tensor ("output_norm.weight", written last) no longer fits.
  f.bytes = full.substr(0, full.size() - 16);
  f.save();
  expect_open_error(f.path, ErrorCode::kInvalidModel,
                    {"tiny_llama.gguf", "'output_norm.weight'", "not within the file", "corrupted or incomplete"});
  // Cut inside the metadata.
  f.bytes = full.substr(0, 200);
  f.save();
  expect_open_error(f.path, ErrorCode::kInvalidModel, {"tiny_llama.gguf", "corrupted or incomplete"});
  for (size_t n : {0, 3, 8, 20}) {
    f.bytes = full.substr(0, n);
    f.save();
    expect_open_error(f.path, ErrorCode::kInvalidModel, {"tiny_llama.gguf"});
  }
}

TEST(GgufCorrupt, TensorOffsetOutOfBounds) {
  GgufCopy f;
  const size_t at = tensor_info_at(f.bytes, "blk.0.attn_q.weight");
  poke<uint64_t>(f.bytes, at + 4 + 2 * 8 + 4, uint64_t(1) << 30);   // 2 dims
  f.save();
  expect_open_error(f.path, ErrorCode::kInvalidModel, {"tiny_llama.gguf", "'blk.0.attn_q.weight'", "not within the file"});
}

TEST(GgufCorrupt, TensorOffsetMisalignedOrOverlapping) {
  GgufCopy f;
  const size_t at = tensor_info_at(f.bytes, "blk.0.attn_q.weight");
  poke<uint64_t>(f.bytes, at + 4 + 2 * 8 + 4, 3);
  f.save();
  expect_open_error(f.path, ErrorCode::kInvalidModel, {"blk.0.attn_q.weight", "alignment"});
  poke<uint64_t>(f.bytes, at + 4 + 2 * 8 + 4, 0);   // on top of token_embd
  f.save();
  expect_open_error(f.path, ErrorCode::kInvalidModel, {"tiny_llama.gguf", "overlaps", "blk.0.attn_q.weight"});
}

TEST(GgufCorrupt, ShapeLies) {
  GgufCopy f;
  const size_t at = tensor_info_at(f.bytes, "output_norm.weight");
  poke<int64_t>(f.bytes, at + 4, 1 << 20);   // 1M floats at the end of the file
  f.save();
  expect_open_error(f.path, ErrorCode::kInvalidModel, {"'output_norm.weight'", "not within the file"});
  poke<int64_t>(f.bytes, at + 4, -5);
  f.save();
  expect_open_error(f.path, ErrorCode::kInvalidModel, {"'output_norm.weight'", "dimension"});
  poke<int64_t>(f.bytes, at + 4, 32);
  poke<uint32_t>(f.bytes, at, 9);            // n_dims
  f.save();
  expect_open_error(f.path, ErrorCode::kInvalidModel, {"'output_norm.weight'", "dimensions"});
}

TEST(GgufCorrupt, BlockRowNotMultipleOf32) {
  GgufCopy f;
  const size_t at = tensor_info_at(f.bytes, "blk.0.attn_q.weight");
  poke<int64_t>(f.bytes, at + 4, 16);       // ne0 16 with Q4_0
  poke<int64_t>(f.bytes, at + 4 + 8, 64);
  f.save();
  expect_open_error(f.path, ErrorCode::kInvalidModel, {"'blk.0.attn_q.weight'", "block size"});
}

TEST(GgufCorrupt, UnsupportedTensorType) {
  GgufCopy f;
  const size_t at = tensor_info_at(f.bytes, "blk.0.attn_v.weight");
  poke<uint32_t>(f.bytes, at + 4 + 2 * 8, 16);   // IQ2_XXS
  f.save();
  expect_open_error(f.path, ErrorCode::kUnsupported, {"tiny_llama.gguf", "'blk.0.attn_v.weight'", "IQ2_XXS"});
  poke<uint32_t>(f.bytes, at + 4 + 2 * 8, 1234);
  f.save();
  expect_open_error(f.path, ErrorCode::kUnsupported, {"'blk.0.attn_v.weight'", "1234"});
}

TEST(GgufCorrupt, StringLengthBeyondFile) {
  GgufCopy f;
  // general.name: key, then type (u32 = 8, string), then the value's u64 length.
  const size_t at = find_string(f.bytes, "general.name") + std::strlen("general.name") + 4;
  poke<uint64_t>(f.bytes, at, uint64_t(1) << 40);
  f.save();
  expect_open_error(f.path, ErrorCode::kInvalidModel, {"tiny_llama.gguf", "general.name", "beyond the end of the file"});
}

TEST(GgufCorrupt, AbsurdCounts) {
  GgufCopy f;
  const std::string full = f.bytes;
  poke<uint64_t>(f.bytes, 8, uint64_t(1) << 40);   // tensor count
  f.save();
  expect_open_error(f.path, ErrorCode::kInvalidModel, {"tiny_llama.gguf", "tensors", "more than the file can hold"});
  f.bytes = full;
  poke<uint64_t>(f.bytes, 16, ~uint64_t(0));       // metadata count
  f.save();
  expect_open_error(f.path, ErrorCode::kInvalidModel, {"tiny_llama.gguf", "metadata"});
  f.bytes = full;
  // The token list's element count: "tokenizer.ggml.tokens", type 9 (array), element type 8, then u64 count.
  const size_t at = find_string(f.bytes, "tokenizer.ggml.tokens") + std::strlen("tokenizer.ggml.tokens") + 8;
  poke<uint64_t>(f.bytes, at, uint64_t(1) << 50);
  f.save();
  expect_open_error(f.path, ErrorCode::kInvalidModel, {"tokenizer.ggml.tokens", "elements"});
  f.bytes = full;
  poke<uint32_t>(f.bytes, at - 4, 77);             // element type
  f.save();
  expect_open_error(f.path, ErrorCode::kInvalidModel, {"tokenizer.ggml.tokens", "value type 77"});
}

TEST(GgufCorrupt, MetadataOfTheWrongType) {
  GgufCopy f;
  const size_t at = find_string(f.bytes, "llama.block_count") + std::strlen("llama.block_count");
  poke<uint32_t>(f.bytes, at, 6);   // uint32 -> float32: same size, wrong type
  f.save();
  expect_open_error(f.path, ErrorCode::kInvalidModel, {"llama.block_count", "integer"});
  poke<uint32_t>(f.bytes, at, 4);
  poke<uint32_t>(f.bytes, at + 4, 0);
  f.save();
  expect_open_error(f.path, ErrorCode::kInvalidModel, {"llama.block_count"});
}

TEST(GgufCorrupt, UnsupportedArchitectureAndTokenizer) {
  GgufCopy f;
  const std::string full = f.bytes;
  // "llama" as general.architecture's value is 5 bytes; swap it for another 5-byte name.
  const size_t key = find_string(f.bytes, "general.architecture") + std::strlen("general.architecture") + 4 + 8;
  f.bytes.replace(key, 5, "mamba");
  f.save();
  expect_open_error(f.path, ErrorCode::kUnsupported, {"tiny_llama.gguf", "'mamba'"});
  f.bytes = full;
  const size_t tok = find_string(f.bytes, "tokenizer.ggml.model") + std::strlen("tokenizer.ggml.model") + 4;
  // "gpt2" (4 bytes) -> "llam" with length 4: not gpt2, so refused by name.
  f.bytes.replace(tok + 8, 4, "spm_");
  f.save();
  expect_open_error(f.path, ErrorCode::kUnsupported, {"tiny_llama.gguf", "'spm_'", "byte-level BPE"});
}

TEST(GgufCorrupt, UnknownPreTokenizerRefusedByName) {
  GgufCopy f;
  // tokenizer.ggml.pre = "smollm" -> "tekken" (Mistral Nemo's, same length): a regex not implemented.
  const size_t key = find_string(f.bytes, "tokenizer.ggml.pre") + std::strlen("tokenizer.ggml.pre") + 4;
  f.bytes.replace(key + 8, 6, "tekken");
  f.save();
  expect_open_error(f.path, ErrorCode::kUnsupported, {"tiny_llama.gguf", "'tekken'", "not implemented", "qwen2"});
}

TEST(GgufTokenizer, QwenPreTokenizerGivesQwenSplitAndNfc) {
  GgufCopy f;
  // tokenizer.ggml.pre = "smollm" (length 6) -> "qwen2" (length 5): the header is one byte shorter.
  const size_t key = find_string(f.bytes, "tokenizer.ggml.pre") + std::strlen("tokenizer.ggml.pre") + 4;
  poke<uint64_t>(f.bytes, key, 5);
  f.bytes.replace(key + 8, 6, "qwen2");
  // Keep the data section where it was: one byte more of alignment padding before it.
  const GgufFile g = read_gguf(fixture("tiny_llama.gguf"));
  f.bytes.insert(size_t(g.data_offset) - 1, 1, '\0');
  f.save();
  const TokenizerSpec spec = ModelFile::open(f.path)->tokenizer_spec();
  EXPECT_EQ(spec.pretokenizer, "qwen2");
  EXPECT_EQ(spec.normalizer, "nfc");
  EXPECT_FALSE(spec.ignore_merges);
}

// ---- the default model -------------------------------------------------------------------------------------

TEST(DefaultModel, SmolLM2Q4_1Opens) {
  const std::string path = std::string(QS_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(path)) GTEST_SKIP() << path << " is absent (bash scripts/setup.sh fetches it)";
  auto m = ModelFile::open(path);
  const ModelConfig& c = m->config();
  EXPECT_EQ(c.arch, Architecture::kLlama);
  EXPECT_EQ(c.num_layers, 30);
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.num_heads, 9);
  EXPECT_EQ(c.num_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_EQ(c.max_positions, 8192);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FLOAT_EQ(c.rope_theta, 100000.f);
  EXPECT_FALSE(c.chat_template.empty());
  EXPECT_EQ(c.eos_token_id, 2);
  m->get("model.embed_tokens.weight", {49152, 576});
  // Q and K rows un-permuted as whole Q4_1 blocks: still Q4_1 (int4-weight-only keeps them as they are).
  EXPECT_EQ(m->get("model.layers.29.self_attn.q_proj.weight", {576, 576}).dtype, DType::Q4_1);
  EXPECT_EQ(m->get("model.layers.29.self_attn.k_proj.weight", {192, 576}).dtype, DType::Q4_1);
  EXPECT_EQ(m->get("model.layers.29.self_attn.v_proj.weight", {192, 576}).dtype, DType::Q4_1);
  m->get("model.layers.0.mlp.down_proj.weight", {576, 1536});
  m->get("model.norm.weight", {576});
  EXPECT_EQ(m->find("lm_head.weight"), nullptr);

  const TokenizerSpec& s = m->tokenizer_spec();
  EXPECT_EQ(s.tokens.size(), 49152u);
  EXPECT_EQ(s.pretokenizer, "gpt2-digits");
  EXPECT_FALSE(s.add_bos);
  // The tokenizer built from GGUF metadata encodes as Hugging Face's tokenizer.json does.
  const std::string cases_path = std::string(QS_SOURCE_DIR) + "/tests/fixtures/tokenizer/smollm2/cases.json";
  if (!fs::exists(cases_path)) return;
  const json cases = json::parse(read_bytes(cases_path));
  Tokenizer tok(s);
  int checked = 0;
  for (const json& k : cases["encode"]) {
    if (!k.contains("text") || !k.contains("ids")) continue;
    const std::string text = k["text"].get<std::string>();
    EXPECT_EQ(tok.encode(text), k["ids"].get<std::vector<int32_t>>()) << text;
    if (++checked == 200) break;
  }
}

// The second real model (setup.sh --extra-models): Gemma 3 270M, Q4_K_M (Q4_K, Q6_K, Q5_0, Q8_0 and F32 tensors).
TEST(ExtraModel, Gemma3_270mQ4KMOpens) {
  const std::string path = std::string(QS_SOURCE_DIR) + "/models/gemma-3-270m-q4_k_m.gguf";
  if (!fs::exists(path)) GTEST_SKIP() << path << " is absent (bash scripts/setup.sh --extra-models fetches it)";
  auto m = ModelFile::open(path);
  const ModelConfig& c = m->config();
  EXPECT_EQ(c.arch, Architecture::kGemma3);
  EXPECT_EQ(c.num_layers, 18);
  EXPECT_EQ(c.hidden_size, 640);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 1);
  EXPECT_EQ(c.head_dim, 256);
  EXPECT_EQ(c.vocab_size, 262144);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.sliding_window, 512);
  for (int64_t l = 0; l < c.num_layers; ++l) EXPECT_EQ(c.layer_slides(l), (l + 1) % 6 != 0) << l;
  EXPECT_FLOAT_EQ(c.rope_theta, 1e6f);
  EXPECT_FLOAT_EQ(c.rope_local_theta, 1e4f);
  EXPECT_EQ(m->get("model.layers.0.self_attn.o_proj.weight", {640, 1024}).dtype, DType::Q4_K);
  EXPECT_EQ(m->get("model.layers.0.mlp.down_proj.weight", {640, 2048}).dtype, DType::Q6_K);
  EXPECT_EQ(m->get("model.layers.0.self_attn.q_proj.weight", {1024, 640}).dtype, DType::Q5_0);
  // llama.cpp stored Gemma's norms as 1 + w; the loader gives HF's w.
  const std::vector<float> norm = m->get_f32("model.layers.0.input_layernorm.weight", {640});
  GgufFile g = read_gguf(path);
  for (const StoredTensor& t : g.tensors) {
    if (t.name != "blk.0.attn_norm.weight") continue;
    std::vector<float> stored(640);
    convert_to_f32(stored.data(), t.data, t.dtype, 640);
    for (size_t i = 0; i < 640; ++i) EXPECT_EQ(norm[i], stored[i] - 1.0f) << i;
  }
  m->get("model.layers.5.post_feedforward_layernorm.weight", {640});
  const TokenizerSpec& s = m->tokenizer_spec();
  EXPECT_EQ(s.model, "spm");
  EXPECT_TRUE(s.add_bos);
  EXPECT_FALSE(s.add_space_prefix);
  EXPECT_EQ(s.tokens.at(size_t(c.eos_token_id)), "<end_of_turn>");
}

}  // namespace
}  // namespace qs::loader_test
