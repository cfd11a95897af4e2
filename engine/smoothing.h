// SmoothQuant for int8-smooth: the smoothing factors and the per-linear search of their exponent α.
#pragma once
#include <cstdint>
#include <vector>

namespace qs {

// Calibration keeps at most this many of the tokens entering each smoothed linear (evenly spaced over the
// calibration text) for the α search: 64 x K floats per linear bounds the memory (9 MB for the 135M model).
inline constexpr int64_t kSmoothingSampleTokens = 64;
// The α search scores the W8A8 error on at most this many of a linear's output rows (evenly spaced): the
// per-row weight scales make each row's error independent of the others, so a spread sample estimates the sum.
inline constexpr int64_t kSmoothingSampleRows = 256;

// s_j = max|X_j|^alpha / max|W_j|^(1-alpha) (clamped to [1e-5, 1e5]; 1 where a channel is all zero).
std::vector<float> smoothing_factors(const std::vector<float>& x_max, const std::vector<float>& w_max, double alpha);

// Per input channel, max |W[n][k]| over the rows (W is N x K, row-major).
std::vector<float> weight_column_absmax(const float* w, int64_t N, int64_t K);

// Squared Frobenius error || X W^T - Q(X / s) Q(W s)^T ||^2 of W8A8 as the CPU and CUDA backends compute it
// (activations int8 per token, weights int8 per output row, both symmetric absmax) on the rows `rows` of W.
// X is T x K, W is N x K, s has K entries (nullptr: no smoothing). `reference` is X W^T on those rows (T x rows).
double w8a8_error(const float* x, int64_t T, const float* w, int64_t K, const std::vector<int64_t>& rows,
                  const float* s, const std::vector<double>& reference);

struct AlphaSearchResult {
  double alpha = 0.5;             // the error-minimising exponent; negative: no smoothing (s = 1) won
  double error = 0;               // its squared error on the sample
  double unsmoothed_error = 0;    // the same error with s = 1, for comparison
  std::vector<float> factors;     // s for the winner (all ones when no smoothing won)
};

// Tries alpha in `grid` (and no smoothing) on the recorded activations `x` (T x K) and the weight W (N x K) and
// returns the one whose W8A8 output error is smallest (ties: the earlier candidate, no smoothing first).
AlphaSearchResult search_smoothing_alpha(const float* x, int64_t T, const std::vector<float>& x_max, const float* w,
                                         int64_t N, int64_t K, const std::vector<double>& grid);

// {0, 0.1, ..., 1}.
std::vector<double> default_alpha_grid();

// Plain int8's opt-in clip search ($QUANTSERVE_INT8_CLIP=search): per row of W (N x K), the clip c in
// {1, 0.95, ..., 0.8} of the row's absmax whose int8 rounding (scale c absmax / 127, as the backends round) has
// the least squared weight error (ties: the larger c); the row is clamped to +-c absmax in place, so the
// backend's own absmax scale becomes the clipped one. Weight MSE only: plain int8 records no activations.
// Returns how many rows were clipped (c < 1).
int64_t clip_rows_for_int8(float* w, int64_t N, int64_t K);

}  // namespace qs
