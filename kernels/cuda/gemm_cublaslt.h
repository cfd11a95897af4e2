// The one cuBLASLt GEMM wrapper: row-major Y = X W^T in fp32 / fp16 / bf16 / int8, plans cached per shape.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <tuple>

#include "kernels/backend.h"

namespace qs::cuda {

enum class GemmType { kF32, kF16, kBF16, kInt8 };

// Y[T, N] (row-major, row stride ldy) = X[T, K] (row stride ldx) . W[N, K]^T (row stride ldw)
//   float types: X, W in the GemmType, Y fp32, fp32 accumulate; int8: X, W int8, Y int32, int32 accumulate.
// The bias (fp32 [N]) and activation are fused through a cuBLASLt epilogue where one exists (BIAS, GELU_BIAS
// for GELU-tanh, RELU_BIAS); otherwise the caller applies them. Not thread-safe: one per backend and stream.
class CublasLtGemm {
 public:
  CublasLtGemm(cudaStream_t stream, void* workspace, size_t workspace_bytes);
  ~CublasLtGemm();
  CublasLtGemm(const CublasLtGemm&) = delete;
  CublasLtGemm& operator=(const CublasLtGemm&) = delete;

  struct Result {
    bool ran = false;              // false: cuBLASLt has no algorithm for this problem; nothing was launched
    bool epilogue_applied = false; // true: bias and activation are already in y
  };
  Result matmul(GemmType type, void* y, const void* x, const void* w, const float* bias, Activation act, int64_t T,
                int64_t N, int64_t K, int64_t ldx, int64_t ldw, int64_t ldy);

 private:
  struct Key {
    GemmType type;
    int64_t T, N, K, ldx, ldw, ldy;
    int epilogue;
    uint32_t align_x, align_w, align_y, align_bias;
    auto tie() const { return std::tie(type, T, N, K, ldx, ldw, ldy, epilogue, align_x, align_w, align_y, align_bias); }
    bool operator<(const Key& o) const { return tie() < o.tie(); }
  };
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t w_layout = nullptr, x_layout = nullptr, y_layout = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool valid = false;
  };
  Plan& plan_for(const Key& key);
  void destroy(Plan& plan);

  cudaStream_t stream_;
  void* workspace_;
  size_t workspace_bytes_;
  cublasLtHandle_t handle_ = nullptr;
  std::map<Key, Plan> plans_;  // heuristic results per shape; T varies per pass, so this grows with batch shapes
};

}  // namespace qs::cuda
