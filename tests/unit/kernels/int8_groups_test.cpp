// Group-wise int8 on the CPU (--group-size 32): the Q8_0 quantizer's error bound, the backend keeping a file's Q8_0
// blocks as they are, every batch size against the reference block GEMV, the scales counted in the bytes, and the
// refusals (K not whole groups, group sizes not built, other precisions); W8A8 by groups (int8, int8-smooth): the
// activation quantizer, the VNNI kernel bit for bit against its reference, and the linear against both roundings.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/gemv.h"
#include "kernels/cpu/gemv_blocks.h"
#include "kernels/cpu/quantize.h"
#include "kernels/dtype.h"
#include "tests/unit/kernels/random_values.h"
#include "kernels/error.h"
#include "kernels/gguf_blocks.h"

namespace qs::cpu {
namespace {

// T = tokens, N = out features, K = in features.

using test::random_values;

LinearOptions grouped() {
  LinearOptions o;
  o.group_size = kInt8WeightGroup;
  return o;
}

// y (T, N) = the backend's linear of x (T, K) through lin.
std::vector<float> run_linear(Backend& backend, const LinearWeight& lin, const std::vector<float>& x, int64_t T,
                              int64_t K, int64_t N) {
  std::unique_ptr<DeviceBuffer> in_buf, out_buf;
  Tensor in = backend.new_tensor(in_buf, T, K), out = backend.new_tensor(out_buf, T, N);
  std::memcpy(in.data, x.data(), x.size() * 4);
  backend.linear(out, in, lin, Activation::kNone);
  const float* y = static_cast<const float*>(out.data);
  return std::vector<float>(y, y + T * N);
}

TEST(Q8_0, QuantizerRoundsEachBlockToNearestOfItsOwnScale) {
  const int64_t n = 32 * 60;
  std::vector<float> w = random_values(size_t(n), 1, -2.0f, 3.0f);
  for (int j = 0; j < 32; ++j) w[size_t(64 + j)] = 0.0f;           // an all-zero block: d = 0, exact
  for (int j = 0; j < 32; ++j) w[size_t(128 + j)] *= 1e-3f;        // a small block keeps its own fine grid
  std::vector<BlockQ8_0> q(size_t(n / 32));
  quantize_q8_0(q.data(), w.data(), n);
  std::vector<float> deq(static_cast<size_t>(n));
  dequantize_gguf_blocks(deq.data(), q.data(), DType::Q8_0, n);
  for (int64_t b = 0; b < n / 32; ++b) {
    float absmax = 0;
    for (int j = 0; j < 32; ++j) absmax = std::max(absmax, std::fabs(w[size_t(b * 32 + j)]));
    const float d = f16_to_f32(q[size_t(b)].d);
    EXPECT_NEAR(d, absmax / 127.0f, absmax / 127.0f / 1024) << "block " << b;   // fp16: 11 significant bits
    for (int j = 0; j < 32; ++j) {
      const size_t i = size_t(b * 32 + j);
      // Half a step of the stored scale; at the top of the range the clamp to 127 can add the fp16 rounding of d.
      EXPECT_LE(std::fabs(deq[i] - w[i]), 0.5f * d + absmax / 1024 + 1e-7f) << "block " << b << " element " << j;
    }
  }
  for (int j = 0; j < 32; ++j) EXPECT_EQ(deq[size_t(64 + j)], 0.0f);
}

// A Q8_0 tensor from a file is kept byte for byte (error 0); floats are quantized into Q8_0; every batch size
// (GEMV passes of 8 tokens, dequantize-then-sgemm prefill) gives the reference block product plus the bias.
TEST(Int8GroupLinear, MatchesTheReferenceAtEveryBatchAndKeepsQ8_0Blocks) {
  auto backend = make_cpu_backend(2);
  for (int64_t K : {32, 96, 576}) {
    const int64_t N = 37;
    const std::vector<float> wf = random_values(size_t(N * K), uint32_t(K), -0.7f, 0.9f);
    std::vector<uint8_t> blocks(size_t(N * K / 32) * sizeof(BlockQ8_0));
    quantize_q8_0(reinterpret_cast<BlockQ8_0*>(blocks.data()), wf.data(), N * K);
    const std::vector<float> bias = random_values(size_t(N), 6);
    const HostTensor bt{bias.data(), DType::F32, N, 1};
    auto from_floats = backend->make_linear(HostTensor{wf.data(), DType::F32, N, K}, &bt,
                                            Precision::kInt8WeightOnly, grouped());
    auto from_blocks = backend->make_linear(HostTensor{blocks.data(), DType::Q8_0, N, K}, &bt,
                                            Precision::kInt8WeightOnly, grouped());
    EXPECT_EQ(from_floats->weight_bytes, blocks.size());   // 34 bytes per 32 weights: the scales are counted
    EXPECT_EQ(from_blocks->weight_bytes, blocks.size());
    EXPECT_EQ(from_blocks->error.max_abs, 0.0);
    EXPECT_GT(from_floats->error.rel_frobenius, 0.0);
    EXPECT_LT(from_floats->error.rel_frobenius, 0.01);
    for (int64_t T : {1, 2, 3, 4, 5, 6, 7, 8, 9, 33, 70}) {
      const std::vector<float> x = random_values(size_t(T * K), uint32_t(T + 100 * K), -2.0f, 2.0f);
      std::vector<float> want(size_t(T * N));
      gemv_blocks_reference(want.data(), x.data(), blocks.data(), BlockType::kQ8_0, T, N, K);
      for (const LinearWeight* lin : {from_floats.get(), from_blocks.get()}) {
        const std::vector<float> y = run_linear(*backend, *lin, x, T, K, N);
        for (int64_t i = 0; i < T * N; ++i) {
          EXPECT_NEAR(y[size_t(i)], want[size_t(i)] + bias[size_t(i % N)],
                      2e-5 * (std::fabs(want[size_t(i)]) + double(K)))
              << "K " << K << " T " << T << " i " << i;
        }
      }
    }
  }
}

// A 4-bit file's tensor is not rounded again: Q4_1 blocks become U8Min ones (36 bytes a block) and Q4_0 ones Q8_0
// (34), both exactly (error 0), and the product is the reference's over the file's values at every batch size.
TEST(Int8GroupLinear, KeepsQ4BlocksExactly) {
  auto backend = make_cpu_backend(2);
  const int64_t N = 37, K = 96, nb = N * K / 32;
  const std::vector<float> wf = random_values(size_t(N * K), 3, -0.7f, 0.9f);
  std::vector<BlockQ4_1> q4_1(static_cast<size_t>(nb));
  quantize_q4_1(q4_1.data(), wf.data(), N * K);
  std::vector<BlockQ4_0> q4_0(static_cast<size_t>(nb));
  for (int64_t b = 0; b < nb; ++b) {
    q4_0[size_t(b)].d = f32_to_f16(0.01f * float(b % 7 + 1));
    for (int j = 0; j < 16; ++j) q4_0[size_t(b)].qs[j] = uint8_t((b * 31 + j * 7) & 0xff);
  }
  struct Case {
    DType dtype;
    const void* data;
    size_t block_bytes;
  };
  for (const Case& c : {Case{DType::Q4_1, q4_1.data(), sizeof(BlockU8Min)},
                        Case{DType::Q4_0, q4_0.data(), sizeof(BlockQ8_0)}}) {
    SCOPED_TRACE(dtype_name(c.dtype));
    auto lin = backend->make_linear(HostTensor{c.data, c.dtype, N, K}, nullptr, Precision::kInt8WeightOnly, grouped());
    EXPECT_EQ(lin->weight_bytes, size_t(nb) * c.block_bytes);
    EXPECT_EQ(lin->error.max_abs, 0.0) << "the file's values exactly";
    std::vector<float> deq(size_t(N * K));
    dequantize_gguf_blocks(deq.data(), c.data, c.dtype, N * K);
    for (int64_t T : {1, 3, 8, 9, 40}) {
      const std::vector<float> x = random_values(size_t(T * K), uint32_t(T), -2.0f, 2.0f);
      const std::vector<float> y = run_linear(*backend, *lin, x, T, K, N);
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t n = 0; n < N; ++n) {
          double want = 0, scale = 0;
          for (int64_t k = 0; k < K; ++k) {
            want += double(x[size_t(t * K + k)]) * deq[size_t(n * K + k)];
            scale += std::fabs(double(x[size_t(t * K + k)]) * deq[size_t(n * K + k)]);
          }
          EXPECT_NEAR(y[size_t(t * N + n)], want, 2e-5 * scale + 1e-6) << "T " << T << " t " << t << " n " << n;
        }
      }
    }
  }
}

