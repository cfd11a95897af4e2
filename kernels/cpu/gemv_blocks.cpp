// int4-weight-only and group-wise int8-weight-only on the CPU: the Q4_1 and Q8_0 quantizers, the reference block GEMV the fast ones are tested against,
// and the dispatch between the AVX-512 and AVX2 kernels (gemv_blocks_avx512.cpp, gemv_blocks_avx2.cpp).
#include "kernels/cpu/gemv_blocks.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/gemv.h"
#include "kernels/dtype.h"
#include "kernels/error.h"

namespace qs::cpu {

size_t block_type_bytes(BlockType type) {
  switch (type) {
    case BlockType::kQ4_1: return sizeof(BlockQ4_1);
    case BlockType::kQ8_0: return sizeof(BlockQ8_0);
    case BlockType::kU8Min: return sizeof(BlockU8Min);
  }
  return 0;
}

void convert_q4_1_to_u8_min(BlockU8Min* dst, const BlockQ4_1* src, int64_t n_blocks) {
  for (int64_t b = 0; b < n_blocks; ++b) {
    dst[b].d = src[b].d;
    dst[b].m = src[b].m;
    for (int j = 0; j < 16; ++j) {   // a Q4_1 byte holds element j (low nibble) and element j + 16 (high)
      dst[b].qs[j] = src[b].qs[j] & 0x0f;
      dst[b].qs[j + 16] = src[b].qs[j] >> 4;
    }
  }
}

void convert_q4_0_to_q8_0(BlockQ8_0* dst, const BlockQ4_0* src, int64_t n_blocks) {
  for (int64_t b = 0; b < n_blocks; ++b) {
    dst[b].d = src[b].d;
    for (int j = 0; j < 16; ++j) {
      dst[b].qs[j] = int8_t((src[b].qs[j] & 0x0f) - 8);
      dst[b].qs[j + 16] = int8_t((src[b].qs[j] >> 4) - 8);
    }
  }
}

namespace {

// GGUF's Q4_1 byte j holds elements j (low nibble) and j + 16 (high).
int q4_1_element(const BlockQ4_1& blk, int j) { return j < 16 ? blk.qs[j] & 0x0f : blk.qs[j - 16] >> 4; }

// A row-major block's parts: its quantized bytes (Q4_1 as tile words: byte i of word r = element 8r + i | element
// 8r + 4 + i << 4; the byte types as they are, word r = elements 4r .. 4r + 3), d and m (none for Q8_0).
void block_to_words(uint8_t words[32], uint16_t& d, uint16_t& m, const void* block, BlockType type) {
  m = 0;
  if (type == BlockType::kQ4_1) {
    const auto& blk = *static_cast<const BlockQ4_1*>(block);
    for (int r = 0; r < 4; ++r) {
      for (int i = 0; i < 4; ++i) {
        words[4 * r + i] = uint8_t(q4_1_element(blk, 8 * r + i) | (q4_1_element(blk, 8 * r + 4 + i) << 4));
      }
    }
    d = blk.d, m = blk.m;
  } else if (type == BlockType::kU8Min) {
    const auto& blk = *static_cast<const BlockU8Min*>(block);
    std::memcpy(words, blk.qs, 32);
    d = blk.d, m = blk.m;
  } else {
    const auto& blk = *static_cast<const BlockQ8_0*>(block);
    std::memcpy(words, blk.qs, 32);
    d = blk.d;
  }
}

void words_to_block(void* block, const uint8_t words[32], uint16_t d, uint16_t m, BlockType type) {
  if (type == BlockType::kQ4_1) {
    auto& blk = *static_cast<BlockQ4_1*>(block);
    blk.d = d, blk.m = m;
    for (int r = 0; r < 4; ++r) {
      for (int i = 0; i < 4; ++i) {
        for (int half = 0; half < 2; ++half) {   // element 8r + i (low nibble) or 8r + 4 + i (high)
          const int j = 8 * r + 4 * half + i, q = half ? words[4 * r + i] >> 4 : words[4 * r + i] & 0x0f;
          uint8_t& byte = blk.qs[j % 16];
          byte = j < 16 ? uint8_t((byte & 0xf0) | q) : uint8_t((byte & 0x0f) | (q << 4));
        }
      }
    }
  } else if (type == BlockType::kU8Min) {
    auto& blk = *static_cast<BlockU8Min*>(block);
    blk.d = d, blk.m = m;
    std::memcpy(blk.qs, words, 32);
  } else {
    auto& blk = *static_cast<BlockQ8_0*>(block);
    blk.d = d;
    std::memcpy(blk.qs, words, 32);
  }
}

// Row n's block b in a tiled weight: its tile, the row's place in it and the tile's row count.
struct TilePlace {
  uint8_t* tile;
  int64_t k, rows;
};
TilePlace tile_place(const void* w, BlockType type, int64_t n, int64_t b, int64_t N, int64_t K) {
  const int64_t g = n / kTileRows, rows = tile_rows(g, N);
  const uint8_t* tile = tile_group(w, type, g, K) + b * rows * int64_t(block_type_bytes(type));
  return {const_cast<uint8_t*>(tile), n % kTileRows, rows};
}

}  // namespace

void tile_blocks(uint8_t* dst, const void* src, BlockType type, int64_t N, int64_t K) {
  const int64_t nb = K / kGgufBlock32, bytes = int64_t(block_type_bytes(type)), words = tile_words(type);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t b = 0; b < nb; ++b) {
      uint8_t q[32];
      uint16_t d, m;
      block_to_words(q, d, m, static_cast<const uint8_t*>(src) + (n * nb + b) * bytes, type);
      const TilePlace at = tile_place(dst, type, n, b, N, K);
      for (int64_t r = 0; r < words; ++r) std::memcpy(at.tile + 4 * (r * at.rows + at.k), q + 4 * r, 4);
      std::memcpy(at.tile + 4 * words * at.rows + 2 * at.k, &d, 2);
      if (type != BlockType::kQ8_0) std::memcpy(at.tile + (4 * words + 2) * at.rows + 2 * at.k, &m, 2);
    }
  }
}

