// Element-type sizes and conversions, including the GGUF block formats (layouts as in ggml's ggml-common.h).
#include "kernels/dtype.h"

#include "kernels/error.h"

namespace qs {

namespace {
constexpr int64_t kGgufBlock = 32;
struct BlockQ8_0 { uint16_t d; int8_t qs[32]; };
struct BlockQ4_0 { uint16_t d; uint8_t qs[16]; };
struct BlockQ4_1 { uint16_t d; uint16_t m; uint8_t qs[16]; };
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20);
}  // namespace

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I8: return "I8";
    case DType::U8: return "U8";
    case DType::I32: return "I32";
    case DType::Q8_0: return "Q8_0";
    case DType::Q4_0: return "Q4_0";
    case DType::Q4_1: return "Q4_1";
  }
  return "?";
}

int64_t dtype_block_size(DType t) {
  return (t == DType::Q8_0 || t == DType::Q4_0 || t == DType::Q4_1) ? kGgufBlock : 1;
}

size_t dtype_bytes(DType t, int64_t n) {
  switch (t) {
    case DType::F32: case DType::I32: return size_t(n) * 4;
    case DType::F16: case DType::BF16: return size_t(n) * 2;
    case DType::I8: case DType::U8: return size_t(n);
    case DType::Q8_0: return size_t(n / kGgufBlock) * sizeof(BlockQ8_0);
    case DType::Q4_0: return size_t(n / kGgufBlock) * sizeof(BlockQ4_0);
    case DType::Q4_1: return size_t(n / kGgufBlock) * sizeof(BlockQ4_1);
  }
  return 0;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) { mant <<= 1; --exp; }
      mant &= 0x3ff;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_f16(float f) {  // round to nearest even; overflow saturates to inf as IEEE does
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000;
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return uint16_t(sign | 0x7e00);        // NaN
  if (x >= 0x477ff000u) return uint16_t(sign | 0x7c00);       // >= 65520 rounds to inf
  if (x < 0x38800000u) {                                      // subnormal or zero in f16
    if (x < 0x33000000u) return uint16_t(sign);
    const uint32_t e = x >> 23;
    uint32_t m = (x & 0x7fffff) | 0x800000;
    const uint32_t shift = 126 - e;                           // 14 + (113 - e)
    uint32_t half = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) ++half;
    return uint16_t(sign | half);
  }
  uint32_t h = ((x >> 13) - ((127 - 15) << 10));
  const uint32_t rem = x & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;
  return uint16_t(sign | h);
}

void convert_to_f32(float* dst, const void* src, DType src_type, int64_t n) {
  switch (src_type) {
    case DType::F32:
      std::memcpy(dst, src, size_t(n) * 4);
      return;
    case DType::F16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case DType::BF16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::Q8_0: {
      const auto* b = static_cast<const BlockQ8_0*>(src);
      for (int64_t i = 0; i < n / kGgufBlock; ++i) {
        const float d = f16_to_f32(b[i].d);
        for (int j = 0; j < 32; ++j) dst[i * 32 + j] = d * float(b[i].qs[j]);
      }
      return;
    }
    case DType::Q4_0: {
      const auto* b = static_cast<const BlockQ4_0*>(src);
      for (int64_t i = 0; i < n / kGgufBlock; ++i) {
        const float d = f16_to_f32(b[i].d);
        for (int j = 0; j < 16; ++j) {
          dst[i * 32 + j] = d * float(int(b[i].qs[j] & 0x0f) - 8);
          dst[i * 32 + j + 16] = d * float(int(b[i].qs[j] >> 4) - 8);
        }
      }
      return;
    }
    case DType::Q4_1: {
      const auto* b = static_cast<const BlockQ4_1*>(src);
      for (int64_t i = 0; i < n / kGgufBlock; ++i) {
        const float d = f16_to_f32(b[i].d);
        const float m = f16_to_f32(b[i].m);
        for (int j = 0; j < 16; ++j) {
          dst[i * 32 + j] = d * float(b[i].qs[j] & 0x0f) + m;
          dst[i * 32 + j + 16] = d * float(b[i].qs[j] >> 4) + m;
        }
      }
      return;
    }
    default:
      QS_FAIL(ErrorCode::kUnsupported, "cannot convert ", dtype_name(src_type), " to F32");
  }
}

}  // namespace qs
