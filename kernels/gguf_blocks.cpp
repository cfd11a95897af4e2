// GGUF block dequantization (see gguf_blocks.h). Each loop computes in the order gguf.quants does, one rounding
// per float operation (this file is compiled with -ffp-contract=off: a fused multiply-add would round once and
// differ in the last bit), so the results are the reference's bit for bit.
#include "kernels/gguf_blocks.h"

#include <cmath>
#include <cstddef>
#include <cstring>

#include "kernels/error.h"

namespace qs {

namespace {

// Q4_K / Q5_K pack 8 six-bit scales and 8 six-bit mins in 12 bytes:
//   bytes 0-3: scales 0-3 (low 6 bits), top 2 bits = high bits of scales 4-7
//   bytes 4-7: mins 0-3 (low 6 bits),   top 2 bits = high bits of mins 4-7
//   bytes 8-11: low 4 bits of scales 4-7, high 4 bits: low 4 bits of mins 4-7
void unpack_k_scales(const uint8_t* s, uint8_t* sc, uint8_t* mn) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = s[j] & 0x3f;
    mn[j] = s[j + 4] & 0x3f;
    sc[j + 4] = uint8_t((s[j + 8] & 0x0f) | ((s[j] >> 2) & 0x30));
    mn[j + 4] = uint8_t((s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30));
  }
}

// Q5_0 / Q5_1: element j (< 16) is the low nibble of qs[j], element j + 16 the high one; bit j / j + 16 of qh is
// their fifth bit. x = d (q - 16) for Q5_0, d q + m for Q5_1.
void dequantize_q5(float* y, uint16_t d_half, const uint8_t* qh_bytes, const uint8_t* qs, int offset,
                   const uint16_t* m_half) {
  const float d = f16_to_f32(d_half);
  const uint32_t qh = uint32_t(qh_bytes[0]) | uint32_t(qh_bytes[1]) << 8 | uint32_t(qh_bytes[2]) << 16 |
                      uint32_t(qh_bytes[3]) << 24;
  for (int j = 0; j < 16; ++j) {
    const int lo = ((qs[j] & 0x0f) | int((qh >> j) & 1) << 4) - offset;
    const int hi = ((qs[j] >> 4) | int((qh >> (j + 16)) & 1) << 4) - offset;
    if (m_half == nullptr) {
      y[j] = d * float(lo);
      y[j + 16] = d * float(hi);
    } else {
      const float m = f16_to_f32(*m_half);
      y[j] = d * float(lo) + m;
      y[j + 16] = d * float(hi) + m;
    }
  }
}
void dequantize_q5_0(float* y, const BlockQ5_0& b) { dequantize_q5(y, b.d, b.qh, b.qs, 16, nullptr); }
void dequantize_q5_1(float* y, const BlockQ5_1& b) { dequantize_q5(y, b.d, b.qh, b.qs, 0, &b.m); }

// Element e = 128 h + 32 s + l (h half, s shift 0..3, l < 32): 2 bits at shift 2s of qs[32 h + l]; scale e / 16.
void dequantize_q2_k(float* y, const BlockQ2_K& b) {
  const float d = f16_to_f32(b.d), dmin = f16_to_f32(b.dmin);
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, s = (e / 32) % 4, l = e % 32;
    const uint8_t sc = b.scales[e / 16];
    const float dl = d * float(sc & 0x0f), ml = dmin * float(sc >> 4);
    y[e] = dl * float((b.qs[32 * h + l] >> (2 * s)) & 3) - ml;
  }
}

// As Q2_K for the low 2 bits; bit (4 h + s) of hmask[l] CLEAR means "subtract 4". 6-bit scales, offset 32:
// scale i = low 4 bits of scales[i % 8] (nibble i / 8) | 2 bits of scales[8 + i % 4] (pair i / 4) << 4.
void dequantize_q3_k(float* y, const BlockQ3_K& b) {
  const float d = f16_to_f32(b.d);
  float dl[16];
  for (int i = 0; i < 16; ++i) {
    const int lo = (b.scales[i % 8] >> (4 * (i / 8))) & 0x0f;
    const int hi = (b.scales[8 + i % 4] >> (2 * (i / 4))) & 0x03;
    dl[i] = d * float(int8_t(uint8_t(lo | hi << 4)) - 32);
  }
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, s = (e / 32) % 4, l = e % 32;
    const int low = (b.qs[32 * h + l] >> (2 * s)) & 3;
    const int minus4 = ((b.hmask[l] >> (4 * h + s)) & 1) ? 0 : 4;
    y[e] = dl[e / 16] * float(low - minus4);
  }
}

