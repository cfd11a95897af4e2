// Precisions a model can be loaded in, their names, and the per-tensor quantization error they report.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace qs {

enum class Precision {
  kFp32,            // reference
  kFp16,            // weights stored fp16
  kBf16,            // weights stored bf16
  kInt8,            // W8A8: int8 weights and activations, int8 GEMM; per row and token, or by groups of 32
  kInt8WeightOnly,  // W8A16/W8A32: int8 weights dequantized inside the GEMM
  kInt8Naive,       // per-tensor asymmetric uint8 with zero point (textbook baseline)
  kInt8Mixed,       // LLM.int8(): outlier activation columns in float, the rest W8A8
  kInt8Smooth,      // SmoothQuant: smoothing folded into the preceding norm, then W8A8
  kInt4WeightOnly,  // W4A16/W4A32: Q4_1-style blocks of 32 (fp16 d and m), GGUF Q4 blocks kept as they are
};

const char* precision_name(Precision p);                       // "fp32", "int8-weight-only", ...
std::optional<Precision> parse_precision(std::string_view name);
std::vector<Precision> all_precisions();
std::string precision_list();                                  // "fp32, fp16, ..." for error messages
// The precisions --group-size applies to: int8-weight-only, and W8A8 (int8, int8-smooth), whose activations are
// then quantized by groups too (a backend says which it has kernels for: Backend::supports_weight_groups).
bool has_weight_groups(Precision p);

// Error of a quantized tensor against its float original (dequantized, element by element).
struct QuantError {
  double max_abs = 0;
  double mean_abs = 0;
  double median_abs = 0;
  double rel_frobenius = 0;   // ||W - Q(W)||_F / ||W||_F
};

// Computes QuantError between `original` and `dequantized` (n elements each).
QuantError measure_quant_error(const float* original, const float* dequantized, int64_t n);

}  // namespace qs
