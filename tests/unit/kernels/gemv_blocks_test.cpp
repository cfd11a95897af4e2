// int4-weight-only's CPU kernels (kernels/cpu/gemv_blocks.h): the Q4_1 quantizer and the lossless Q4_0 rewrite,
// the reference block GEMV against a double-precision product over the gguf dequantization, the AVX-512 and AVX2
// kernels against the reference, and the CPU backend keeping a file's blocks as they are.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/gemv.h"
#include "kernels/cpu/gemv_blocks.h"
#include "kernels/dtype.h"
#include "tests/unit/kernels/random_values.h"
#include "kernels/error.h"
#include "kernels/gguf_blocks.h"

namespace qs::cpu {
namespace {

// T = tokens, N = out features, K = in features (a multiple of 32).

using test::random_values;

// N x K weights in `type`'s blocks, from random values (Q8_0 built by hand: d = absmax / 127, as ggml does).
std::vector<uint8_t> random_blocks(BlockType type, int64_t N, int64_t K, uint32_t seed) {
  const std::vector<float> w = random_values(size_t(N * K), seed, -0.7f, 0.9f);
  const int64_t nb = N * K / 32;
  std::vector<uint8_t> out(size_t(nb) * block_type_bytes(type));
  if (type != BlockType::kQ8_0) {   // U8Min's come from Q4_1 ones (row_major converts them)
    out.resize(size_t(nb) * sizeof(BlockQ4_1));
    quantize_q4_1(reinterpret_cast<BlockQ4_1*>(out.data()), w.data(), N * K);
  } else {
    auto* blocks = reinterpret_cast<BlockQ8_0*>(out.data());
    for (int64_t b = 0; b < nb; ++b) {
      float amax = 0;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(w[size_t(b * 32 + j)]));
      const float d = amax / 127.0f;
      blocks[b].d = f32_to_f16(d);
      for (int j = 0; j < 32; ++j) blocks[b].qs[j] = int8_t(std::lround(w[size_t(b * 32 + j)] / d));
    }
  }
  return out;
}

DType gguf_type(BlockType type) { return type == BlockType::kQ8_0 ? DType::Q8_0 : DType::Q4_1; }

// GGUF blocks (N x K) as the reference reads them: Q4_1 and Q8_0 as they are, U8Min from Q4_1 (exactly).
std::vector<uint8_t> row_major(BlockType type, const std::vector<uint8_t>& gguf) {
  if (type != BlockType::kU8Min) return gguf;
  const int64_t nb = int64_t(gguf.size() / sizeof(BlockQ4_1));
  std::vector<uint8_t> u8(size_t(nb) * sizeof(BlockU8Min));
  convert_q4_1_to_u8_min(reinterpret_cast<BlockU8Min*>(u8.data()), reinterpret_cast<const BlockQ4_1*>(gguf.data()), nb);
  return u8;
}

// Row-major blocks as the kernels take them: in tiles.
std::vector<uint8_t> tiled(BlockType type, const std::vector<uint8_t>& blocks, int64_t N, int64_t K) {
  std::vector<uint8_t> tiles(blocks.size());
  tile_blocks(tiles.data(), blocks.data(), type, N, K);
  return tiles;
}

const char* type_name(BlockType type) {
  return type == BlockType::kQ4_1 ? "Q4_1" : type == BlockType::kQ8_0 ? "Q8_0" : "U8Min";
}

// Every block comes back as it went in, for each type, in full groups of 16 rows and in a last group of fewer; the
// tiles take the blocks' bytes, nothing more; and the layout is the one the kernels read (gemv_blocks.h): word r
// of row k at byte 4 (r R + k) of its tile, a Q4_1 word holding elements 8r + i (low nibbles) and 8r + 4 + i
// (high), a byte type's elements 4r + i; then the R rows' d, then their m.
TEST(Tiles, HoldEachBlockAsItIs) {
  for (BlockType type : {BlockType::kQ4_1, BlockType::kQ8_0, BlockType::kU8Min}) {
    for (int64_t N : {16, 37}) {
      SCOPED_TRACE(std::string(type_name(type)) + ", N " + std::to_string(N));
      const int64_t K = 96, nb = K / 32, bytes = int64_t(block_type_bytes(type));
      std::vector<uint8_t> blocks(size_t(N * nb * bytes));
      std::mt19937 gen{uint32_t(N)};
      for (uint8_t& v : blocks) v = uint8_t(gen());
      const std::vector<uint8_t> tiles = tiled(type, blocks, N, K);
      std::vector<uint8_t> got(static_cast<size_t>(bytes));
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t b = 0; b < nb; ++b) {
          untile_block(got.data(), tiles.data(), type, n, b, N, K);
          ASSERT_EQ(std::memcmp(got.data(), blocks.data() + (n * nb + b) * bytes, size_t(bytes)), 0)
              << "row " << n << " block " << b;
        }
      }
      if (N != 37) continue;
      // Row 33 (group 2, of N - 32 = 5 rows), block 1: its d, and word 2's byte 3.
      const int64_t rows = N - 32, k = 1, words = tile_words(type);
      const uint8_t* tile = tile_group(tiles.data(), type, 2, K) + 1 * rows * bytes;
      const uint8_t* blk = blocks.data() + (33 * nb + 1) * bytes;
      const uint8_t byte = tile[4 * (2 * rows + k) + 3];
      uint16_t d;
      std::memcpy(&d, tile + 4 * words * rows + 2 * k, 2);
      EXPECT_EQ(std::memcmp(&d, blk, 2), 0);   // d leads each GGUF block (and U8Min's)
      if (type == BlockType::kQ4_1) {
        const auto& q4 = *reinterpret_cast<const BlockQ4_1*>(blk);
        EXPECT_EQ(byte >> 4, q4.qs[23 - 16] >> 4);   // element 8 * 2 + 4 + 3 = 23: a high nibble, here and in GGUF
        EXPECT_EQ(byte & 0x0f, q4.qs[19 - 16] >> 4);   // element 19: a low nibble here, high in GGUF
      } else {
        EXPECT_EQ(byte, blk[bytes - 32 + 4 * 2 + 3]);   // element 11, the quantized bytes ending the block
      }
    }
  }
}