// Q4_K / Q5_K: element e = 64 c + 32 k + l is nibble k of qs[32 c + l] (sub-block j = e / 32 = 2c + k), plus for
// Q5_K a fifth bit, bit j of qh[l]; x = (d sc_j) q - (dmin m_j).
void dequantize_k_nibbles(float* y, uint16_t d_half, uint16_t dmin_half, const uint8_t* scales, const uint8_t* qs,
                          const uint8_t* qh) {
  const float d = f16_to_f32(d_half), dmin = f16_to_f32(dmin_half);
  uint8_t sc[8], mn[8];
  unpack_k_scales(scales, sc, mn);
  for (int e = 0; e < 256; ++e) {
    const int j = e / 32, c = e / 64, k = j % 2, l = e % 32;
    const float dl = d * float(sc[j]), ml = dmin * float(mn[j]);
    const int high = qh != nullptr ? ((qh[l] >> j) & 1) << 4 : 0;
    y[e] = dl * float(((qs[32 * c + l] >> (4 * k)) & 0x0f) | high) - ml;
  }
}
void dequantize_q4_k(float* y, const BlockQ4_K& b) { dequantize_k_nibbles(y, b.d, b.dmin, b.scales, b.qs, nullptr); }
void dequantize_q5_k(float* y, const BlockQ5_K& b) { dequantize_k_nibbles(y, b.d, b.dmin, b.scales, b.qs, b.qh); }

// Element e = 128 h + 64 k + m (m < 64): nibble k of ql[64 h + m]; its high 2 bits at shift 2 (e % 128 / 32)
// of qh[32 h + e % 32]; scale e / 16.
void dequantize_q6_k(float* y, const BlockQ6_K& b) {
  const float d = f16_to_f32(b.d);
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, k = (e % 128) / 64, m = e % 64, s = (e % 128) / 32, l = e % 32;
    const int q = ((b.ql[64 * h + m] >> (4 * k)) & 0x0f) | ((b.qh[32 * h + l] >> (2 * s)) & 3) << 4;
    const float dl = d * float(b.scales[e / 16]);
    y[e] = dl * float(q - 32);
  }
}

void dequantize_q8_k(float* y, const BlockQ8_K& b) {
  for (int e = 0; e < 256; ++e) y[e] = b.d * float(b.qs[e]);
}

template <class Block, class Fn>
void for_blocks(float* dst, const void* src, int64_t n, int64_t per_block, Fn dequantize_block) {
  const auto* b = static_cast<const Block*>(src);
  for (int64_t i = 0; i < n / per_block; ++i) dequantize_block(dst + i * per_block, b[i]);
}

bool finite_half(uint16_t h) { return (h & 0x7c00) != 0x7c00; }

}  // namespace

bool is_gguf_block_type(DType t) { return gguf_block_elements(t) > 1; }

int64_t gguf_block_elements(DType t) {
  switch (t) {
    case DType::Q8_0: case DType::Q4_0: case DType::Q4_1: case DType::Q5_0: case DType::Q5_1: return kGgufBlock32;
    case DType::Q2_K: case DType::Q3_K: case DType::Q4_K: case DType::Q5_K: case DType::Q6_K: case DType::Q8_K:
      return kGgufBlockK;
    default: return 1;
  }
}

size_t gguf_block_bytes(DType t) {
  switch (t) {
    case DType::Q8_0: return sizeof(BlockQ8_0);
    case DType::Q4_0: return sizeof(BlockQ4_0);
    case DType::Q4_1: return sizeof(BlockQ4_1);
    case DType::Q5_0: return sizeof(BlockQ5_0);
    case DType::Q5_1: return sizeof(BlockQ5_1);
    case DType::Q2_K: return sizeof(BlockQ2_K);
    case DType::Q3_K: return sizeof(BlockQ3_K);
    case DType::Q4_K: return sizeof(BlockQ4_K);
    case DType::Q5_K: return sizeof(BlockQ5_K);
    case DType::Q6_K: return sizeof(BlockQ6_K);
    case DType::Q8_K: return sizeof(BlockQ8_K);
    default: return 0;
  }
}

