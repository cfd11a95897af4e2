// int4-weight-only and group-wise int8-weight-only on the CPU: the Q4_1 and Q8_0 quantizers, the reference block GEMV the fast ones are tested against,
// and the dispatch between the AVX-512 and AVX2 kernels (gemv_blocks_avx512.cpp, gemv_blocks_avx2.cpp).
#include "kernels/cpu/gemv_blocks.h"

#include <algorithm>
#include <cmath>

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

Q4_1Split q4_1_split(const void* w, int64_t n_blocks) {
  const auto* base = static_cast<const uint8_t*>(w);
  const auto* d = reinterpret_cast<const uint16_t*>(base + n_blocks * 16);
  return {base, d, d + n_blocks};
}

void split_q4_1(uint8_t* dst, const BlockQ4_1* src, int64_t n_blocks) {
  auto* d = reinterpret_cast<uint16_t*>(dst + n_blocks * 16);
  uint16_t* m = d + n_blocks;
  for (int64_t b = 0; b < n_blocks; ++b) {
    std::copy(src[b].qs, src[b].qs + 16, dst + b * 16);
    d[b] = src[b].d;
    m[b] = src[b].m;
  }
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
    const Q4_1Split q = q4_1_split(w, N * nb);
    for (int64_t b = n * nb; b < (n + 1) * nb; ++b) {
      const float d = f16_to_f32(q.d[b]), m = f16_to_f32(q.m[b]);
      const uint8_t* qs = q.qs + b * 16;
      float* out = dst + (b - n * nb) * 32;
      for (int j = 0; j < 16; ++j) {
        out[j] = d * float(qs[j] & 0x0f) + m;
        out[j + 16] = d * float(qs[j] >> 4) + m;
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
  const Q4_1Split q4 = q4_1_split(w, N * nb);
  for (int64_t t = 0; t < T; ++t) {
    const float* xt = x + t * K;
    for (int64_t n = 0; n < N; ++n) {
      float acc = 0;
      for (int64_t b = 0; b < nb; ++b) {
        float dot = 0, sum = 0, d = 0, m = 0;
        const float* xb = xt + b * 32;
        if (type == BlockType::kQ4_1) {
          d = f16_to_f32(q4.d[n * nb + b]), m = f16_to_f32(q4.m[n * nb + b]);
          const uint8_t* qs = q4.qs + (n * nb + b) * 16;
          for (int j = 0; j < 16; ++j) {
            dot += float(qs[j] & 0x0f) * xb[j] + float(qs[j] >> 4) * xb[j + 16];
            sum += xb[j] + xb[j + 16];
          }
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
  static const bool avx512 = gemv_avx512_available(), bf16 = gemv_bf16_available();
  if (T == 1 && type == BlockType::kQ4_1 && bf16) return gemv_q4_1_bf16(out, x, w, N, K);
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
