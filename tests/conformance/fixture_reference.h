// Helpers the CPU and GPU conformance tests share: transformers' reference outputs for a fixture model,
// every position's logits of a model over several sequences in one batched pass, and the agreement measures.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/model.h"

namespace qs::conformance {

// The source tree the binary was built from, unless QS_SOURCE_DIR says where it is now: a test binary built on one
// machine and run on another (scripts/gpu_verify.sh's prebuilt bundle on the GPU machine) reads the fixtures there.
inline std::string source_dir() {
  const char* moved = std::getenv("QS_SOURCE_DIR");
  return moved && *moved ? moved : QS_SOURCE_DIR;
}
inline const std::string kFixtures = source_dir() + "/tests/fixtures/models/";

struct Reference {
  std::vector<std::vector<int32_t>> sequences;
  std::vector<std::vector<std::vector<float>>> logits;   // [seq][pos][V]
  struct Greedy {
    std::vector<int32_t> prompt, expected;
  };
  std::vector<Greedy> greedy;
};

inline Reference read_reference(const std::string& dir) {
  std::ifstream in(dir + "/reference.json");
  const auto j = nlohmann::json::parse(in);
  Reference r;
  r.sequences = j.at("sequences").get<std::vector<std::vector<int32_t>>>();
  r.logits = j.at("logits").get<std::vector<std::vector<std::vector<float>>>>();
  for (const auto& g : j.at("greedy")) {
    r.greedy.push_back({g.at("prompt_ids").get<std::vector<int32_t>>(), g.at("new_ids").get<std::vector<int32_t>>()});
  }
  return r;
}

// Runs several sequences through one forward pass (as continuous batching does) and returns every
// position's logits, [seq][pos][V]. `chunk` > 0 prefills each sequence in pieces of that many tokens.
inline std::vector<std::vector<std::vector<float>>> run_logits(Model& model, const std::vector<std::vector<int32_t>>& seqs,
                                                        int64_t chunk = 0) {
  const ModelConfig& c = model.config();
  const int64_t V = c.vocab_size, bs = 16;
  KvCacheConfig kc{c.num_layers, 64, bs, c.num_kv_heads, c.head_dim};
  auto cache = model.backend().make_kv_cache(kc);
  std::vector<std::vector<std::vector<float>>> out(seqs.size());
  std::vector<std::vector<int32_t>> tables(seqs.size());
  int32_t next_block = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (size_t b = 0; b < (seqs[s].size() + bs - 1) / bs; ++b) tables[s].push_back(next_block++);
  }
  size_t longest = 0;
  for (const auto& s : seqs) longest = std::max(longest, s.size());
  const size_t step = chunk > 0 ? size_t(chunk) : longest;
  std::vector<float> logits;
  for (size_t start = 0; start < longest; start += step) {
    BatchLayout batch;
    std::vector<std::pair<size_t, size_t>> rows;   // (seq, pos) of each logit row
    for (size_t s = 0; s < seqs.size(); ++s) {
      const size_t end = std::min(seqs[s].size(), start + step);
      if (start >= end) continue;
      const int32_t idx = int32_t(batch.block_tables.size());
      for (size_t p = start; p < end; ++p) {
        batch.token_ids.push_back(seqs[s][p]);
        batch.positions.push_back(int32_t(p));
        batch.seq_of_token.push_back(idx);
        batch.logit_rows.push_back(int32_t(batch.token_ids.size()) - 1);
        rows.emplace_back(s, p);
      }
      batch.block_tables.push_back(tables[s]);
      batch.seq_lens.push_back(int32_t(end));
    }
    model.forward(batch, *cache, logits);
    for (size_t r = 0; r < rows.size(); ++r) {
      auto& dst = out[rows[r].first];
      dst.resize(std::max(dst.size(), rows[r].second + 1));
      dst[rows[r].second].assign(logits.begin() + int64_t(r) * V, logits.begin() + int64_t(r + 1) * V);
    }
  }
  return out;
}

struct Agreement {
  double max_rel_error = 0;   // max |a - b| / max |b| over each position
  double top1 = 0;            // fraction of positions with the same argmax
  double mean_kl = 0;         // KL(reference || ours), nats, averaged over positions
};

inline Agreement compare(const std::vector<std::vector<std::vector<float>>>& ours,
                  const std::vector<std::vector<std::vector<float>>>& ref) {
  Agreement a;
  int64_t n = 0, same = 0;
  double kl_sum = 0;
  for (size_t s = 0; s < ref.size(); ++s) {
    for (size_t p = 0; p < ref[s].size(); ++p) {
      const auto& x = ours[s][p];
      const auto& y = ref[s][p];
      double max_diff = 0, max_ref = 0;
      for (size_t v = 0; v < y.size(); ++v) {
        max_diff = std::max(max_diff, double(std::fabs(x[v] - y[v])));
        max_ref = std::max(max_ref, double(std::fabs(y[v])));
      }
      a.max_rel_error = std::max(a.max_rel_error, max_diff / max_ref);
      same += std::max_element(x.begin(), x.end()) - x.begin() == std::max_element(y.begin(), y.end()) - y.begin();
      const double mx = *std::max_element(x.begin(), x.end()), my = *std::max_element(y.begin(), y.end());
      double zx = 0, zy = 0;
      for (size_t v = 0; v < y.size(); ++v) {
        zx += std::exp(x[v] - mx);
        zy += std::exp(y[v] - my);
      }
      double kl = 0;
      for (size_t v = 0; v < y.size(); ++v) {
        const double lp = y[v] - my - std::log(zy), lq = x[v] - mx - std::log(zx);
        kl += std::exp(lp) * (lp - lq);
      }
      kl_sum += kl;
      ++n;
    }
  }
  a.top1 = double(same) / double(n);
  a.mean_kl = kl_sum / double(n);
  return a;
}

// Greedy continuations of all the reference prompts submitted together (continuous batching), run to the end.
inline std::vector<std::vector<int32_t>> greedy_in_one_batch(Engine& engine,
                                                             const std::vector<Reference::Greedy>& greedy) {
  std::vector<std::vector<int32_t>> got(greedy.size());
  for (size_t i = 0; i < greedy.size(); ++i) {
    SamplingParams p;
    p.temperature = 0;
    p.max_new_tokens = int32_t(greedy[i].expected.size());
    engine.submit(greedy[i].prompt, p, [&got, i](const GenerationEvent& ev) {
      got[i].insert(got[i].end(), ev.token_ids.begin(), ev.token_ids.end());
    });
  }
  while (engine.has_work()) engine.step();
  return got;
}

// Bounds a precision is held to against transformers' fp32 logits.
struct Bounds {
  Precision precision;
  double min_top1;
  double max_kl;
  int64_t group_size = 0;   // int8-weight-only: inputs per weight scale (LoadOptions::group_size)
};

// The fixture models present (reference.json committed).
inline std::vector<std::string> fixture_models() {
  std::vector<std::string> names;
  for (const char* n : {"gpt2", "gpt_neox", "gpt_neox_seq", "llama", "llama_untied", "qwen2", "qwen3", "mistral",
                        "gemma3"}) {
    if (std::filesystem::exists(kFixtures + n + "/reference.json")) names.push_back(n);
  }
  return names;
}

}  // namespace qs::conformance