// The reason for groups: a row whose inputs differ in scale (here one group 50x larger) loses its small weights
// to a row-wide scale; per group each keeps its own grid.
TEST(Int8GroupLinear, ErrorBelowPerRowWhereGroupsDifferInScale) {
  auto backend = make_cpu_backend(1);
  const int64_t N = 16, K = 256;
  std::vector<float> w = random_values(size_t(N * K), 4);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < 32; ++k) w[size_t(n * K + k)] *= 50.0f;
  }
  const HostTensor t{w.data(), DType::F32, N, K};
  auto per_row = backend->make_linear(t, nullptr, Precision::kInt8WeightOnly, LinearOptions{});
  auto per_group = backend->make_linear(t, nullptr, Precision::kInt8WeightOnly, grouped());
  EXPECT_EQ(per_row->weight_bytes, size_t(N * K + N * 4));
  EXPECT_EQ(per_group->weight_bytes, size_t(N * K / 32 * 34));
  EXPECT_LT(per_group->error.rel_frobenius, 0.5 * per_row->error.rel_frobenius);
}

void expect_refused(const std::function<void()>& load, ErrorCode code, const std::string& words) {
  try {
    load();
    FAIL() << "accepted; expected a refusal naming '" << words << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
  }
}

TEST(Int8GroupLinear, RefusesWhatItCannotHonour) {
  auto backend = make_cpu_backend(1);
  const std::vector<float> w = random_values(size_t(8 * 70), 3);
  expect_refused([&] {
    backend->make_linear(HostTensor{w.data(), DType::F32, 8, 70}, nullptr, Precision::kInt8WeightOnly, grouped());
  }, ErrorCode::kUnsupported, "--group-size 0");
  LinearOptions g64;
  g64.group_size = 64;
  expect_refused([&] {
    backend->make_linear(HostTensor{w.data(), DType::F32, 8, 64}, nullptr, Precision::kInt8WeightOnly, g64);
  }, ErrorCode::kInvalidArgument, "has groups of 32");
  expect_refused([&] {
    backend->make_linear(HostTensor{w.data(), DType::F32, 8, 64}, nullptr, Precision::kInt8Mixed, grouped());
  }, ErrorCode::kInvalidArgument, "for int8-weight-only");
  if (gemv_vnni_available()) {
    expect_refused([&] {
      backend->make_linear(HostTensor{w.data(), DType::F32, 8, 70}, nullptr, Precision::kInt8, grouped());
    }, ErrorCode::kUnsupported, "--group-size 0");
  }
}

