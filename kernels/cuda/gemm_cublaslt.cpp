// cuBLASLt GEMMs for the CUDA backend: the row-major/column-major swap, epilogues and the per-shape plan cache.
#include "kernels/cuda/gemm_cublaslt.h"

#include "kernels/cuda/cuda_common.h"

#define QS_CUBLAS_CHECK(call)                                                                                  \
  do {                                                                                                         \
    const cublasStatus_t qs_cublas_status_ = (call);                                                           \
    if (qs_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                                            \
      ::qs::throw_error(::qs::ErrorCode::kInternal,                                                            \
                        ::qs::str("cuBLASLt error ", cublasLtGetStatusName(qs_cublas_status_), " (",          \
                                  cublasLtGetStatusString(qs_cublas_status_), ") in ", #call),                 \
                        __FILE__, __LINE__);                                                                   \
  } while (0)

namespace qs::cuda {

// T = tokens, N = out features, K = in features.
//
// The column-major swap, written once. cuBLASLt is column-major; our tensors are row-major, and a row-major
// R x C matrix with row stride ld is the same bytes as a column-major C x R matrix with leading dimension ld.
// So, in cuBLASLt's eyes:
//   X [T, K] row-major  = column-major [K, T], ld = ldx
//   W [N, K] row-major  = column-major [K, N], ld = ldw
//   Y [T, N] row-major  = column-major [N, T], ld = ldy
// and Y = X W^T is, transposed, Y^T = W X^T: a column-major D[N, T] = op(A)[N, K] . op(B)[K, T] with
//   A = W as stored ([K, N]) and transa = T, B = X as stored ([K, T]) and transb = N,  m = N, n = T, k = K.
// That is the "TN" form, the only one cuBLASLt's int8 (IMMA) kernels take with plain column-major layouts on
// Ampere and Hopper; it also needs m and k multiples of 4 and 16-byte aligned pointers, which is why the int8
// weights and activations are padded to kGemmPad (16) in K and N. The bias is per row of D, i.e. per output
// feature, which is what cuBLASLt's BIAS epilogue adds.

namespace {

struct TypeInfo {
  cudaDataType_t ab, d, scale;
  cublasComputeType_t compute;
};

TypeInfo type_info(GemmType t) {
  switch (t) {
    case GemmType::kF32: return {CUDA_R_32F, CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F};  // no TF32: exact fp32
    case GemmType::kF16: return {CUDA_R_16F, CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F};
    case GemmType::kBF16: return {CUDA_R_16BF, CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F};
    case GemmType::kInt8: return {CUDA_R_8I, CUDA_R_32I, CUDA_R_32I, CUBLAS_COMPUTE_32I};
  }
  return {CUDA_R_32F, CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F};
}

// The fused epilogue for (bias, activation), or DEFAULT when none fits (the caller then does both).
cublasLtEpilogue_t fused_epilogue(bool has_bias, Activation act) {
  switch (act) {
    case Activation::kNone: return has_bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    case Activation::kGeluTanh: return has_bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;  // tanh form
    case Activation::kRelu: return has_bias ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_RELU;
    default: return CUBLASLT_EPILOGUE_DEFAULT;  // GELU-erf, SiLU: applied by our own kernel
  }
}

}  // namespace

CublasLtGemm::CublasLtGemm(cudaStream_t stream, void* workspace, size_t workspace_bytes)
    : stream_(stream), workspace_(workspace), workspace_bytes_(workspace_bytes) {
  QS_CUBLAS_CHECK(cublasLtCreate(&handle_));
}

CublasLtGemm::~CublasLtGemm() {
  for (auto& [key, plan] : plans_) destroy(plan);
  if (handle_) cublasLtDestroy(handle_);
}

void CublasLtGemm::destroy(Plan& plan) {
  if (plan.desc) cublasLtMatmulDescDestroy(plan.desc);
  if (plan.w_layout) cublasLtMatrixLayoutDestroy(plan.w_layout);
  if (plan.x_layout) cublasLtMatrixLayoutDestroy(plan.x_layout);
  if (plan.y_layout) cublasLtMatrixLayoutDestroy(plan.y_layout);
  plan = Plan{};
}

CublasLtGemm::Plan& CublasLtGemm::plan_for(const Key& key) {
  auto found = plans_.find(key);
  if (found != plans_.end()) return found->second;
  Plan& plan = plans_[key];
  const TypeInfo ti = type_info(key.type);
  const auto epilogue = static_cast<cublasLtEpilogue_t>(key.epilogue);
  const cublasOperation_t transa = CUBLAS_OP_T, transb = CUBLAS_OP_N;  // "TN": see the comment at the top
  QS_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.desc, ti.compute, ti.scale));
  QS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &transa, sizeof(transa)));
  QS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &transb, sizeof(transb)));
  if (epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
    QS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                                   sizeof(epilogue)));
    const cudaDataType_t bias_type = CUDA_R_32F;  // our biases are fp32 whatever the weights are
    QS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                   sizeof(bias_type)));
  }
  QS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.w_layout, ti.ab, uint64_t(key.K), uint64_t(key.N), key.ldw));
  QS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.x_layout, ti.ab, uint64_t(key.K), uint64_t(key.T), key.ldx));
  QS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.y_layout, ti.d, uint64_t(key.N), uint64_t(key.T), key.ldy));

  cublasLtMatmulPreference_t pref = nullptr;
  QS_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = workspace_bytes_;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  // The heuristic assumes 256-byte aligned pointers unless told otherwise (row slices are not).
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &key.align_w,
                                       sizeof(key.align_w));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &key.align_x,
                                       sizeof(key.align_x));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &key.align_y,
                                       sizeof(key.align_y));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &key.align_y,
                                       sizeof(key.align_y));
  cublasLtMatmulHeuristicResult_t result{};
  int count = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(handle_, plan.desc, plan.w_layout, plan.x_layout,
                                                                plan.y_layout, plan.y_layout, pref, 1, &result, &count);
  cublasLtMatmulPreferenceDestroy(pref);
  if (status == CUBLAS_STATUS_SUCCESS && count > 0 && result.state == CUBLAS_STATUS_SUCCESS) {
    plan.algo = result.algo;
    plan.valid = true;
  }
  return plan;
}

