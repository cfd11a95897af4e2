// The packed-panel GEMM (kernels/cpu/gemv.h): packing round trips, and the AVX-512 and AVX2 kernels against the
// plain reference loop over the same packed weights, in fp32, fp16 and bf16, over token counts that cover one
// tile, partial tiles and several tiles, and K split into blocks.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/gemv.h"
#include "kernels/dtype.h"
#include "tests/unit/kernels/random_values.h"

namespace qs::cpu {
namespace {

// T = tokens, N = out features, K = in features.

// Uniform in [-scale, scale).
std::vector<float> random_values(size_t n, uint32_t seed, float scale = 1.0f) {
  return test::random_values(n, seed, -scale, scale);
}

size_t element_bytes(WeightType t) { return t == WeightType::kF32 ? 4 : 2; }

float rounded(float v, WeightType t) {
  switch (t) {
    case WeightType::kF16: return f16_to_f32(f32_to_f16(v));
    case WeightType::kBF16: return bf16_to_f32(f32_to_bf16(v));
    default: return v;
  }
}

struct Packed {
  std::vector<uint8_t> bytes;
  const void* data() const { return bytes.data(); }
};

Packed pack(const std::vector<float>& w, WeightType t, int64_t N, int64_t K) {
  Packed p;
  p.bytes.resize(packed_elements(N, K) * element_bytes(t));
  pack_weights(p.bytes.data(), w.data(), t, N, K);
  return p;
}

const WeightType kTypes[] = {WeightType::kF32, WeightType::kF16, WeightType::kBF16};

TEST(GemmPacked, UnpackRowGivesTheRoundedWeights) {
  const int64_t N = 45, K = 19;   // a partial last panel
  const std::vector<float> w = random_values(size_t(N * K), 1);
  for (WeightType t : kTypes) {
    const Packed p = pack(w, t, N, K);
    std::vector<float> row(static_cast<size_t>(K));
    for (int64_t n = 0; n < N; ++n) {
      unpack_row(row.data(), p.data(), t, n, N, K);
      for (int64_t k = 0; k < K; ++k) ASSERT_EQ(row[size_t(k)], rounded(w[size_t(n * K + k)], t)) << n << ", " << k;
    }
  }
}

TEST(GemmPacked, ReferenceIsTheDotProductOfRoundedWeights) {
  const int64_t T = 3, N = 33, K = 7;
  const std::vector<float> w = random_values(size_t(N * K), 2), x = random_values(size_t(T * K), 3);
  for (WeightType t : kTypes) {
    const Packed p = pack(w, t, N, K);
    std::vector<float> y(static_cast<size_t>(T * N));
    gemm_packed_reference(y.data(), x.data(), p.data(), t, T, N, K);
    for (int64_t i = 0; i < T; ++i) {
      for (int64_t n = 0; n < N; ++n) {
        double acc = 0;
        for (int64_t k = 0; k < K; ++k) acc += double(x[size_t(i * K + k)]) * rounded(w[size_t(n * K + k)], t);
        ASSERT_NEAR(y[size_t(i * N + n)], acc, 1e-5);
      }
    }
  }
}

using Kernel = void (*)(float*, const float*, const void*, WeightType, int64_t, int64_t, int64_t);

struct Shape {
  int64_t T, N, K;
};

// The fast kernels change only the order of the fp32 sums: |fast - reference| <= 2 K eps sum |x w| (the bound
// on two float summations of K terms), checked with the sum of magnitudes computed here.
void expect_matches_reference(Kernel kernel, const std::string& name) {
  const Shape shapes[] = {{1, 576, 576}, {1, 45, 70}, {2, 64, 33}, {5, 37, 70}, {12, 96, 64}, {13, 40, 17},
                          {24, 32, 1536}, {31, 70, 800}, {128, 64, 129}};
  for (const Shape& s : shapes) {
    const std::vector<float> w = random_values(size_t(s.N * s.K), uint32_t(s.T * 7 + s.N));
    const std::vector<float> x = random_values(size_t(s.T * s.K), uint32_t(s.K), 3.0f);
    for (WeightType t : kTypes) {
      SCOPED_TRACE(name + " T=" + std::to_string(s.T) + " N=" + std::to_string(s.N) + " K=" + std::to_string(s.K) +
                   " type " + std::to_string(int(t)));
      const Packed p = pack(w, t, s.N, s.K);
      std::vector<float> want(size_t(s.T * s.N)), got(size_t(s.T * s.N), NAN);
      gemm_packed_reference(want.data(), x.data(), p.data(), t, s.T, s.N, s.K);
      kernel(got.data(), x.data(), p.data(), t, s.T, s.N, s.K);
      int failures = 0;
      for (int64_t i = 0; i < s.T; ++i) {
        for (int64_t n = 0; n < s.N; ++n) {
          double magnitude = 0;
          for (int64_t k = 0; k < s.K; ++k) {
            magnitude += std::fabs(double(x[size_t(i * s.K + k)]) * rounded(w[size_t(n * s.K + k)], t));
          }
          const double tol = 2.0 * double(s.K) * 0x1p-24 * magnitude + 1e-6;
          const size_t j = size_t(i * s.N + n);
          if (!(std::fabs(double(got[j]) - want[j]) <= tol) && failures++ < 5) {
            ADD_FAILURE() << "out[" << i << ", " << n << "] = " << got[j] << ", reference " << want[j] << ", tolerance "
                          << tol;
          }
        }
      }
    }
  }
}

TEST(GemmPacked, Avx2MatchesReference) { expect_matches_reference(gemm_packed_avx2, "avx2"); }

TEST(GemmPacked, Avx512MatchesReference) {
  if (!gemv_avx512_available()) GTEST_SKIP() << "no AVX-512 on this CPU";
  expect_matches_reference(gemm_packed_avx512, "avx512");
}

TEST(GemmPacked, DispatchMatchesReference) { expect_matches_reference(gemm_packed, "dispatch"); }

// W8A8 over VNNI-packed weights: the integer dot products are exact, so the kernel and the reference differ
// only in the float epilogue's rounding (the same three products, in the same order): 1e-6 relative.
TEST(GemmW8a8, VnniPackingRoundTrips) {
  const int64_t N = 45, K = 23;   // partial panel, K not a multiple of 4
  std::vector<int8_t> q(static_cast<size_t>(N * K));
  std::mt19937 rng(9);
  for (auto& v : q) v = int8_t(int(rng() % 255) - 127);
  std::vector<int8_t> packed(vnni_packed_bytes(N, K));
  pack_weights_vnni(packed.data(), q.data(), N, K);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) ASSERT_EQ(vnni_weight(packed.data(), n, k, K), q[size_t(n * K + k)]);
  }
}

