// The CPU backend's make_linear + linear in every precision it supports, against references computed here in
// double: tightly against the dequantized weights (what the kernel is meant to compute), loosely against the fp32
// original (the error the quantization is allowed to add, bounded element by element).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/quantize.h"
#include "kernels/dtype.h"

namespace qs {
namespace {

// T = tokens, N = out features, K = in features.

Backend& cpu() {
  static std::unique_ptr<Backend> backend = make_cpu_backend();
  return *backend;
}

Tensor host_tensor(std::vector<float>& v, int64_t rows, int64_t cols) {
  return Tensor{v.data(), rows, cols, DType::F32};
}

double activation_ref(double x, Activation act) {
  switch (act) {
    case Activation::kNone: return x;
    case Activation::kGeluTanh: return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    case Activation::kGeluErf: return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
    case Activation::kRelu: return x > 0 ? x : 0;
    case Activation::kSilu: return x / (1 + std::exp(-x));
  }
  return x;
}
// The activations above change a difference by at most this factor (GELU's slope peaks near 1.13, SiLU's 1.1).
constexpr double kActivationLipschitz = 1.2;

const Activation kActivations[] = {Activation::kNone, Activation::kGeluTanh, Activation::kGeluErf, Activation::kRelu,
                                   Activation::kSilu};

// Round to nearest even, written independently of kernels/dtype.h.
float round_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint32_t lower = bits & 0xffffu, keep = bits >> 16;
  uint32_t up = keep + ((lower > 0x8000u || (lower == 0x8000u && (keep & 1u))) ? 1u : 0u);
  up <<= 16;
  float r;
  std::memcpy(&r, &up, 4);
  return r;
}
// Through kernels/dtype.h's conversion (round to nearest even, as a _Float16 cast): clang 14, the sanitizer build's
// compiler, has no _Float16 on x86-64 without AVX512-FP16.
float round_to_fp16(float f) { return f16_to_f32(f32_to_f16(f)); }

// What a precision does to the weights and the activations, computed here: the dequantized weights (N, K), the
// activations as the kernel multiplies them (T, K), and per output the rigorous bound on |ours - fp32 original|.
struct Reference {
  std::vector<double> w_deq;         // (N, K)
  std::vector<double> x_eff;         // (T, K)
  std::vector<double> y_tight;       // (T, N) act(x_eff @ w_deq^T + b)
  std::vector<double> y_fp32;        // (T, N) act(x @ w^T + b)
  std::vector<double> magnitude;     // (T, N) sum of |terms| the kernel adds up in float
  std::vector<double> quant_bound;   // (T, N) bound on |x_eff . w_deq - x . w|
};

Reference make_reference(Precision p, const std::vector<float>& w, const std::vector<float>& bias,
                         const std::vector<float>& x, int64_t T, int64_t N, int64_t K, Activation act,
                         float outlier_threshold = 6.0f) {
  Reference r;
  r.w_deq.resize(size_t(N * K));
  r.x_eff.assign(x.begin(), x.end());
  std::vector<double> w_err_per_row(static_cast<size_t>(N), 0.0);   // max |w - w_deq| in the row
  double naive_offset = 0;                             // int8-naive: scale * zero_point, what the GEMV subtracts
  switch (p) {
    case Precision::kFp32:
      for (size_t i = 0; i < w.size(); ++i) r.w_deq[i] = w[i];
      break;
    case Precision::kFp16:
      for (size_t i = 0; i < w.size(); ++i) r.w_deq[i] = round_to_fp16(w[i]);
      break;
    case Precision::kBf16:
      for (size_t i = 0; i < w.size(); ++i) r.w_deq[i] = round_to_bf16(w[i]);
      break;
    case Precision::kInt8Naive: {
      std::vector<uint8_t> q(w.size());
      float scale = 0;
      int32_t zp = 0;
      cpu::quantize_per_tensor_uint8(q.data(), &scale, &zp, w.data(), int64_t(w.size()));
      for (size_t i = 0; i < w.size(); ++i) r.w_deq[i] = double(scale) * (int32_t(q[i]) - zp);
      std::fill(w_err_per_row.begin(), w_err_per_row.end(), double(scale) / 2);
      naive_offset = double(scale) * zp;
      break;
    }
    default: {   // int8 family: per-channel int8 weights
      std::vector<int8_t> q(w.size());
      std::vector<float> scales(static_cast<size_t>(N));
      cpu::quantize_per_channel_int8(q.data(), scales.data(), w.data(), N, K);
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t k = 0; k < K; ++k) r.w_deq[size_t(n * K + k)] = double(scales[size_t(n)]) * q[size_t(n * K + k)];
        w_err_per_row[size_t(n)] = double(scales[size_t(n)]) / 2;
      }
      break;
    }
  }
  // Activations: W8A8 quantizes them per token; LLM.int8() first takes out the outlier columns.
  std::vector<bool> outlier(static_cast<size_t>(K), false);
  std::vector<double> x_step(static_cast<size_t>(T), 0.0);   // per-token activation scale (0 where activations stay float)
  if (p == Precision::kInt8 || p == Precision::kInt8Mixed) {
    std::vector<float> xi(x);
    if (p == Precision::kInt8Mixed) {
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t t = 0; t < T; ++t) outlier[size_t(k)] = outlier[size_t(k)] || std::fabs(x[size_t(t * K + k)]) > outlier_threshold;
        if (outlier[size_t(k)]) {
          for (int64_t t = 0; t < T; ++t) xi[size_t(t * K + k)] = 0.0f;
        }
      }
    }
    std::vector<int8_t> qx(xi.size());
    std::vector<float> sx(static_cast<size_t>(T));
    cpu::quantize_per_token_int8(qx.data(), sx.data(), xi.data(), T, K);
    for (int64_t t = 0; t < T; ++t) {
      x_step[size_t(t)] = sx[size_t(t)];
      for (int64_t k = 0; k < K; ++k) {
        const size_t i = size_t(t * K + k);
        r.x_eff[i] = outlier[size_t(k)] ? double(x[i]) : double(sx[size_t(t)]) * qx[i];
      }
    }
  }
  r.y_tight.resize(size_t(T * N));
  r.y_fp32.resize(size_t(T * N));
  r.magnitude.resize(size_t(T * N));
  r.quant_bound.resize(size_t(T * N));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0, acc32 = 0, mag = 0, bound = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double xe = r.x_eff[size_t(t * K + k)], wd = r.w_deq[size_t(n * K + k)];
        const double xo = x[size_t(t * K + k)], wo = w[size_t(n * K + k)];
        acc += xe * wd;
        acc32 += xo * wo;
        mag += std::fabs(xe * wd) + std::fabs(xo) * naive_offset;
        switch (p) {
          case Precision::kFp32: break;
          case Precision::kFp16: bound += std::fabs(xo * wo) * std::ldexp(1.0, -11) + std::fabs(xo) * std::ldexp(1.0, -25); break;
          case Precision::kBf16: bound += std::fabs(xo * wo) * std::ldexp(1.0, -8); break;
          default:
            // |x w - x' w'| <= |x| |w - w'| + |x - x'| |w'|, with |x - x'| <= step / 2 for quantized activations.
            bound += std::fabs(xo) * w_err_per_row[size_t(n)];
            if (!outlier[size_t(k)]) bound += x_step[size_t(t)] / 2 * std::fabs(wd);
            break;
        }
      }
      const double b = bias.empty() ? 0.0 : double(bias[size_t(n)]);
      r.y_tight[size_t(t * N + n)] = activation_ref(acc + b, act);
      r.y_fp32[size_t(t * N + n)] = activation_ref(acc32 + b, act);
      r.magnitude[size_t(t * N + n)] = mag + std::fabs(b);
      r.quant_bound[size_t(t * N + n)] = bound;
    }
  }
  return r;
}

