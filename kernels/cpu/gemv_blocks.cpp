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

// Byte i of word r holds elements 8r + i (low nibble) and 8r + 4 + i (high); GGUF's byte j holds elements j (low)
// and j + 16 (high).
int gguf_element(const BlockQ4_1& blk, int j) { return j < 16 ? blk.qs[j] & 0x0f : blk.qs[j - 16] >> 4; }
void set_gguf_element(BlockQ4_1& blk, int j, int q) {
  uint8_t& byte = blk.qs[j % 16];
  byte = j < 16 ? uint8_t((byte & 0xf0) | q) : uint8_t((byte & 0x0f) | (q << 4));
}

}  // namespace

void tile_q4_1(uint8_t* dst, const BlockQ4_1* src, int64_t N, int64_t K) {
  const int64_t nb = K / kGgufBlock32;
  for (int64_t g = 0; g * kQ4_1TileRows < N; ++g) {
    const int64_t rows = q4_1_tile_rows(g, N);
    uint8_t* group = dst + (q4_1_tile_group(dst, g, K) - dst);
    for (int64_t b = 0; b < nb; ++b) {
      uint8_t* tile = group + b * rows * int64_t(sizeof(BlockQ4_1));
      auto* d = reinterpret_cast<uint16_t*>(tile + 16 * rows);
      uint16_t* m = d + rows;
      for (int64_t k = 0; k < rows; ++k) {
        const BlockQ4_1& blk = src[(g * kQ4_1TileRows + k) * nb + b];
        for (int r = 0; r < 4; ++r) {
          for (int i = 0; i < 4; ++i) {
            tile[4 * (r * rows + k) + i] =
                uint8_t(gguf_element(blk, 8 * r + i) | (gguf_element(blk, 8 * r + 4 + i) << 4));
          }
        }
        d[k] = blk.d;
        m[k] = blk.m;
      }
    }
  }
}

BlockQ4_1 q4_1_tile_block(const void* w, int64_t n, int64_t b, int64_t N, int64_t K) {
  const int64_t g = n / kQ4_1TileRows, k = n % kQ4_1TileRows, rows = q4_1_tile_rows(g, N);
  const uint8_t* tile = q4_1_tile_group(w, g, K) + b * rows * int64_t(sizeof(BlockQ4_1));
  BlockQ4_1 blk{};
  std::memcpy(&blk.d, tile + 16 * rows + 2 * k, 2);
  std::memcpy(&blk.m, tile + 18 * rows + 2 * k, 2);
  for (int r = 0; r < 4; ++r) {
    for (int i = 0; i < 4; ++i) {
      const uint8_t byte = tile[4 * (r * rows + k) + i];
      set_gguf_element(blk, 8 * r + i, byte & 0x0f);
      set_gguf_element(blk, 8 * r + 4 + i, byte >> 4);
    }
  }
  return blk;
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
  const int64_t nb = K / kGgufBlock32;
  if (type == BlockType::kQ4_1) {
    // Straight from the tiles (prefill dequantizes every row of a weight this way): row n's bytes of block b are
    // four words 4 R bytes apart.
    const int64_t g = n / kQ4_1TileRows, k = n % kQ4_1TileRows, rows = q4_1_tile_rows(g, N);
    const uint8_t* group = q4_1_tile_group(w, g, K);
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* tile = group + b * rows * int64_t(sizeof(BlockQ4_1));
      uint16_t d16, m16;
      std::memcpy(&d16, tile + 16 * rows + 2 * k, 2);
      std::memcpy(&m16, tile + 18 * rows + 2 * k, 2);
      const __m256 d = _mm256_set1_ps(f16_to_f32(d16)), m = _mm256_set1_ps(f16_to_f32(m16));
      for (int r = 0; r < 4; r += 2) {   // words r and r + 1: elements 8r .. 8r + 15
        uint32_t w0, w1;
        std::memcpy(&w0, tile + 4 * (r * rows + k), 4);
        std::memcpy(&w1, tile + 4 * ((r + 1) * rows + k), 4);
        const __m256i v = _mm256_cvtepu8_epi32(_mm_set_epi32(0, 0, int(w1), int(w0)));
        // lo: lanes 0..3 elements 8r + 0..3, lanes 4..7 8r + 8..11; hi: 8r + 4..7 and 8r + 12..15.
        const __m256 lo = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(0x0f))), m);
        const __m256 hi = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4)), m);
        float* out = dst + b * 32 + 8 * r;
        _mm256_storeu_ps(out, _mm256_permute2f128_ps(lo, hi, 0x20));
        _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
      }
    }
  } else if (type == BlockType::kU8Min) {
    const BlockU8Min* row = static_cast<const BlockU8Min*>(w) + n * nb;
    for (int64_t b = 0; b < nb; ++b) {
      const float d = f16_to_f32(row[b].d), m = f16_to_f32(row[b].m);
      for (int j = 0; j < 32; ++j) dst[b * 32 + j] = d * float(row[b].qs[j]) + m;
    }
  } else {
    const BlockQ8_0* row = static_cast<const BlockQ8_0*>(w) + n * nb;
    for (int64_t b = 0; b < nb; ++b) {
      const float d = f16_to_f32(row[b].d);
      for (int j = 0; j < 32; ++j) dst[b * 32 + j] = d * float(row[b].qs[j]);
    }
  }
}

void gemv_blocks_reference(float* out, const float* x, const void* w, BlockType type, int64_t T, int64_t N,
                           int64_t K) {
  const int64_t nb = K / kGgufBlock32;
  for (int64_t t = 0; t < T; ++t) {
    const float* xt = x + t * K;
    for (int64_t n = 0; n < N; ++n) {
      float acc = 0;
      for (int64_t b = 0; b < nb; ++b) {
        float dot = 0, sum = 0, d = 0, m = 0;
        const float* xb = xt + b * 32;
        if (type == BlockType::kQ4_1) {
          const BlockQ4_1 blk = q4_1_tile_block(w, n, b, N, K);
          d = f16_to_f32(blk.d), m = f16_to_f32(blk.m);
          for (int j = 0; j < 32; ++j) dot += float(gguf_element(blk, j)) * xb[j], sum += xb[j];
        } else if (type == BlockType::kU8Min) {
          const BlockU8Min& blk = static_cast<const BlockU8Min*>(w)[n * nb + b];
          d = f16_to_f32(blk.d), m = f16_to_f32(blk.m);
          for (int j = 0; j < 32; ++j) dot += float(blk.qs[j]) * xb[j], sum += xb[j];
        } else {
          const BlockQ8_0& blk = static_cast<const BlockQ8_0*>(w)[n * nb + b];
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
