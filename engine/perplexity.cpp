// Sliding-window perplexity (see perplexity.h).
#include "engine/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "kernels/error.h"

namespace qs {

PerplexityResult compute_perplexity(Model& model, const std::vector<int32_t>& ids, int64_t context, int64_t stride,
                                    PerplexityTrace* trace) {
  const ModelConfig& c = model.config();
  if (context <= 0 || context > c.max_positions) context = c.max_positions;
  if (stride <= 0 || stride > context) stride = context;
  QS_CHECK(ids.size() >= 2, ErrorCode::kInvalidArgument, "perplexity needs at least 2 tokens of text, got ",
           ids.size());
  const auto start = std::chrono::steady_clock::now();
  const int64_t V = c.vocab_size, bs = 16;
  KvCacheConfig kc{c.num_layers, (context + bs - 1) / bs, bs, c.num_kv_heads, c.head_dim};
  auto cache = model.backend().make_kv_cache(kc);
  std::vector<int32_t> table;
  for (int32_t b = 0; b < int32_t(kc.num_blocks); ++b) table.push_back(b);
  PerplexityResult r;
  double nll_sum = 0;
  std::vector<float> logits;
  const int64_t n = int64_t(ids.size());
  int64_t prev_end = 0;
  for (int64_t begin = 0; begin < n; begin += stride) {
    const int64_t end = std::min(begin + context, n);
    const int64_t first_scored = std::max(begin + 1, prev_end);   // positions predicted in this window
    BatchLayout batch;
    for (int64_t p = begin; p < end; ++p) {
      batch.token_ids.push_back(ids[size_t(p)]);
      batch.positions.push_back(int32_t(p - begin));
      batch.seq_of_token.push_back(0);
    }
    for (int64_t p = first_scored; p < end; ++p) batch.logit_rows.push_back(int32_t(p - 1 - begin));
    batch.block_tables.push_back(table);
    batch.seq_lens.push_back(int32_t(end - begin));
    if (!batch.logit_rows.empty()) {
      model.forward(batch, *cache, logits);
      for (int64_t p = first_scored; p < end; ++p) {
        float* row = logits.data() + (p - first_scored) * V;
        const float m = *std::max_element(row, row + V);
        double z = 0;
        for (int64_t v = 0; v < V; ++v) z += std::exp(double(row[v] - m));
        const double lse = double(m) + std::log(z);
        nll_sum += lse - double(row[ids[size_t(p)]]);
        ++r.predicted_tokens;
        if (trace) {
          const size_t i = trace->top1.size();
          trace->top1.push_back(int32_t(std::max_element(row, row + V) - row));
          if (const PerplexityTrace* ref = trace->reference) {
            QS_CHECK(i < ref->top1.size() && i < ref->logprobs.size(), ErrorCode::kInvalidArgument,
                     "the reference trace has fewer scored positions than this run");
            const std::vector<float>& rp = ref->logprobs[i];
            double kl = 0;
            for (int64_t v = 0; v < V; ++v) {
              const double lp = double(rp[size_t(v)]);
              kl += std::exp(lp) * (lp - (double(row[v]) - lse));
            }
            kl = std::max(kl, 0.0);
            trace->kl_sum += kl;
            trace->kl_max = std::max(trace->kl_max, kl);
            trace->top1_agree += trace->top1.back() == ref->top1[i] ? 1 : 0;
            ++trace->compared;
          }
          if (trace->keep_logprobs) {
            std::vector<float> lp(row, row + V);
            for (auto& x : lp) x = float(double(x) - lse);
            trace->logprobs.push_back(std::move(lp));
          }
        }
      }
    }
    ++r.windows;
    prev_end = end;
    if (end == n) break;
  }
  r.mean_nll = nll_sum / double(r.predicted_tokens);
  r.perplexity = std::exp(r.mean_nll);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace qs