void untile_block(void* block, const void* w, BlockType type, int64_t n, int64_t b, int64_t N, int64_t K) {
  const int64_t words = tile_words(type);
  const TilePlace at = tile_place(w, type, n, b, N, K);
  uint8_t q[32] = {};
  uint16_t d, m = 0;
  for (int64_t r = 0; r < words; ++r) std::memcpy(q + 4 * r, at.tile + 4 * (r * at.rows + at.k), 4);
  std::memcpy(&d, at.tile + 4 * words * at.rows + 2 * at.k, 2);
  if (type != BlockType::kQ8_0) std::memcpy(&m, at.tile + (4 * words + 2) * at.rows + 2 * at.k, 2);
  words_to_block(block, q, d, m, type);
}

void quantize_q4_1(BlockQ4_1* dst, const float* src, int64_t n) {
  QS_CHECK(n % kGgufBlock32 == 0, ErrorCode::kInternal, "quantize_q4_1: ", n, " elements are not whole blocks");
  for (int64_t b = 0; b < n / kGgufBlock32; ++b) {
    const float* x = src + b * kGgufBlock32;
    float lo = x[0], hi = x[0];
    for (int j = 1; j < 32; ++j) lo = std::min(lo, x[j]), hi = std::max(hi, x[j]);
    const float d = (hi - lo) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    BlockQ4_1& out = dst[b];
    out.d = f32_to_f16(d);
    out.m = f32_to_f16(lo);
    for (int j = 0; j < 16; ++j) {
      const int q0 = std::min(15, int((x[j] - lo) * id + 0.5f));
      const int q1 = std::min(15, int((x[j + 16] - lo) * id + 0.5f));
      out.qs[j] = uint8_t(q0 | (q1 << 4));
    }
  }
}

void quantize_q8_0(BlockQ8_0* dst, const float* src, int64_t n) {
  QS_CHECK(n % kGgufBlock32 == 0, ErrorCode::kInternal, "quantize_q8_0: ", n, " elements are not whole blocks");
  for (int64_t b = 0; b < n / kGgufBlock32; ++b) {
    const float* x = src + b * kGgufBlock32;
    float absmax = 0;
    for (int j = 0; j < 32; ++j) absmax = std::max(absmax, std::fabs(x[j]));
    QS_CHECK(absmax / 127.0f <= 65504.0f, ErrorCode::kUnsupported, "quantize_q8_0: a weight of magnitude ", absmax,
             " needs a scale past fp16's range; load it with --group-size 0");
    dst[b].d = f32_to_f16(absmax / 127.0f);
    const float d = f16_to_f32(dst[b].d);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < 32; ++j) {
      dst[b].qs[j] = int8_t(std::clamp(std::lround(x[j] * id), -127L, 127L));
    }
  }
}

bool convert_q4_0_to_q4_1(BlockQ4_1* dst, const BlockQ4_0* src, int64_t n_blocks) {
  for (int64_t b = 0; b < n_blocks; ++b) {
    const float m = -8.0f * f16_to_f32(src[b].d);
    const uint16_t m16 = f32_to_f16(m);
    if (f16_to_f32(m16) != m) return false;
    dst[b].d = src[b].d;
    dst[b].m = m16;
    std::copy(src[b].qs, src[b].qs + 16, dst[b].qs);
  }
  return true;
}

