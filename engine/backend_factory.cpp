// Picks a backend from a device string; the only place that knows whether this build has CUDA.
#include <string>

#include "kernels/backend.h"
#include "kernels/error.h"

namespace qs {

#ifndef QUANTSERVE_HAVE_CUDA
std::unique_ptr<Backend> make_cuda_backend(int) {
  QS_FAIL(ErrorCode::kUnsupported, "this quantserve was built without CUDA (configure with QUANTSERVE_CUDA=ON "
          "where nvcc is installed)");
}
bool cuda_available() { return false; }
#endif

std::unique_ptr<Backend> make_backend(const std::string& device) {
  if (device == "cpu") return make_cpu_backend();
  if (device == "auto") return cuda_available() ? make_cuda_backend(0) : make_cpu_backend();
  if (device == "cuda") return make_cuda_backend(0);
  if (device.rfind("cuda:", 0) == 0) {
    int index = -1;
    try {
      index = std::stoi(device.substr(5));
    } catch (const std::exception&) {
    }
    QS_CHECK(index >= 0, ErrorCode::kInvalidArgument, "bad device '", device, "': expected cuda:N");
    return make_cuda_backend(index);
  }
  QS_FAIL(ErrorCode::kInvalidArgument, "unknown device '", device, "': expected cpu, cuda, cuda:N or auto");
}

}  // namespace qs
