// Group-wise int8-weight-only on the CPU (--group-size 32): the Q8_0 quantizer's error bound, the backend keeping
// a file's Q8_0 blocks as they are, every batch size against the reference block GEMV, the scales counted in the
// bytes, and the refusals (K not whole groups, group sizes not built, other precisions).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/gemv_blocks.h"
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
        std::unique_ptr<DeviceBuffer> in_buf, out_buf;
        Tensor in = backend->new_tensor(in_buf, T, K), out = backend->new_tensor(out_buf, T, N);
        std::memcpy(in.data, x.data(), x.size() * 4);
        backend->linear(out, in, *lin, Activation::kNone);
        const float* y = static_cast<const float*>(out.data);
        for (int64_t i = 0; i < T * N; ++i) {
          EXPECT_NEAR(y[i], want[size_t(i)] + bias[size_t(i % N)], 2e-5 * (std::fabs(want[size_t(i)]) + double(K)))
              << "K " << K << " T " << T << " i " << i;
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
  }, ErrorCode::kInvalidArgument, "only groups of 32");
  expect_refused([&] {
    backend->make_linear(HostTensor{w.data(), DType::F32, 8, 64}, nullptr, Precision::kInt8, grouped());
  }, ErrorCode::kInvalidArgument, "only int8-weight-only");
}

}  // namespace
}  // namespace qs::cpu