std::vector<float> random_vector(size_t n, float lo, float hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& e : v) e = u(rng);
  return v;
}

// Weights whose rows differ in scale (0.05 to 2), as real layers' do: that is what per-channel scales are for.
std::vector<float> random_weight(int64_t N, int64_t K, uint32_t seed) {
  std::vector<float> w = random_vector(size_t(N * K), -1.0f, 1.0f, seed);
  for (int64_t n = 0; n < N; ++n) {
    const float row_scale = 0.05f + 1.95f * float(n % 7) / 6.0f;
    for (int64_t k = 0; k < K; ++k) w[size_t(n * K + k)] *= row_scale;
  }
  return w;
}

struct LinearCase {
  Precision precision;
  int64_t T;
};

std::string case_name(const ::testing::TestParamInfo<LinearCase>& info) {
  std::string p = precision_name(info.param.precision);
  std::replace(p.begin(), p.end(), '-', '_');
  return p + "_T" + std::to_string(info.param.T);
}

class LinearTest : public ::testing::TestWithParam<LinearCase> {};

TEST_P(LinearTest, MatchesReferencesForEveryActivation) {
  const Precision p = GetParam().precision;
  const int64_t T = GetParam().T, N = 37, K = 70;   // K not a multiple of 16 (GEMV tail), N odd
  ASSERT_TRUE(cpu().supports(p));
  const std::vector<float> w = random_weight(N, K, 11);
  const std::vector<float> bias = random_vector(size_t(N), -0.5f, 0.5f, 12);
  std::vector<float> x = random_vector(size_t(T * K), -2.0f, 2.0f, uint32_t(13 + T));
  if (p == Precision::kInt8Mixed) {
    x[5] = 9.0f;                                        // column 5 is an outlier (in token 0 only)
    x[size_t((T - 1) * K + 69)] = -7.5f;                // and column 69, in the GEMV tail, in the last token
  }
  const HostTensor wt{w.data(), DType::F32, N, K};
  const HostTensor bt{bias.data(), DType::F32, N, 1};
  auto lin = cpu().make_linear(wt, &bt, p, LinearOptions{});
  ASSERT_EQ(lin->out_features, N);
  ASSERT_EQ(lin->in_features, K);
  ASSERT_EQ(lin->precision, p);
  for (Activation act : kActivations) {
    SCOPED_TRACE("activation " + std::to_string(int(act)));
    const Reference ref = make_reference(p, w, bias, x, T, N, K, act);
    std::vector<float> y(static_cast<size_t>(T * N), NAN);
    cpu().linear(host_tensor(y, T, N), host_tensor(x, T, K), *lin, act);
    int tight_failures = 0, loose_failures = 0;
    for (int64_t i = 0; i < T * N; ++i) {
      const double mag = ref.magnitude[size_t(i)];
      const double tight = kActivationLipschitz * (1e-5 * mag + 1e-6);
      const double loose = kActivationLipschitz * (ref.quant_bound[size_t(i)] + 1e-5 * mag + 1e-6);
      const double got = y[size_t(i)];
      if (!(std::fabs(got - ref.y_tight[size_t(i)]) <= tight) && tight_failures++ < 5) {
        ADD_FAILURE() << "tight: out[" << i / N << ", " << i % N << "] = " << got << ", reference "
                      << ref.y_tight[size_t(i)] << ", tolerance " << tight;
      }
      if (!(std::fabs(got - ref.y_fp32[size_t(i)]) <= loose) && loose_failures++ < 5) {
        ADD_FAILURE() << "against fp32: out[" << i / N << ", " << i % N << "] = " << got << ", fp32 "
                      << ref.y_fp32[size_t(i)] << ", bound " << loose;
      }
    }
  }
}