// Each group of 32 of a token is quantized as quantize_per_token_int8 quantizes a token of 32: its own absmax
// scale, the same rounding; beside it -128 x the group's sum.
TEST(W8A8Groups, ActivationsQuantizedPerGroupAsPerTokenOnEachGroup) {
  const int64_t T = 5, K = 96;
  std::vector<float> x = random_values(size_t(T * K), 21, -3.0f, 3.0f);
  x[7] = 250.0f;                                                   // an outlier coarsens only its own group
  for (int64_t k = 64; k < 96; ++k) x[size_t(2 * K + k)] = 0.0f;   // an all-zero group: scale 1, all 0
  std::vector<int8_t> q(size_t(T * K));
  std::vector<float> scales(size_t(T * K / 32));
  std::vector<int32_t> dot_start(size_t(T * K / 32));
  quantize_per_group_int8(q.data(), scales.data(), dot_start.data(), x.data(), T, K, 32);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t g = 0; g < K / 32; ++g) {
      int8_t want[32];
      float want_scale = 0;
      quantize_per_token_int8(want, &want_scale, x.data() + t * K + g * 32, 1, 32);
      EXPECT_EQ(scales[size_t(t * 3 + g)], want_scale) << t << " " << g;
      int32_t sum = 0;
      for (int j = 0; j < 32; ++j) {
        ASSERT_EQ(q[size_t(t * K + g * 32 + j)], want[j]) << t << " " << g << " " << j;
        sum += want[j];
      }
      EXPECT_EQ(dot_start[size_t(t * 3 + g)], -128 * sum) << t << " " << g;
    }
  }
  EXPECT_EQ(scales[size_t(2 * 3 + 2)], 1.0f);
  EXPECT_FLOAT_EQ(scales[0], 250.0f / 127);
  EXPECT_LT(scales[1], 3.0f / 127 + 1e-6f);
}

