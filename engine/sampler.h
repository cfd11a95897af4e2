// Token sampling from logits: repetition penalty, temperature, top-k, top-p, greedy, log-probabilities.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

#include "engine/engine.h"

namespace qs {

// V = vocab.
struct SampleResult {
  int32_t token = 0;
  float logprob = 0;                       // of the chosen token under the penalised model distribution, when
                                           // params.logprobs > 0 (else 0: it costs a pass over the vocabulary)
  std::vector<TokenLogprob> top;           // top-N alternatives when asked
};

// Checks sampling values a caller sent; throws kInvalidArgument naming the bad field.
void validate_sampling(const SamplingParams& params);

// OpenAI's presence and frequency penalties over `generated` (the ids sampled so far), applied to logits (V) in
// place before sample_token; a no-op when both are 0.
void apply_presence_frequency_penalties(float* logits, int64_t V, const SamplingParams& params,
                                        const int32_t* generated, size_t n_generated);

// Constrained decoding's mask: logits (V) of tokens whose bit in `allowed` (bit t = word t / 64, bit t % 64) is
// clear become -inf, as do tokens past the mask's end. Applied before sample_token, so the penalty, temperature,
// top-k and top-p all see only the allowed tokens.
void mask_logits(float* logits, int64_t V, const std::vector<uint64_t>& allowed);

// Samples one token from logits (V), modified in place. `history` holds the ids the repetition penalty applies
// to (prompt and generated so far). Temperature 0 is greedy (argmax, lowest id on ties).
SampleResult sample_token(float* logits, int64_t V, const SamplingParams& params, const std::vector<int32_t>& history,
                          std::mt19937_64& rng);

}  // namespace qs