TEST_P(LinearTest, WithoutBias) {
  const Precision p = GetParam().precision;
  const int64_t T = GetParam().T, N = 19, K = 33;
  const std::vector<float> w = random_weight(N, K, 21);
  std::vector<float> x = random_vector(size_t(T * K), -1.0f, 1.0f, 22);
  auto lin = cpu().make_linear(HostTensor{w.data(), DType::F32, N, K}, nullptr, p, LinearOptions{});
  const Reference ref = make_reference(p, w, {}, x, T, N, K, Activation::kNone);
  std::vector<float> y(static_cast<size_t>(T * N), NAN);
  cpu().linear(host_tensor(y, T, N), host_tensor(x, T, K), *lin, Activation::kNone);
  for (int64_t i = 0; i < T * N; ++i) {
    ASSERT_NEAR(y[size_t(i)], ref.y_tight[size_t(i)], 1e-5 * ref.magnitude[size_t(i)] + 1e-6) << "element " << i;
  }
}

class LinearWeightTest : public ::testing::TestWithParam<Precision> {};

TEST_P(LinearWeightTest, WeightBytesAndQuantError) {
  const Precision p = GetParam();
  const int64_t N = 37, K = 70;
  const std::vector<float> w = random_weight(N, K, 31);
  const std::vector<float> bias = random_vector(size_t(N), -0.5f, 0.5f, 32);
  const HostTensor bt{bias.data(), DType::F32, N, 1};
  auto lin = cpu().make_linear(HostTensor{w.data(), DType::F32, N, K}, &bt, p, LinearOptions{});
  size_t expected_bytes = 0;
  switch (p) {
    case Precision::kFp32: expected_bytes = size_t(N * K) * 4; break;
    case Precision::kFp16: case Precision::kBf16: expected_bytes = size_t(N * K) * 2; break;
    case Precision::kInt8Naive: expected_bytes = size_t(N * K) + 4 + 4; break;   // one scale, one zero point
    default: expected_bytes = size_t(N * K) + size_t(N) * 4; break;              // int8 + one fp32 scale a row
  }
  EXPECT_EQ(lin->weight_bytes, expected_bytes);
  EXPECT_EQ(lin->original_bytes, size_t(N * K) * 4);

  const Reference ref = make_reference(p, w, bias, std::vector<float>(size_t(K), 0.0f), 1, N, K, Activation::kNone);
  std::vector<double> abs_err(w.size());
  double sum = 0, max_abs = 0, sq_err = 0, sq_ref = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    const double d = ref.w_deq[i] - double(w[i]);
    abs_err[i] = std::fabs(d);
    sum += abs_err[i];
    max_abs = std::max(max_abs, abs_err[i]);
    sq_err += d * d;
    sq_ref += double(w[i]) * w[i];
  }
  std::sort(abs_err.begin(), abs_err.end());
  const QuantError& e = lin->error;
  const auto near = [](double got, double want) { return std::fabs(got - want) <= 1e-5 * std::fabs(want) + 1e-9; };
  EXPECT_PRED2(near, e.max_abs, max_abs);
  EXPECT_PRED2(near, e.mean_abs, sum / double(w.size()));
  EXPECT_PRED2(near, e.rel_frobenius, std::sqrt(sq_err / sq_ref));
  // Either middle element of an even count is a median.
  const double lower = abs_err[(abs_err.size() - 1) / 2], upper = abs_err[abs_err.size() / 2];
  EXPECT_GE(e.median_abs, lower * (1 - 1e-5) - 1e-9);
  EXPECT_LE(e.median_abs, upper * (1 + 1e-5) + 1e-9);
  if (p == Precision::kFp32) {
    EXPECT_EQ(e.max_abs, 0.0);
    EXPECT_EQ(e.rel_frobenius, 0.0);
  } else {
    EXPECT_GT(e.max_abs, 0.0);
  }
}