// The kernel against its reference, bit for bit (the same integer dots, the same float operations in the same
// order), for both tile shapes and their heights, partial last panels and half panels, K of 1 to 48 groups.
TEST(W8A8Groups, VnniKernelIsTheReferenceBitForBit) {
  if (!gemv_vnni_available()) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  struct Shape { int64_t T, N, K; };
  // Tiles of 6 tokens and the last one shorter (7, 12, 13, 16, 40); the last panel of N = 56 ends in its
  // second half, of 37, 45 and 70 in its first.
  const Shape shapes[] = {{1, 576, 576}, {1, 45, 32}, {2, 33, 64}, {3, 64, 96}, {5, 96, 1536}, {6, 40, 160},
                          {7, 70, 128}, {12, 56, 96}, {13, 37, 64}, {16, 576, 576}, {40, 64, 576}};
  std::mt19937 rng(22);
  for (const Shape& s : shapes) {
    SCOPED_TRACE("T=" + std::to_string(s.T) + " N=" + std::to_string(s.N) + " K=" + std::to_string(s.K));
    const int64_t groups = s.K / 32;
    std::vector<int8_t> q(size_t(s.N * s.K));
    for (auto& v : q) v = int8_t(int(rng() % 255) - 127);
    std::vector<int8_t> xq(size_t(s.T * s.K));
    for (auto& v : xq) v = int8_t(int(rng() % 255) - 127);
    std::vector<int32_t> dot_start(size_t(s.T * groups), 0);
    for (int64_t i = 0; i < s.T * s.K; ++i) dot_start[size_t(i / 32)] -= 128 * xq[size_t(i)];
    std::vector<uint16_t> d(size_t(s.N * groups));
    for (auto& v : d) v = f32_to_f16(1e-3f * float(1 + rng() % 1000));
    const std::vector<float> x_scale = random_values(size_t(s.T * groups), 23, 1e-3f, 1.0f);
    std::vector<uint8_t> packed(vnni_packed_bytes(s.N, s.K));
    pack_weights_vnni_offset(packed.data(), q.data(), s.N, s.K);
    for (int64_t n = 0; n < s.N; ++n) {
      for (int64_t k = 0; k < s.K; ++k) {
        ASSERT_EQ(int(uint8_t(vnni_weight(reinterpret_cast<const int8_t*>(packed.data()), n, k, s.K))),
                  q[size_t(n * s.K + k)] + 128);
      }
    }
    std::vector<uint16_t> packed_scales(w8a8_group_scale_count(s.N, s.K));
    pack_w8a8_group_scales(packed_scales.data(), d.data(), s.N, s.K);
    for (int64_t n = 0; n < s.N; ++n) {
      for (int64_t g = 0; g < groups; ++g) {
        ASSERT_EQ(w8a8_group_scale(packed_scales.data(), n, g, s.K), d[size_t(n * groups + g)]);
      }
    }
    std::vector<float> want(size_t(s.T * s.N)), got(size_t(s.T * s.N), NAN);
    gemm_w8a8_groups_reference(want.data(), xq.data(), x_scale.data(), packed.data(), packed_scales.data(), s.T,
                               s.N, s.K);
    gemm_w8a8_groups_vnni(got.data(), xq.data(), x_scale.data(), dot_start.data(), packed.data(), packed_scales.data(),
                          s.T, s.N, s.K);
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(got[i], want[i]) << "out[" << i / size_t(s.N) << ", " << i % size_t(s.N) << "]";
    }
  }
}