CublasLtGemm::Result CublasLtGemm::matmul(GemmType type, void* y, const void* x, const void* w, const float* bias,
                                          Activation act, int64_t T, int64_t N, int64_t K, int64_t ldx,
                                          int64_t ldw, int64_t ldy) {
  Result r;
  if (T == 0 || N == 0) {
    r.ran = true;
    r.epilogue_applied = true;
    return r;
  }
  Key key{type, T, N, K, ldx, ldw, ldy, int(CUBLASLT_EPILOGUE_DEFAULT), pointer_alignment(x), pointer_alignment(w),
          pointer_alignment(y), bias ? pointer_alignment(bias) : 256u};
  Plan* plan = nullptr;
  if (type != GemmType::kInt8) {
    const cublasLtEpilogue_t fused = fused_epilogue(bias != nullptr, act);
    if (fused != CUBLASLT_EPILOGUE_DEFAULT && (!bias || pointer_alignment(bias) >= 16)) {
      key.epilogue = int(fused);
      plan = &plan_for(key);
      if (plan->valid) r.epilogue_applied = true;
      else plan = nullptr;  // no algorithm with this epilogue: plain GEMM, bias and activation by our kernel
    }
  }
  if (!plan) {
    key.epilogue = int(CUBLASLT_EPILOGUE_DEFAULT);
    plan = &plan_for(key);
    if (!plan->valid) return r;
  }
  if (r.epilogue_applied && bias)
    QS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                   sizeof(bias)));
  const float alpha_f = 1.0f, beta_f = 0.0f;
  const int32_t alpha_i = 1, beta_i = 0;
  const void* alpha = type == GemmType::kInt8 ? static_cast<const void*>(&alpha_i) : &alpha_f;
  const void* beta = type == GemmType::kInt8 ? static_cast<const void*>(&beta_i) : &beta_f;
  QS_CUBLAS_CHECK(cublasLtMatmul(handle_, plan->desc, alpha, w, plan->w_layout, x, plan->x_layout, beta, y,
                                 plan->y_layout, y, plan->y_layout, &plan->algo, workspace_, workspace_bytes_,
                                 stream_));
  r.ran = true;
  return r;
}

}  // namespace qs::cuda