TEST(GemmW8a8, VnniMatchesReference) {
  if (!gemv_vnni_available()) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  const Shape shapes[] = {{1, 576, 576}, {1, 45, 70}, {1, 33, 23}, {3, 64, 64}, {8, 96, 1536}, {12, 40, 17},
                          {13, 70, 130}, {40, 37, 70}, {128, 64, 576}};
  std::mt19937 rng(10);
  for (const Shape& s : shapes) {
    SCOPED_TRACE("T=" + std::to_string(s.T) + " N=" + std::to_string(s.N) + " K=" + std::to_string(s.K));
    std::vector<int8_t> q(static_cast<size_t>(s.N * s.K));
    for (auto& v : q) v = int8_t(int(rng() % 255) - 127);
    std::vector<uint8_t> xq(static_cast<size_t>(s.T * s.K));
    for (auto& v : xq) v = uint8_t(rng() % 256);
    std::vector<float> x_scale = random_values(size_t(s.T), 11), w_scale = random_values(size_t(s.N), 12);
    std::vector<int32_t> row_sum(static_cast<size_t>(s.N), 0);
    for (int64_t n = 0; n < s.N; ++n) {
      for (int64_t k = 0; k < s.K; ++k) row_sum[size_t(n)] += q[size_t(n * s.K + k)];
    }
    std::vector<int8_t> packed(vnni_packed_bytes(s.N, s.K));
    pack_weights_vnni(packed.data(), q.data(), s.N, s.K);
    std::vector<float> want(size_t(s.T * s.N)), got(size_t(s.T * s.N), NAN);
    gemm_w8a8_reference(want.data(), xq.data(), x_scale.data(), packed.data(), w_scale.data(), row_sum.data(), s.T,
                        s.N, s.K);
    gemm_w8a8_vnni(got.data(), xq.data(), x_scale.data(), packed.data(), w_scale.data(), row_sum.data(), s.T, s.N,
                   s.K);
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_NEAR(got[i], want[i], 1e-6 * std::fabs(want[i]) + 1e-30) << "out[" << i / size_t(s.N) << ", "
                                                                       << i % size_t(s.N) << "]";
    }
  }
}

}  // namespace
}  // namespace qs::cpu
