// Perplexity of a token sequence, windowed as Hugging Face or llama.cpp do (see perplexity.h).
#include "engine/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "engine/kv_cache.h"
#include "kernels/error.h"

namespace qs {

const char* perplexity_method_name(PerplexityMethod method) {
  return method == PerplexityMethod::kLlamaCpp ? "llama.cpp" : "sliding-window";
}

PerplexityMethod parse_perplexity_method(const std::string& name) {
  if (name == "sliding-window") return PerplexityMethod::kSlidingWindow;
  if (name == "llama.cpp") return PerplexityMethod::kLlamaCpp;
  QS_FAIL(ErrorCode::kInvalidArgument, "unknown perplexity method '", name,
          "' (one of: sliding-window, llama.cpp)");
}

std::vector<PerplexityWindow> perplexity_windows(int64_t n_tokens, int64_t context, int64_t stride,
                                                 PerplexityMethod method) {
  QS_CHECK(context >= 2, ErrorCode::kInvalidArgument, "the perplexity context must be at least 2 tokens, got ",
           context);
  QS_CHECK(n_tokens >= 0, ErrorCode::kInvalidArgument, "negative token count ", n_tokens);
  std::vector<PerplexityWindow> windows;
  if (method == PerplexityMethod::kLlamaCpp) {
    QS_CHECK(stride == 0, ErrorCode::kInvalidArgument,
             "the llama.cpp method scores non-overlapping chunks: it takes no stride (got ", stride, ")");
    // llama.cpp tools/perplexity/perplexity.cpp, perplexity() (the default, --ppl-stride 0): n_chunk = tokens /
    // n_ctx, chunk i is tokens [i*n_ctx, (i+1)*n_ctx) with its first token replaced by BOS when the vocabulary
    // adds one, logits kept from `first = n_ctx/2`, and process_logits(..., tokens + start + first,
    // n_ctx - 1 - first) scores the token after each of those positions but the last: chunk positions
    // first+1 .. n_ctx-1. The remainder after the last full chunk is not scored. (The tool itself also refuses a
    // text under 2*n_ctx tokens; a shorter one with a whole chunk is scored here.)
    const int64_t first = context / 2;
    for (int64_t start = 0; start + context <= n_tokens; start += context)
      windows.push_back({start, context, start + first + 1});
    return windows;
  }
  if (stride <= 0 || stride > context) stride = context;
  int64_t prev_end = 0;
  for (int64_t begin = 0; begin < n_tokens; begin += stride) {
    const int64_t end = std::min(begin + context, n_tokens);
    // The prefix already scored by the previous window is context only here.
    windows.push_back({begin, end - begin, std::max(begin + 1, prev_end)});
    prev_end = end;
    if (end == n_tokens) break;
  }
  return windows;
}

namespace {

// The standard error of the mean of n values from their sum and sum of squares (sample variance, n - 1); 0 for
// fewer than 2 values. In double: n is at most a few hundred thousand tokens of NLLs of a few nats.
double standard_error(double sum, double sq_sum, int64_t n) {
  if (n < 2) return 0;
  const double mean = sum / double(n);
  const double variance = std::max(0.0, (sq_sum - double(n) * mean * mean) / double(n - 1));
  return std::sqrt(variance / double(n));
}

}  // namespace

NllDelta paired_nll_delta(const PerplexityTrace& trace) {
  NllDelta d;
  if (trace.compared == 0 || !trace.reference) return d;
  double sum = 0, sq_sum = 0;
  for (int64_t i = 0; i < trace.compared; ++i) {
    const double delta = trace.nll[size_t(i)] - trace.reference->nll[size_t(i)];
    sum += delta;
    sq_sum += delta * delta;
  }
  d.mean = sum / double(trace.compared);
  d.stderr_mean = standard_error(sum, sq_sum, trace.compared);
  d.perplexity_percent = 100.0 * std::expm1(d.mean);
  d.perplexity_percent_stderr = 100.0 * std::exp(d.mean) * d.stderr_mean;
  return d;
}

PerplexityResult compute_perplexity(Model& model, const std::vector<int32_t>& ids, int64_t context, int64_t stride,
                                    PerplexityTrace* trace, const PerplexityOptions& options) {
  const ModelConfig& c = model.config();
  if (context <= 0 || context > c.max_positions) context = c.max_positions;
  QS_CHECK(ids.size() >= 2, ErrorCode::kInvalidArgument, "perplexity needs at least 2 tokens of text, got ",
           ids.size());
  const std::vector<PerplexityWindow> windows = perplexity_windows(int64_t(ids.size()), context, stride,
                                                                   options.method);
  int64_t to_predict = 0;
  for (const PerplexityWindow& w : windows) to_predict += w.start + w.length - w.first_scored;
  QS_CHECK(to_predict > 0, ErrorCode::kInvalidArgument, "no token to score: ", ids.size(), " tokens in ",
           perplexity_method_name(options.method), " windows of ", context,
           options.method == PerplexityMethod::kLlamaCpp
               ? " (llama.cpp's method scores only whole chunks, each from position context/2 + 1 on)"
               : "");
  const auto start = std::chrono::steady_clock::now();
  const int64_t V = c.vocab_size, bs = 16;
  QS_CHECK(model.backend().supports_kv_cache_dtype(options.kv_cache_dtype), ErrorCode::kInvalidArgument, "the ",
           model.backend().name(), " backend cannot store the KV cache in ", kv_cache_dtype_name(options.kv_cache_dtype));
  KvCacheConfig kc{c.num_layers, (context + bs - 1) / bs, bs, c.num_kv_heads, c.head_dim, options.kv_cache_dtype};
  auto cache = model.backend().make_kv_cache(kc);
  std::vector<int32_t> table;
  for (int32_t b = 0; b < int32_t(kc.num_blocks); ++b) table.push_back(b);
  PerplexityResult r;
  double nll_sum = 0, nll_sq_sum = 0;
  std::vector<float> logits;
  for (const PerplexityWindow& w : windows) {
    const int64_t begin = w.start, end = w.start + w.length, first_scored = w.first_scored;
    BatchLayout batch;
    for (int64_t p = begin; p < end; ++p) {
      batch.token_ids.push_back(ids[size_t(p)]);
      batch.positions.push_back(int32_t(p - begin));
      batch.seq_of_token.push_back(0);
    }
    // Only the context changes: the chunk's first token is never a scored one.
    if (options.method == PerplexityMethod::kLlamaCpp && options.chunk_first_token >= 0)
      batch.token_ids[0] = options.chunk_first_token;
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
        const double nll = lse - double(row[ids[size_t(p)]]);
        nll_sum += nll;
        nll_sq_sum += nll * nll;
        ++r.predicted_tokens;
        if (trace) {
          const size_t i = trace->top1.size();
          trace->top1.push_back(int32_t(std::max_element(row, row + V) - row));
          trace->nll.push_back(nll);
          if (const PerplexityTrace* ref = trace->reference) {
            QS_CHECK(i < ref->top1.size() && i < ref->logprobs.size() && i < ref->nll.size(),
                     ErrorCode::kInvalidArgument, "the reference trace has fewer scored positions than this run");
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
          if (trace->keep_logits) trace->logits.insert(trace->logits.end(), row, row + V);
          if (trace->keep_logprobs) {
            std::vector<float> lp(row, row + V);
            for (auto& x : lp) x = float(double(x) - lse);
            trace->logprobs.push_back(std::move(lp));
          }
        }
      }
    }
    ++r.windows;
  }
  r.mean_nll = nll_sum / double(r.predicted_tokens);
  r.perplexity = std::exp(r.mean_nll);
  r.nll_stderr = standard_error(nll_sum, nll_sq_sum, r.predicted_tokens);
  r.perplexity_stderr = r.perplexity * r.nll_stderr;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace qs