void dequantize_gguf_blocks(float* dst, const void* src, DType type, int64_t n) {
  const int64_t per_block = gguf_block_elements(type);
  QS_CHECK(per_block > 1 && n % per_block == 0, ErrorCode::kInternal, "dequantize_gguf_blocks: ", n, " elements of ",
           dtype_name(type), " are not whole blocks");
  switch (type) {
    case DType::Q8_0:
      return for_blocks<BlockQ8_0>(dst, src, n, per_block, [](float* y, const BlockQ8_0& b) {
        const float d = f16_to_f32(b.d);
        for (int j = 0; j < 32; ++j) y[j] = d * float(b.qs[j]);
      });
    case DType::Q4_0:
      return for_blocks<BlockQ4_0>(dst, src, n, per_block, [](float* y, const BlockQ4_0& b) {
        const float d = f16_to_f32(b.d);
        for (int j = 0; j < 16; ++j) {
          y[j] = d * float(int(b.qs[j] & 0x0f) - 8);
          y[j + 16] = d * float(int(b.qs[j] >> 4) - 8);
        }
      });
    case DType::Q4_1:
      return for_blocks<BlockQ4_1>(dst, src, n, per_block, [](float* y, const BlockQ4_1& b) {
        const float d = f16_to_f32(b.d), m = f16_to_f32(b.m);
        for (int j = 0; j < 16; ++j) {
          y[j] = d * float(b.qs[j] & 0x0f) + m;
          y[j + 16] = d * float(b.qs[j] >> 4) + m;
        }
      });
    case DType::Q5_0: return for_blocks<BlockQ5_0>(dst, src, n, per_block, dequantize_q5_0);
    case DType::Q5_1: return for_blocks<BlockQ5_1>(dst, src, n, per_block, dequantize_q5_1);
    case DType::Q2_K: return for_blocks<BlockQ2_K>(dst, src, n, per_block, dequantize_q2_k);
    case DType::Q3_K: return for_blocks<BlockQ3_K>(dst, src, n, per_block, dequantize_q3_k);
    case DType::Q4_K: return for_blocks<BlockQ4_K>(dst, src, n, per_block, dequantize_q4_k);
    case DType::Q5_K: return for_blocks<BlockQ5_K>(dst, src, n, per_block, dequantize_q5_k);
    case DType::Q6_K: return for_blocks<BlockQ6_K>(dst, src, n, per_block, dequantize_q6_k);
    case DType::Q8_K: return for_blocks<BlockQ8_K>(dst, src, n, per_block, dequantize_q8_k);
    default: QS_FAIL(ErrorCode::kInternal, "dequantize_gguf_blocks: ", dtype_name(type), " is not a block type");
  }
}

int64_t first_block_with_nonfinite_scale(const void* src, DType type, int64_t n_blocks) {
  const auto* bytes = static_cast<const uint8_t*>(src);
  const size_t size = gguf_block_bytes(type);
  for (int64_t i = 0; i < n_blocks; ++i) {
    const uint8_t* p = bytes + size_t(i) * size;
    auto half_at = [&](size_t offset) {
      uint16_t h;
      std::memcpy(&h, p + offset, 2);
      return finite_half(h);
    };
    bool ok = true;
    switch (type) {
      case DType::Q8_0: case DType::Q4_0: case DType::Q5_0: ok = half_at(0); break;
      case DType::Q4_1: case DType::Q5_1: case DType::Q4_K: case DType::Q5_K: ok = half_at(0) && half_at(2); break;
      case DType::Q2_K: ok = half_at(offsetof(BlockQ2_K, d)) && half_at(offsetof(BlockQ2_K, dmin)); break;
      case DType::Q3_K: ok = half_at(offsetof(BlockQ3_K, d)); break;
      case DType::Q6_K: ok = half_at(offsetof(BlockQ6_K, d)); break;
      case DType::Q8_K: {
        float d;
        std::memcpy(&d, p, 4);
        ok = std::isfinite(d);
        break;
      }
      default: return -1;
    }
    if (!ok) return i;
  }
  return -1;
}

}  // namespace qs
