// Sliding-window perplexity, computed exactly as Hugging Face's perplexity guide does (strided windows, each
// window's already-scored prefix used as context only).
#pragma once
#include <cstdint>
#include <vector>

#include "engine/model.h"

namespace qs {

struct PerplexityResult {
  double perplexity = 0;
  double mean_nll = 0;             // nats per predicted token
  int64_t predicted_tokens = 0;
  int64_t windows = 0;
  double seconds = 0;
};

// Also fills, when given, each scored position's log-probability distribution argmax and the full
// log-softmax rows (for top-1 agreement / KL between precisions); `context` <= the model's positions.
struct PerplexityTrace {
  std::vector<int32_t> top1;                 // per scored position
  std::vector<std::vector<float>> logprobs;  // per scored position (V), only when keep_logprobs
  bool keep_logprobs = false;
  // When set (a trace of the same ids and windows with keep_logprobs, e.g. from fp32), each scored position is
  // compared with it on the fly: top-1 agreement and KL(reference || this model), in nats.
  const PerplexityTrace* reference = nullptr;
  int64_t compared = 0;
  int64_t top1_agree = 0;
  double kl_sum = 0;
  double kl_max = 0;
};

PerplexityResult compute_perplexity(Model& model, const std::vector<int32_t>& ids, int64_t context, int64_t stride,
                                    PerplexityTrace* trace = nullptr);

}  // namespace qs