void dequantize_block_row(float* dst, const void* w, BlockType type, int64_t n, int64_t N, int64_t K) {
  // Straight from the tiles (prefill dequantizes every row of a weight this way): row n's words of block b are
  // 4 R bytes apart; two at a time, widened and converted in registers.
  const int64_t nb = K / kGgufBlock32, words = tile_words(type);
  for (int64_t b = 0; b < nb; ++b) {
    const TilePlace at = tile_place(w, type, n, b, N, K);
    uint16_t d16, m16 = 0;
    std::memcpy(&d16, at.tile + 4 * words * at.rows + 2 * at.k, 2);
    if (type != BlockType::kQ8_0) std::memcpy(&m16, at.tile + (4 * words + 2) * at.rows + 2 * at.k, 2);
    const __m256 d = _mm256_set1_ps(f16_to_f32(d16)), m = _mm256_set1_ps(f16_to_f32(m16));
    for (int64_t r = 0; r < words; r += 2) {
      uint32_t w0, w1;
      std::memcpy(&w0, at.tile + 4 * (r * at.rows + at.k), 4);
      std::memcpy(&w1, at.tile + 4 * ((r + 1) * at.rows + at.k), 4);
      const __m128i pair = _mm_set_epi32(0, 0, int(w1), int(w0));
      float* out = dst + b * 32 + (type == BlockType::kQ4_1 ? 8 : 4) * r;
      if (type == BlockType::kQ4_1) {   // elements 8r .. 8r + 15
        const __m256i v = _mm256_cvtepu8_epi32(pair);
        // lo: lanes 0..3 elements 8r + 0..3, lanes 4..7 8r + 8..11; hi: 8r + 4..7 and 8r + 12..15.
        const __m256 lo = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(0x0f))), m);
        const __m256 hi = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4)), m);
        _mm256_storeu_ps(out, _mm256_permute2f128_ps(lo, hi, 0x20));
        _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
      } else {   // elements 4r .. 4r + 7
        const __m256i v = type == BlockType::kU8Min ? _mm256_cvtepu8_epi32(pair) : _mm256_cvtepi8_epi32(pair);
        _mm256_storeu_ps(out, _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(v), m));
      }
    }
  }
}

void gemv_blocks_reference(float* out, const float* x, const void* w, BlockType type, int64_t T, int64_t N,
                           int64_t K) {
  const int64_t nb = K / kGgufBlock32;
  const auto* blocks = static_cast<const uint8_t*>(w);
  const size_t bytes = block_type_bytes(type);
  for (int64_t t = 0; t < T; ++t) {
    const float* xt = x + t * K;
    for (int64_t n = 0; n < N; ++n) {
      float acc = 0;
      for (int64_t b = 0; b < nb; ++b) {
        const void* block = blocks + size_t(n * nb + b) * bytes;
        float dot = 0, sum = 0, d = 0, m = 0;
        const float* xb = xt + b * 32;
        if (type == BlockType::kQ4_1) {
          const auto& blk = *static_cast<const BlockQ4_1*>(block);
          d = f16_to_f32(blk.d), m = f16_to_f32(blk.m);
          for (int j = 0; j < 32; ++j) dot += float(q4_1_element(blk, j)) * xb[j], sum += xb[j];
        } else if (type == BlockType::kU8Min) {
          const auto& blk = *static_cast<const BlockU8Min*>(block);
          d = f16_to_f32(blk.d), m = f16_to_f32(blk.m);
          for (int j = 0; j < 32; ++j) dot += float(blk.qs[j]) * xb[j], sum += xb[j];
        } else {
          const auto& blk = *static_cast<const BlockQ8_0*>(block);
          d = f16_to_f32(blk.d);
          for (int j = 0; j < 32; ++j) dot += float(blk.qs[j]) * xb[j];
        }
        acc += d * dot + m * sum;
      }
      out[t * N + n] = acc;
    }
  }
}

void gemv_blocks(float* out, const float* x, const void* w, BlockType type, int64_t T, int64_t N, int64_t K) {
  QS_CHECK(K % kGgufBlock32 == 0, ErrorCode::kInternal, "gemv_blocks: K = ", K, " is not a multiple of 32");
  static const bool avx512 = gemv_avx512_available();
  for (int64_t t0 = 0; t0 < T; t0 += kBlockGemvMaxRows) {
    const int64_t rows = std::min(kBlockGemvMaxRows, T - t0);
    if (avx512) {
      gemv_blocks_avx512(out + t0 * N, x + t0 * K, w, type, rows, N, K);
    } else {
      gemv_blocks_avx2(out + t0 * N, x + t0 * K, w, type, rows, N, K);
    }
  }
}

}  // namespace qs::cpu
