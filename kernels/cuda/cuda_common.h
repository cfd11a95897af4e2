// Shared by the CUDA backend's files: error checks that throw qs::Error, and the small launch helpers.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

#include "kernels/error.h"

// QS_CUDA_CHECK(call): a failing CUDA runtime call throws kInternal with the call, file and line.
#define QS_CUDA_CHECK(call)                                                                              \
  do {                                                                                                   \
    const cudaError_t qs_cuda_status_ = (call);                                                          \
    if (qs_cuda_status_ != cudaSuccess)                                                                  \
      ::qs::throw_error(::qs::ErrorCode::kInternal,                                                      \
                        ::qs::str("CUDA error ", cudaGetErrorName(qs_cuda_status_), " (",               \
                                  cudaGetErrorString(qs_cuda_status_), ") in ", #call),                  \
                        __FILE__, __LINE__);                                                             \
  } while (0)

// Checks the last kernel launch (launch-configuration errors; execution errors surface at the next sync).
#define QS_CUDA_CHECK_LAUNCH() QS_CUDA_CHECK(cudaGetLastError())

namespace qs::cuda {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Largest power of two (up to 256) that divides the address: what cuBLASLt's alignment preferences want.
inline uint32_t pointer_alignment(const void* p) {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  uint32_t a = 256;
  while (a > 1 && (addr % a) != 0) a /= 2;
  return a;
}

// One line to stderr; the engine has no logger in kernels/, and these are rare, load-time events.
void log_warning(const char* message);

}  // namespace qs::cuda