// The int8 linear by groups: weights rounded into Q8_0 blocks (a Q8_0 source kept as it is: error 0), activations
// by groups of 32; every batch size gives the product of those two roundings plus the bias, the scales are counted
// in the bytes, and a token with an outlier channel keeps its other channels (per token they are lost).
TEST(W8A8Groups, LinearIsTheProductOfBothGroupRoundings) {
  if (!gemv_vnni_available()) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  auto backend = make_cpu_backend(2);
  const int64_t N = 37, K = 96;
  const std::vector<float> wf = random_values(size_t(N * K), 31, -0.7f, 0.9f);
  std::vector<BlockQ8_0> blocks(size_t(N * K / 32));
  quantize_q8_0(blocks.data(), wf.data(), N * K);
  std::vector<float> wq(size_t(N * K));
  dequantize_gguf_blocks(wq.data(), blocks.data(), DType::Q8_0, N * K);
  const std::vector<float> bias = random_values(size_t(N), 32);
  const HostTensor bt{bias.data(), DType::F32, N, 1};
  for (Precision p : {Precision::kInt8, Precision::kInt8Smooth}) {
    auto from_floats = backend->make_linear(HostTensor{wf.data(), DType::F32, N, K}, &bt, p, grouped());
    auto from_blocks = backend->make_linear(HostTensor{blocks.data(), DType::Q8_0, N, K}, &bt, p, grouped());
    EXPECT_EQ(from_floats->weight_bytes, blocks.size() * sizeof(BlockQ8_0));
    EXPECT_EQ(from_blocks->error.max_abs, 0.0);
    EXPECT_GT(from_floats->error.rel_frobenius, 0.0);
    EXPECT_LT(from_floats->error.rel_frobenius, 0.01);
    for (int64_t T : {1, 2, 6, 7, 33}) {
      std::vector<float> x = random_values(size_t(T * K), uint32_t(T + 40), -2.0f, 2.0f);
      x[3] = 80.0f;   // an outlier in token 0's first group
      std::vector<int8_t> xq(size_t(T * K));
      std::vector<float> xs(size_t(T * K / 32));
      std::vector<int32_t> dot_start(size_t(T * K / 32));
      quantize_per_group_int8(xq.data(), xs.data(), dot_start.data(), x.data(), T, K, 32);
      for (const LinearWeight* lin : {from_floats.get(), from_blocks.get()}) {
        const std::vector<float> y = run_linear(*backend, *lin, x, T, K, N);
        for (int64_t t = 0; t < T; ++t) {
          for (int64_t n = 0; n < N; ++n) {
            double want = bias[size_t(n)], exact = bias[size_t(n)], mag = 0, half_steps = 0;
            for (int64_t k = 0; k < K; ++k) {
              const double step = xs[size_t((t * K + k) / 32)], w = wq[size_t(n * K + k)];
              want += step * int(xq[size_t(t * K + k)]) * w;
              exact += double(x[size_t(t * K + k)]) * w;
              mag += std::fabs(double(x[size_t(t * K + k)]) * w);
              half_steps += 0.5 * step * std::fabs(w);
            }
            ASSERT_NEAR(y[size_t(t * N + n)], want, 1e-5 * mag + 1e-6)
                << precision_name(p) << " T " << t << " n " << n;
            // At most half a step of each input's own group grid: token 0's outlier widens only its first group's.
            EXPECT_NEAR(y[size_t(t * N + n)], exact, half_steps * (1 + 1e-4) + 1e-5 * mag)
                << precision_name(p) << " T " << t << " n " << n;
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace qs::cpu