std::vector<LinearCase> all_cases() {
  std::vector<LinearCase> cases;
  for (Precision p : {Precision::kFp32, Precision::kFp16, Precision::kBf16, Precision::kInt8,
                      Precision::kInt8WeightOnly, Precision::kInt8Naive, Precision::kInt8Mixed}) {
    // T <= 8: one GEMV pass; 9..32: several passes; 40: dequantize + sgemm (fp32 and W8A8 use their GEMMs).
    for (int64_t T : {1, 3, 4, 5, 8, 17, 40}) cases.push_back({p, T});
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Cpu, LinearTest, ::testing::ValuesIn(all_cases()), case_name);
INSTANTIATE_TEST_SUITE_P(Cpu, LinearWeightTest,
                         ::testing::Values(Precision::kFp32, Precision::kFp16, Precision::kBf16, Precision::kInt8,
                                           Precision::kInt8WeightOnly, Precision::kInt8Naive, Precision::kInt8Mixed),
                         [](const ::testing::TestParamInfo<Precision>& info) {
                           std::string p = precision_name(info.param);
                           std::replace(p.begin(), p.end(), '-', '_');
                           return p;
                         });

TEST(Linear, ComputeErrorOffLeavesErrorZero) {
  const int64_t N = 5, K = 20;
  const std::vector<float> w = random_weight(N, K, 41);
  LinearOptions o;
  o.compute_error = false;
  auto lin = cpu().make_linear(HostTensor{w.data(), DType::F32, N, K}, nullptr, Precision::kInt8, o);
  EXPECT_EQ(lin->error.max_abs, 0.0);
}

TEST(Linear, PerChannelBeatsPerTensorOnRowsOfDifferentScale) {
  const int64_t N = 37, K = 70;
  const std::vector<float> w = random_weight(N, K, 51);
  const HostTensor wt{w.data(), DType::F32, N, K};
  auto per_channel = cpu().make_linear(wt, nullptr, Precision::kInt8WeightOnly, LinearOptions{});
  auto per_tensor = cpu().make_linear(wt, nullptr, Precision::kInt8Naive, LinearOptions{});
  EXPECT_LT(per_channel->error.rel_frobenius, per_tensor->error.rel_frobenius);
}

TEST(Linear, HalfPrecisionHostWeightsAreConverted) {
  // A weight stored as bf16 in the file and loaded in fp32 is exactly the bf16 values.
  const int64_t T = 3, N = 9, K = 21;
  const std::vector<float> w = random_weight(N, K, 61);
  std::vector<uint16_t> w_bf16(w.size());
  std::vector<float> w_rounded(w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    w_rounded[i] = round_to_bf16(w[i]);
    uint32_t bits;
    std::memcpy(&bits, &w_rounded[i], 4);
    w_bf16[i] = uint16_t(bits >> 16);
  }
  auto lin = cpu().make_linear(HostTensor{w_bf16.data(), DType::BF16, N, K}, nullptr, Precision::kFp32, LinearOptions{});
  std::vector<float> x = random_vector(size_t(T * K), -1.0f, 1.0f, 62);
  const Reference ref = make_reference(Precision::kFp32, w_rounded, {}, x, T, N, K, Activation::kNone);
  std::vector<float> y(static_cast<size_t>(T * N));
  cpu().linear(host_tensor(y, T, N), host_tensor(x, T, K), *lin, Activation::kNone);
  for (int64_t i = 0; i < T * N; ++i) ASSERT_NEAR(y[size_t(i)], ref.y_tight[size_t(i)], 1e-5 * ref.magnitude[size_t(i)]);
}

// Relative Frobenius distance of y from the fp32 reference.
double distance_from_fp32(const std::vector<float>& y, const std::vector<double>& y32) {
  double num = 0, den = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    num += (y[i] - y32[i]) * (y[i] - y32[i]);
    den += y32[i] * y32[i];
  }
  return std::sqrt(num / den);
}

