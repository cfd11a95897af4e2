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

namespace qs::cpu {
namespace {

// T = tokens, N = out features, K = in features.

std::vector<float> random_values(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<float> v(n);
  for (auto& e : v) e = u(rng);
  return v;
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

}  // namespace
}  // namespace qs::cpu
