// Precision names and the quantization-error measurement every backend reports at load.
#include "kernels/precision.h"

#include <algorithm>
#include <cmath>

namespace qs {

namespace {
struct PrecisionName {
  Precision precision;
  const char* name;
};
constexpr PrecisionName kPrecisionNames[] = {
    {Precision::kFp32, "fp32"},
    {Precision::kFp16, "fp16"},
    {Precision::kBf16, "bf16"},
    {Precision::kInt8, "int8"},
    {Precision::kInt8WeightOnly, "int8-weight-only"},
    {Precision::kInt8Naive, "int8-naive"},
    {Precision::kInt8Mixed, "int8-mixed"},
    {Precision::kInt8Smooth, "int8-smooth"},
    {Precision::kInt4WeightOnly, "int4-weight-only"},
};
}  // namespace

bool has_weight_groups(Precision p) {
  return p == Precision::kInt8WeightOnly || p == Precision::kInt8 || p == Precision::kInt8Smooth;
}

const char* precision_name(Precision p) {
  for (const auto& entry : kPrecisionNames) {
    if (entry.precision == p) return entry.name;
  }
  return "?";
}

std::optional<Precision> parse_precision(std::string_view name) {
  for (const auto& entry : kPrecisionNames) {
    if (name == entry.name) return entry.precision;
  }
  if (name == "w8a8") return Precision::kInt8;
  if (name == "w8a16" || name == "int8-weight") return Precision::kInt8WeightOnly;
  if (name == "w4a16" || name == "int4") return Precision::kInt4WeightOnly;
  return std::nullopt;
}

std::vector<Precision> all_precisions() {
  std::vector<Precision> out;
  for (const auto& entry : kPrecisionNames) out.push_back(entry.precision);
  return out;
}

std::string precision_list() {
  std::string out;
  for (const auto& entry : kPrecisionNames) {
    if (!out.empty()) out += ", ";
    out += entry.name;
  }
  return out;
}

QuantError measure_quant_error(const float* original, const float* dequantized, int64_t n) {
  QuantError e;
  if (n == 0) return e;
  std::vector<float> abs_err(static_cast<size_t>(n));
  double sum = 0, sq_err = 0, sq_ref = 0, max_abs = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = double(dequantized[i]) - double(original[i]);
    const double a = std::fabs(d);
    abs_err[size_t(i)] = float(a);
    sum += a;
    max_abs = std::max(max_abs, a);
    sq_err += d * d;
    sq_ref += double(original[i]) * double(original[i]);
  }
  auto mid = abs_err.begin() + n / 2;
  std::nth_element(abs_err.begin(), mid, abs_err.end());
  e.max_abs = max_abs;
  e.mean_abs = sum / double(n);
  e.median_abs = *mid;
  e.rel_frobenius = sq_ref > 0 ? std::sqrt(sq_err / sq_ref) : std::sqrt(sq_err);
  return e;
}

}  // namespace qs
