// SmoothQuant's smoothing factors and the per-linear α search, and plain int8's clip search (see smoothing.h).
#include "engine/smoothing.h"

#include <algorithm>
#include <cmath>

namespace qs {

namespace {

// Symmetric absmax int8 of one row, as kernels/cpu/quantize.cpp rounds it (zero rows: scale 1, all zeros).
// Values are kept as int16 so that the dot products below vectorize into 32-bit integer sums.
float quantize_row(int16_t* q, const float* x, const float* divide_by, const float* multiply_by, int64_t K) {
  float amax = 0;
  for (int64_t k = 0; k < K; ++k) {
    float v = x[k];
    if (divide_by) v /= divide_by[k];
    if (multiply_by) v *= multiply_by[k];
    amax = std::max(amax, std::fabs(v));
  }
  const float scale = amax > 0 ? amax / 127.0f : 1.0f, inv = 1.0f / scale;
  for (int64_t k = 0; k < K; ++k) {
    float v = x[k];
    if (divide_by) v /= divide_by[k];
    if (multiply_by) v *= multiply_by[k];
    q[k] = int16_t(std::clamp(std::nearbyint(v * inv), -127.0f, 127.0f));
  }
  return scale;
}

int32_t dot(const int16_t* a, const int16_t* b, int64_t K) {
  int32_t sum = 0;
  for (int64_t k = 0; k < K; ++k) sum += int32_t(a[k]) * int32_t(b[k]);
  return sum;
}

std::vector<int64_t> spread_rows(int64_t N) {
  std::vector<int64_t> rows;
  const int64_t count = std::min(N, kSmoothingSampleRows);
  for (int64_t i = 0; i < count; ++i) rows.push_back(i * N / count);
  return rows;
}

}  // namespace

std::vector<float> smoothing_factors(const std::vector<float>& x_max, const std::vector<float>& w_max, double alpha) {
  std::vector<float> s(x_max.size(), 1.0f);
  for (size_t k = 0; k < s.size(); ++k) {
    const double x = x_max[k], w = w_max[k];
    if (x > 0 && w > 0) s[k] = float(std::clamp(std::pow(x, alpha) / std::pow(w, 1.0 - alpha), 1e-5, 1e5));
  }
  return s;
}

std::vector<float> weight_column_absmax(const float* w, int64_t N, int64_t K) {
  std::vector<float> m(size_t(K), 0.0f);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) m[size_t(k)] = std::max(m[size_t(k)], std::fabs(w[n * K + k]));
  }
  return m;
}

double w8a8_error(const float* x, int64_t T, const float* w, int64_t K, const std::vector<int64_t>& rows,
                  const float* s, const std::vector<double>& reference) {
  const int64_t R = int64_t(rows.size());
  std::vector<int16_t> qx(static_cast<size_t>(T * K)), qw(static_cast<size_t>(R * K));
  std::vector<float> sx(static_cast<size_t>(T)), sw(static_cast<size_t>(R));
  for (int64_t t = 0; t < T; ++t) sx[size_t(t)] = quantize_row(&qx[size_t(t * K)], x + t * K, s, nullptr, K);
  for (int64_t r = 0; r < R; ++r) {
    sw[size_t(r)] = quantize_row(&qw[size_t(r * K)], w + rows[size_t(r)] * K, nullptr, s, K);
  }
  double error = 0;
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t r = 0; r < R; ++r) {
      const double y = double(dot(&qx[size_t(t * K)], &qw[size_t(r * K)], K)) * sx[size_t(t)] * sw[size_t(r)];
      const double d = y - reference[size_t(t * R + r)];
      error += d * d;
    }
  }
  return error;
}

AlphaSearchResult search_smoothing_alpha(const float* x, int64_t T, const std::vector<float>& x_max, const float* w,
                                         int64_t N, int64_t K, const std::vector<double>& grid) {
  const std::vector<int64_t> rows = spread_rows(N);
  const int64_t R = int64_t(rows.size());
  std::vector<double> reference(size_t(T * R), 0.0);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t r = 0; r < R; ++r) {
      const float* wr = w + rows[size_t(r)] * K;
      double sum = 0;
      for (int64_t k = 0; k < K; ++k) sum += double(x[t * K + k]) * double(wr[k]);
      reference[size_t(t * R + r)] = sum;
    }
  }
  AlphaSearchResult best;
  best.alpha = -1;
  best.unsmoothed_error = best.error = w8a8_error(x, T, w, K, rows, nullptr, reference);
  best.factors.assign(size_t(K), 1.0f);
  const std::vector<float> w_max = weight_column_absmax(w, N, K);
  for (double alpha : grid) {
    std::vector<float> s = smoothing_factors(x_max, w_max, alpha);
    const double e = w8a8_error(x, T, w, K, rows, s.data(), reference);
    if (e < best.error) {
      best.alpha = alpha;
      best.error = e;
      best.factors = std::move(s);
    }
  }
  return best;
}

std::vector<double> default_alpha_grid() {
  std::vector<double> g;
  for (int i = 0; i <= 10; ++i) g.push_back(i / 10.0);
  return g;
}

int64_t clip_rows_for_int8(float* w, int64_t N, int64_t K) {
  int64_t clipped = 0;
  for (int64_t n = 0; n < N; ++n) {
    float* row = w + n * K;
    float amax = 0;
    for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(row[k]));
    if (amax == 0) continue;
    double best_error = -1;
    float best = amax;
    for (int i = 0; i <= 4; ++i) {
      const float limit = amax * (1.0f - 0.05f * float(i)), scale = limit / 127.0f;
      double error = 0;
      for (int64_t k = 0; k < K; ++k) {
        const float q = std::clamp(std::nearbyint(row[k] / scale), -127.0f, 127.0f);
        const double d = double(row[k]) - double(q * scale);
        error += d * d;
      }
      if (best_error < 0 || error < best_error) best_error = error, best = limit;
    }
    if (best == amax) continue;
    ++clipped;
    for (int64_t k = 0; k < K; ++k) row[k] = std::clamp(row[k], -best, best);
  }
  return clipped;
}

}  // namespace qs