TEST(Q4_1, QuantizerRoundsEachBlockToNearestWithinHalfAStep) {
  const int64_t n = 32 * 40;
  std::vector<float> w = random_values(size_t(n), 1, -2.0f, 3.0f);
  for (int j = 0; j < 32; ++j) w[size_t(64 + j)] = 0.25f;   // a constant block: d = 0, every weight exact
  std::vector<BlockQ4_1> q(size_t(n / 32));
  quantize_q4_1(q.data(), w.data(), n);
  std::vector<float> deq(static_cast<size_t>(n));
  dequantize_gguf_blocks(deq.data(), q.data(), DType::Q4_1, n);
  for (int64_t b = 0; b < n / 32; ++b) {
    const float d = f16_to_f32(q[size_t(b)].d);
    for (int j = 0; j < 32; ++j) {
      const size_t i = size_t(b * 32 + j);
      // Half a step, plus what the fp16 rounding of d and m moves the grid by.
      EXPECT_LE(std::fabs(deq[i] - w[i]), 0.5f * d + 16 * d / 1024 + 4e-3f) << "block " << b << " element " << j;
    }
  }
  for (int j = 0; j < 32; ++j) EXPECT_EQ(deq[size_t(64 + j)], 0.25f);
}

TEST(Q4_1, Q4_0BlocksBecomeQ4_1WithTheSameValues) {
  std::vector<BlockQ4_0> src(50);
  std::mt19937 rng(7);
  for (auto& b : src) {
    b.d = f32_to_f16(std::uniform_real_distribution<float>(-0.1f, 0.1f)(rng));
    for (auto& q : b.qs) q = uint8_t(rng());
  }
  src[3].d = f32_to_f16(6e-8f);   // an fp16 subnormal scale
  std::vector<BlockQ4_1> dst(src.size());
  ASSERT_TRUE(convert_q4_0_to_q4_1(dst.data(), src.data(), int64_t(src.size())));
  std::vector<float> a(src.size() * 32), b(src.size() * 32);
  dequantize_gguf_blocks(a.data(), src.data(), DType::Q4_0, int64_t(a.size()));
  dequantize_gguf_blocks(b.data(), dst.data(), DType::Q4_1, int64_t(b.size()));
  for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << i;

  src[0].d = f32_to_f16(20000.0f);   // -8 d is past fp16's range: refused, the caller rounds from floats
  EXPECT_FALSE(convert_q4_0_to_q4_1(dst.data(), src.data(), 1));
}

class BlockGemv : public ::testing::TestWithParam<BlockType> {};

