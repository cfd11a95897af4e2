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

}  // namespace qs
