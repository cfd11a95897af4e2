// The reference quantizers (kernels/cpu/quantize.h) against their formulas, written out here in double.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/cpu/quantize.h"

namespace qs::cpu {
namespace {

// N = rows (channels or tokens), K = cols.

std::vector<float> random_rows(int64_t N, int64_t K, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> w(static_cast<size_t>(N * K));
  for (int64_t n = 0; n < N; ++n) {
    const float magnitude = std::pow(10.0f, float(n % 5) - 2.0f);   // rows from 1e-2 to 1e2
    for (int64_t k = 0; k < K; ++k) w[size_t(n * K + k)] = magnitude * u(rng);
  }
  return w;
}

// Checks symmetric absmax int8 rows against scale = absmax / 127, q = nearbyint(x / scale) (ties to even),
// clamped to [-127, 127]. The kernel multiplies by 1/scale; where x / scale lies within float rounding of a
// .5 tie, either neighbour is accepted.
void expect_symmetric_int8(const std::vector<int8_t>& q, const std::vector<float>& scales, const std::vector<float>& x,
                           int64_t N, int64_t K) {
  for (int64_t n = 0; n < N; ++n) {
    double amax = 0;
    for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(double(x[size_t(n * K + k)])));
    if (amax == 0) {
      EXPECT_TRUE(std::isfinite(scales[size_t(n)]) && scales[size_t(n)] > 0) << "zero row " << n;
      for (int64_t k = 0; k < K; ++k) EXPECT_EQ(q[size_t(n * K + k)], 0) << "zero row " << n;
      continue;
    }
    EXPECT_NEAR(scales[size_t(n)], amax / 127.0, amax / 127.0 * 1e-6) << "row " << n;
    const double s = scales[size_t(n)];
    int at_max = 0;
    for (int64_t k = 0; k < K; ++k) {
      const double r = double(x[size_t(n * K + k)]) / s;
      const double expected = std::clamp(std::nearbyint(r), -127.0, 127.0);
      const int got = q[size_t(n * K + k)];
      ASSERT_GE(got, -127);
      ASSERT_LE(got, 127);
      const bool near_tie = std::fabs(std::fabs(r - std::floor(r)) - 0.5) < 1e-4;
      if (near_tie) {
        EXPECT_LE(std::fabs(got - expected), 1.0) << "row " << n << " col " << k;
      } else {
        EXPECT_EQ(got, int(expected)) << "row " << n << " col " << k << " x/scale " << r;
      }
      at_max += std::abs(got) == 127;
    }
    EXPECT_GE(at_max, 1) << "the absmax element of row " << n << " must map to +-127";
  }
}

TEST(QuantizePerChannelInt8, MatchesFormula) {
  const int64_t N = 11, K = 70;
  std::vector<float> w = random_rows(N, K, 1);
  std::fill(w.begin() + 3 * K, w.begin() + 4 * K, 0.0f);    // a zero row
  w[size_t(5 * K + 17)] = -50.0f;                            // a row whose absmax is negative
  std::vector<int8_t> q(static_cast<size_t>(N * K));
  std::vector<float> scales(static_cast<size_t>(N));
  quantize_per_channel_int8(q.data(), scales.data(), w.data(), N, K);
  expect_symmetric_int8(q, scales, w, N, K);
  EXPECT_EQ(q[size_t(5 * K + 17)], -127);
}

TEST(QuantizePerChannelInt8, RoundsHalfToEven) {
  // absmax 127 gives scale 1 (exact), so these are exact ties.
  const std::vector<float> w = {127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 126.5f, -125.5f, 3.49f};
  const std::vector<int8_t> expected = {127, 0, 2, 2, 0, -2, -2, 126, -126, 3};
  std::vector<int8_t> q(w.size());
  float scale = 0;
  quantize_per_channel_int8(q.data(), &scale, w.data(), 1, int64_t(w.size()));
  EXPECT_EQ(scale, 1.0f);
  EXPECT_EQ(q, expected);
  // absmax 254: scale 2, still exact; 1 -> 0.5 -> 0, 3 -> 1.5 -> 2, 5 -> 2.5 -> 2.
  const std::vector<float> w2 = {254.0f, 1.0f, 3.0f, 5.0f, -7.0f};
  const std::vector<int8_t> expected2 = {127, 0, 2, 2, -4};
  std::vector<int8_t> q2(w2.size());
  quantize_per_channel_int8(q2.data(), &scale, w2.data(), 1, int64_t(w2.size()));
  EXPECT_EQ(scale, 2.0f);
  EXPECT_EQ(q2, expected2);
}

TEST(QuantizePerChannelInt8, ZeroRowDequantizesToZero) {
  const std::vector<float> w(33, 0.0f);
  std::vector<int8_t> q(w.size(), 42);
  float scale = NAN;
  quantize_per_channel_int8(q.data(), &scale, w.data(), 1, int64_t(w.size()));
  EXPECT_TRUE(std::isfinite(scale));
  for (int8_t v : q) EXPECT_EQ(float(v) * scale, 0.0f);
}

TEST(QuantizePerTokenInt8, MatchesFormula) {
  for (int64_t T : {1, 3, 4, 5, 17}) {   // the kernel goes parallel above 4 rows
    const int64_t K = 70;
    std::vector<float> x = random_rows(T, K, uint32_t(100 + T));
    if (T > 2) std::fill(x.begin() + K, x.begin() + 2 * K, 0.0f);
    std::vector<int8_t> q(static_cast<size_t>(T * K));
    std::vector<float> scales(static_cast<size_t>(T));
    quantize_per_token_int8(q.data(), scales.data(), x.data(), T, K);
    SCOPED_TRACE("T=" + std::to_string(T));
    expect_symmetric_int8(q, scales, x, T, K);
  }
}

TEST(QuantizePerTokenInt8, SameAsPerChannelRowByRow) {
  const int64_t T = 6, K = 45;
  const std::vector<float> x = random_rows(T, K, 7);
  std::vector<int8_t> qa(static_cast<size_t>(T * K)), qb(static_cast<size_t>(T * K));
  std::vector<float> sa(static_cast<size_t>(T)), sb(static_cast<size_t>(T));
  quantize_per_token_int8(qa.data(), sa.data(), x.data(), T, K);
  quantize_per_channel_int8(qb.data(), sb.data(), x.data(), T, K);
  EXPECT_EQ(qa, qb);
  EXPECT_EQ(sa, sb);
}

// Per-tensor uint8: the range [min(0, min w), max(0, max w)] over 255 steps, zero point round(-lo / scale);
// every element dequantizes to within scale / 2 and 0 is exact.
void expect_per_tensor_uint8(const std::vector<float>& w) {
  const int64_t n = int64_t(w.size());
  std::vector<uint8_t> q(w.size());
  float scale = 0;
  int32_t zp = -1;
  quantize_per_tensor_uint8(q.data(), &scale, &zp, w.data(), n);
  double lo = 0, hi = 0;
  for (float v : w) {
    lo = std::min(lo, double(v));
    hi = std::max(hi, double(v));
  }
  if (hi == lo) {
    EXPECT_TRUE(std::isfinite(scale) && scale > 0);
  } else {
    EXPECT_NEAR(scale, (hi - lo) / 255.0, (hi - lo) / 255.0 * 1e-6);
    EXPECT_EQ(zp, int32_t(std::nearbyint(-lo / double(scale))));
  }
  ASSERT_GE(zp, 0);
  ASSERT_LE(zp, 255);
  const double bound = double(scale) / 2 * (1 + 1e-5) + 1e-7;
  for (int64_t i = 0; i < n; ++i) {
    const double deq = double(scale) * (int32_t(q[size_t(i)]) - zp);
    ASSERT_LE(std::fabs(deq - double(w[size_t(i)])), bound) << "element " << i << " = " << w[size_t(i)];
    if (w[size_t(i)] == 0.0f) {
      EXPECT_EQ(int32_t(q[size_t(i)]), zp) << "0 must be exact";
    }
  }
}

TEST(QuantizePerTensorUint8, MixedSigns) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-0.3f, 2.0f);
  std::vector<float> w(1001);
  for (auto& v : w) v = u(rng);
  w[10] = 0.0f;
  expect_per_tensor_uint8(w);
}

