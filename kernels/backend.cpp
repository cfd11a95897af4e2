// Backend helpers shared by every implementation.
#include "kernels/backend.h"

#include "kernels/error.h"

namespace qs {

Tensor Tensor::slice_rows(int64_t first, int64_t count) const {
  QS_CHECK(first >= 0 && count >= 0 && first + count <= rows, ErrorCode::kInternal, "row slice [", first, ", ",
           first + count, ") outside a tensor of ", rows, " rows");
  Tensor t = *this;
  t.data = static_cast<char*>(data) + dtype_bytes(dtype, first * cols);
  t.rows = count;
  return t;
}

Tensor Backend::new_tensor(std::unique_ptr<DeviceBuffer>& holder, int64_t rows, int64_t cols) {
  const DType dt = activation_dtype();
  const size_t need = dtype_bytes(dt, rows * cols);
  if (!holder || holder->bytes() < need) holder = allocate(need);
  return Tensor{holder->data(), rows, cols, dt};
}

const char* backend_op_name(BackendOp op) {
  switch (op) {
    case BackendOp::kGeluTanhGate: return "the gelu-tanh gated MLP (GeGLU)";
    case BackendOp::kHeadRmsNorm: return "per-head RMSNorm of q and k (QK-norm)";
    case BackendOp::kScale: return "scaling the embeddings";
    case BackendOp::kSlidingWindowAttention: return "sliding-window attention";
  }
  return "?";
}

void Backend::gated_activation(Tensor out, Tensor gate_up, Activation act) {
  QS_CHECK(act == Activation::kSilu, ErrorCode::kUnsupported, "the ", name(), " backend has no kernel for ",
           backend_op_name(BackendOp::kGeluTanhGate));
  silu_mul(out, gate_up);
}

void Backend::head_rmsnorm(Tensor, const DenseWeight&, const DenseWeight&, int64_t, int64_t, int64_t, float) {
  QS_FAIL(ErrorCode::kUnsupported, "the ", name(), " backend has no kernel for ", backend_op_name(BackendOp::kHeadRmsNorm));
}

void Backend::scale(Tensor, float) {
  QS_FAIL(ErrorCode::kUnsupported, "the ", name(), " backend has no kernel for ", backend_op_name(BackendOp::kScale));
}

void Backend::attention_window(Tensor out, Tensor qkv, KvCache& cache, int64_t layer, int64_t num_heads,
                               int64_t num_kv_heads, int64_t head_dim, int64_t window) {
  QS_CHECK(window <= 0, ErrorCode::kUnsupported, "the ", name(), " backend has no kernel for ",
           backend_op_name(BackendOp::kSlidingWindowAttention));
  attention(out, qkv, cache, layer, num_heads, num_kv_heads, head_dim);
}

}  // namespace qs