TEST_P(BlockGemv, ReferenceMatchesTheDequantizedProduct) {
  const BlockType type = GetParam();
  const int64_t T = 3, N = 19, K = 160;
  const std::vector<uint8_t> gguf = random_blocks(type, N, K, 11), blocks = row_major(type, gguf),
                             w = tiled(type, blocks, N, K);
  const std::vector<float> x = random_values(size_t(T * K), 12);
  std::vector<float> deq(size_t(N * K)), out(size_t(T * N));
  dequantize_gguf_blocks(deq.data(), gguf.data(), gguf_type(type), N * K);
  gemv_blocks_reference(out.data(), x.data(), blocks.data(), type, T, N, K);
  std::vector<float> row(static_cast<size_t>(K));
  for (int64_t n = 0; n < N; ++n) {
    dequantize_block_row(row.data(), w.data(), type, n, N, K);
    for (int64_t k = 0; k < K; ++k) ASSERT_EQ(row[size_t(k)], deq[size_t(n * K + k)]);
  }
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t n = 0; n < N; ++n) {
      double want = 0, scale = 0;
      for (int64_t k = 0; k < K; ++k) {
        want += double(x[size_t(t * K + k)]) * deq[size_t(n * K + k)];
        scale += std::fabs(double(x[size_t(t * K + k)]) * deq[size_t(n * K + k)]);
      }
      EXPECT_NEAR(out[size_t(t * N + n)], want, 1e-5 * scale + 1e-6) << "t " << t << " n " << n;
    }
  }
}

void expect_matches_reference(void (*kernel)(float*, const float*, const void*, BlockType, int64_t, int64_t, int64_t),
                              BlockType type, int64_t max_rows) {
  for (int64_t K : {32, 96, 576}) {
    const int64_t N = 37;   // two tiles of 16 rows and a last one of 5
    std::vector<uint8_t> blocks = row_major(type, random_blocks(type, N, K, uint32_t(K)));
    if (type == BlockType::kU8Min) {   // every byte value, not only a nibble's
      std::mt19937 gen{static_cast<uint32_t>(K)};
      auto* u8 = reinterpret_cast<BlockU8Min*>(blocks.data());
      for (int64_t b = 0; b < N * K / 32; ++b) {
        for (uint8_t& q : u8[b].qs) q = uint8_t(gen() & 0xff);
      }
    }
    const std::vector<uint8_t> w = tiled(type, blocks, N, K);
    for (int64_t T = 1; T <= max_rows; ++T) {
      const std::vector<float> x = random_values(size_t(T * K), uint32_t(T + 100 * K), -2.0f, 2.0f);
      std::vector<float> want(size_t(T * N)), got(size_t(T * N), -1.0f);
      gemv_blocks_reference(want.data(), x.data(), blocks.data(), type, T, N, K);
      kernel(got.data(), x.data(), w.data(), type, T, N, K);
      for (size_t i = 0; i < want.size(); ++i) {
        EXPECT_NEAR(got[i], want[i], 2e-5 * (std::fabs(want[i]) + double(K))) << "K " << K << " T " << T << " i " << i;
      }
    }
  }
}

TEST_P(BlockGemv, Avx512MatchesReference) {
  if (!gemv_avx512_available()) GTEST_SKIP() << "no AVX-512 on this CPU";
  expect_matches_reference(gemv_blocks_avx512, GetParam(), kBlockGemvMaxRows);
}

TEST_P(BlockGemv, Avx2MatchesReference) { expect_matches_reference(gemv_blocks_avx2, GetParam(), kBlockGemvMaxRows); }

TEST_P(BlockGemv, AnyTokenCountInPasses) { expect_matches_reference(gemv_blocks, GetParam(), 19); }