TEST(Linear, Int8MixedKeepsOutlierColumnsOutOfTheActivationScale) {
  const int64_t T = 5, N = 37, K = 70;
  const std::vector<float> w = random_weight(N, K, 71);
  std::vector<float> x = random_vector(size_t(T * K), -1.0f, 1.0f, 72);
  for (int64_t t = 0; t < T; ++t) x[size_t(t * K + 3)] = (t % 2 ? -40.0f : 40.0f);   // an outlier feature
  const HostTensor wt{w.data(), DType::F32, N, K};
  auto int8 = cpu().make_linear(wt, nullptr, Precision::kInt8, LinearOptions{});
  auto mixed = cpu().make_linear(wt, nullptr, Precision::kInt8Mixed, LinearOptions{});
  std::vector<float> y8(static_cast<size_t>(T * N)), ym(static_cast<size_t>(T * N));
  cpu().linear(host_tensor(y8, T, N), host_tensor(x, T, K), *int8, Activation::kNone);
  cpu().linear(host_tensor(ym, T, N), host_tensor(x, T, K), *mixed, Activation::kNone);
  const Reference ref = make_reference(Precision::kInt8Mixed, w, {}, x, T, N, K, Activation::kNone);
  const double e8 = distance_from_fp32(y8, ref.y_fp32), em = distance_from_fp32(ym, ref.y_fp32);
  EXPECT_LT(em, 0.5 * e8) << "int8 " << e8 << ", int8-mixed " << em;
  for (int64_t i = 0; i < T * N; ++i) {
    ASSERT_NEAR(ym[size_t(i)], ref.y_tight[size_t(i)], 1e-5 * ref.magnitude[size_t(i)] + 1e-6) << "element " << i;
  }
  // Above every activation, the threshold leaves nothing to the float path: int8-mixed is int8.
  LinearOptions high;
  high.outlier_threshold = 100.0f;
  auto mixed_high = cpu().make_linear(wt, nullptr, Precision::kInt8Mixed, high);
  std::vector<float> yh(static_cast<size_t>(T * N));
  cpu().linear(host_tensor(yh, T, N), host_tensor(x, T, K), *mixed_high, Activation::kNone);
  EXPECT_EQ(yh, y8);
}

TEST(Linear, SupportedPrecisions) {
  for (Precision p : {Precision::kFp32, Precision::kFp16, Precision::kBf16, Precision::kInt8,
                      Precision::kInt8WeightOnly, Precision::kInt8Naive, Precision::kInt8Mixed}) {
    EXPECT_TRUE(cpu().supports(p)) << precision_name(p);
  }
}

}  // namespace
}  // namespace qs
