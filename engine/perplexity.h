// Perplexity of a token sequence under a model, windowed either as Hugging Face's perplexity guide does (strided
// windows, each window's already-scored prefix used as context only) or as llama.cpp's perplexity tool does
// (non-overlapping chunks, the second half of each scored), so figures compare with either peer's.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/model.h"

namespace qs {

enum class PerplexityMethod {
  kSlidingWindow,  // Hugging Face's guide: windows of `context` every `stride` tokens, every token scored once
  kLlamaCpp,       // llama.cpp tools/perplexity: chunks of `context`, BOS first, the second half scored
};

// "sliding-window" / "llama.cpp"; parse throws kInvalidArgument with the accepted names on anything else.
const char* perplexity_method_name(PerplexityMethod method);
PerplexityMethod parse_perplexity_method(const std::string& name);

// One forward pass: tokens [start, start + length) at positions 0..length-1; the tokens [first_scored,
// start + length) are the ones predicted (each from the logits one position before it).
struct PerplexityWindow {
  int64_t start = 0;
  int64_t length = 0;
  int64_t first_scored = 0;
};

// The windows each method scores n_tokens in, as a pure function of the counts (tested on its own).
//   kSlidingWindow: a window every `stride` tokens (stride 0 or > context: context), the last one clipped to the
//     text and the last; each token predicted once, in the first window that has it and a token before it (with
//     stride < context: every token but the text's first).
//   kLlamaCpp: floor(n_tokens / context) chunks, the remainder dropped; in each, positions context/2 + 1 ..
//     context - 1 predicted (context - 1 - context/2 tokens). `stride` must be 0. Text shorter than one chunk
//     gives no window.
// context >= 2 (kInvalidArgument otherwise).
std::vector<PerplexityWindow> perplexity_windows(int64_t n_tokens, int64_t context, int64_t stride,
                                                 PerplexityMethod method);

struct PerplexityResult {
  double perplexity = 0;
  double mean_nll = 0;             // nats per predicted token
  // The standard error of mean_nll over the predicted tokens (their NLLs' sample deviation / sqrt(n)), and the
  // perplexity's by the delta method (perplexity x nll_stderr): what llama.cpp's tool prints after "+/-". It
  // says how far another text of this length could move the figure, treating tokens as independent.
  double nll_stderr = 0;
  double perplexity_stderr = 0;
  int64_t predicted_tokens = 0;
  int64_t windows = 0;
  double seconds = 0;
};

// Also fills, when given, each scored position's log-probability distribution argmax and the full
// log-softmax rows (for top-1 agreement / KL between precisions); `context` <= the model's positions.
struct PerplexityTrace {
  std::vector<int32_t> top1;                 // per scored position
  std::vector<double> nll;                   // per scored position, nats
  std::vector<std::vector<float>> logprobs;  // per scored position (V), only when keep_logprobs
  bool keep_logprobs = false;
  // The raw logits each scored position was predicted from, [scored positions, V] row after row, only when
  // keep_logits (`perplexity --save-logits`: another engine's logits on the same ids are compared with these).
  std::vector<float> logits;
  bool keep_logits = false;
  // When set (a trace of the same ids and windows with keep_logprobs, e.g. from fp32), each scored position is
  // compared with it on the fly: top-1 agreement and KL(reference || this model), in nats.
  const PerplexityTrace* reference = nullptr;
  int64_t compared = 0;
  int64_t top1_agree = 0;
  double kl_sum = 0;
  double kl_max = 0;
};

// A precision's change against the reference from a compared trace (its `nll` against reference->nll over the
// compared positions; zeros without a reference): the mean per-token NLL difference and its standard error, and the same as a relative perplexity change in percent
// (100 (e^mean - 1), its error by the delta method). Paired, so it is much tighter than the two perplexities'
// own errors: the text's hard tokens are hard for both.
struct NllDelta {
  double mean = 0;
  double stderr_mean = 0;
  double perplexity_percent = 0;
  double perplexity_percent_stderr = 0;
};
NllDelta paired_nll_delta(const PerplexityTrace& trace);

// How to window: the method, and for kLlamaCpp the token that replaces each chunk's first one (llama.cpp puts
// its BOS there when the vocabulary adds one; -1 keeps the text's token).
struct PerplexityOptions {
  PerplexityMethod method = PerplexityMethod::kSlidingWindow;
  int32_t chunk_first_token = -1;
  // The KV cache's storage while scoring. fp32 by default, so a precision's figure is its weights' (and
  // activations') rounding alone; fp16 is what the CPU backend serves with (`serve --kv-cache-dtype`).
  DType kv_cache_dtype = DType::F32;
};

PerplexityResult compute_perplexity(Model& model, const std::vector<int32_t>& ids, int64_t context, int64_t stride,
                                    PerplexityTrace* trace = nullptr, const PerplexityOptions& options = {});

}  // namespace qs