// Exact products, not approximately right ones: with one nonzero weight a row (m = 0), a power of two so that q x
// is exact in fp32, the output is d (q x) rounded once, bit for bit what the fp32 reference computes, with
// activations that carry all 24 bits of their significand. Both Q4_1 kernels, at batch 1 (four partial sums a
// row) and 3 (one).
TEST(BlockGemvQ4_1, ProductsAreExact) {
  const int64_t N = 40, K = 96, nb = K / 32;
  std::vector<BlockQ4_1> blocks(size_t(N * nb));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t b = 0; b < nb; ++b) {
      BlockQ4_1& blk = blocks[size_t(n * nb + b)];
      blk.d = f32_to_f16(0.01f * float(n + 1)), blk.m = 0;
      std::fill(blk.qs, blk.qs + 16, uint8_t(0));
    }
    const int64_t j = n % 32;   // element j of block n % nb: nibble j (low) or j - 16 (high)
    BlockQ4_1& blk = blocks[size_t(n * nb + n % nb)];
    const int q = 1 << (n % 4);
    blk.qs[j % 16] = uint8_t(j < 16 ? q : q << 4);
  }
  std::vector<uint8_t> w(blocks.size() * sizeof(BlockQ4_1));
  tile_blocks(w.data(), blocks.data(), BlockType::kQ4_1, N, K);
  for (int64_t T : {1, 3}) {
    std::vector<float> x = random_values(size_t(T * K), 77, -3.0f, 3.0f);
    for (size_t k = 0; k < x.size(); ++k) x[k] += 1e-7f * float(k);   // low significand bits set
    std::vector<float> want(size_t(T * N)), got(size_t(T * N));
    gemv_blocks_reference(want.data(), x.data(), blocks.data(), BlockType::kQ4_1, T, N, K);
    if (gemv_avx512_available()) {
      gemv_blocks_avx512(got.data(), x.data(), w.data(), BlockType::kQ4_1, T, N, K);
      for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i]) << "AVX-512, T " << T << ", output " << i;
    }
    gemv_blocks_avx2(got.data(), x.data(), w.data(), BlockType::kQ4_1, T, N, K);
    for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i]) << "AVX2, T " << T << ", output " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Types, BlockGemv, ::testing::Values(BlockType::kQ4_1, BlockType::kQ8_0, BlockType::kU8Min),
                         [](const auto& info) { return type_name(info.param); });

// The backend: a file's Q4_1 and Q8_0 blocks are kept byte for byte (error 0 against their own values), floats
// are rounded into Q4_1, and every batch size (GEMV passes, dequantize-then-sgemm prefill) gives the reference.
TEST(Int4Linear, KeepsFileBlocksAndMatchesTheReferenceAtEveryBatch) {
  auto backend = make_cpu_backend(2);
  const int64_t N = 45, K = 128;
  for (BlockType type : {BlockType::kQ4_1, BlockType::kQ8_0}) {
    const std::vector<uint8_t> w = random_blocks(type, N, K, 5);
    const std::vector<float> bias = random_values(size_t(N), 6);
    const HostTensor bt{bias.data(), DType::F32, N, 1};
    auto lin = backend->make_linear(HostTensor{w.data(), gguf_type(type), N, K}, &bt, Precision::kInt4WeightOnly,
                                    LinearOptions{});
    EXPECT_EQ(lin->weight_bytes, w.size());
    EXPECT_EQ(lin->error.max_abs, 0.0);
    for (int64_t T : {1, 7, 9, 33, 70}) {
      const std::vector<float> x = random_values(size_t(T * K), uint32_t(T));
      std::vector<float> want(size_t(T * N));
      gemv_blocks_reference(want.data(), x.data(), w.data(), type, T, N, K);
      std::unique_ptr<DeviceBuffer> in_buf, out_buf;
      Tensor in = backend->new_tensor(in_buf, T, K), out = backend->new_tensor(out_buf, T, N);
      std::memcpy(in.data, x.data(), x.size() * 4);
      backend->linear(out, in, *lin, Activation::kNone);
      const float* y = static_cast<const float*>(out.data);
      for (int64_t i = 0; i < T * N; ++i) {
        EXPECT_NEAR(y[i], want[size_t(i)] + bias[size_t(i % N)], 1e-4 * (std::fabs(want[size_t(i)]) + 1))
            << "T " << T << " i " << i;
      }
    }
  }
  // From floats: the quantizer's blocks, and the error reported against the floats.
  const std::vector<float> wf = random_values(size_t(N * K), 9);
  auto lin = backend->make_linear(HostTensor{wf.data(), DType::F32, N, K}, nullptr, Precision::kInt4WeightOnly,
                                  LinearOptions{});
  EXPECT_EQ(lin->weight_bytes, size_t(N * K / 32) * sizeof(BlockQ4_1));
  EXPECT_GT(lin->error.rel_frobenius, 0.0);
  EXPECT_LT(lin->error.rel_frobenius, 0.1);
}

TEST(Int4Linear, RefusesInputsThatAreNotWholeBlocks) {
  auto backend = make_cpu_backend(1);
  const std::vector<float> w = random_values(size_t(8 * 70), 3);
  try {
    backend->make_linear(HostTensor{w.data(), DType::F32, 8, 70}, nullptr, Precision::kInt4WeightOnly,
                         LinearOptions{});
    FAIL() << "a K of 70 was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("not a multiple of 32"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qs::cpu