TEST(QuantizePerTensorUint8, AllPositiveRangeStillIncludesZero) {
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> u(0.5f, 2.0f);
  std::vector<float> w(300);
  for (auto& v : w) v = u(rng);
  expect_per_tensor_uint8(w);
  std::vector<uint8_t> q(w.size());
  float scale = 0;
  int32_t zp = -1;
  quantize_per_tensor_uint8(q.data(), &scale, &zp, w.data(), int64_t(w.size()));
  EXPECT_EQ(zp, 0);
}

TEST(QuantizePerTensorUint8, AllNegative) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-3.0f, -1.0f);
  std::vector<float> w(300);
  for (auto& v : w) v = u(rng);
  expect_per_tensor_uint8(w);
  std::vector<uint8_t> q(w.size());
  float scale = 0;
  int32_t zp = -1;
  quantize_per_tensor_uint8(q.data(), &scale, &zp, w.data(), int64_t(w.size()));
  EXPECT_EQ(zp, 255);
}

TEST(QuantizePerTensorUint8, HalfStepZeroPoints) {
  // -lo / scale = 10.5 and 9.5 exactly: the zero point rounds to even, and the far end must not overflow.
  for (double zp_exact : {10.5, 9.5, 0.5, 254.5}) {
    const double scale = 0.25;   // exact in float
    const double lo = -zp_exact * scale, hi = lo + 255 * scale;
    std::vector<float> w = {float(lo), float(hi), 0.0f, float(lo / 2), float(hi / 3)};
    SCOPED_TRACE("zero point " + std::to_string(zp_exact));
    expect_per_tensor_uint8(w);
  }
}

TEST(QuantizePerTensorUint8, AllZero) { expect_per_tensor_uint8(std::vector<float>(17, 0.0f)); }

TEST(QuantizePerTokenInt8, ShiftedIsInt8Plus128WithTheSameScales) {
  const int64_t T = 7, K = 133;
  std::vector<float> x = random_rows(T, K, 17);
  // Row 0 scales by exactly 1 (absmax 127): its halves are ties, which both round to even.
  x[0] = 127.0f;
  for (int64_t k = 1; k < 40; ++k) x[size_t(k)] = float(k - 20) + 0.5f;
  std::vector<int8_t> q(static_cast<size_t>(T * K));
  std::vector<uint8_t> u(static_cast<size_t>(T * K));
  std::vector<float> s(static_cast<size_t>(T)), su(static_cast<size_t>(T));
  quantize_per_token_int8(q.data(), s.data(), x.data(), T, K);
  quantize_per_token_int8_shifted(u.data(), su.data(), x.data(), T, K);
  EXPECT_EQ(s, su);
  for (size_t i = 0; i < q.size(); ++i) ASSERT_EQ(int(u[i]), int(q[i]) + 128) << i;
}

}  // namespace
}  // namespace qs::cpu
