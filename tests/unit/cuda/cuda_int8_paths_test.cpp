// Which int8 GEMM path each real linear shape takes on this GPU (cuBLASLt IMMA, or the dp4a fallback because
// cuBLASLt has no algorithm or gave wrong results), at the token counts serving produces, and that the path taken
// is exact: cuBLASLt's int32 results and the dp4a kernel's are checked element by element against the plain
// reference kernel. GPT-2-small's and Pythia-1.4B's linears. Skips itself where no CUDA device is present.
// With QS_INT8_PATHS_JSON=FILE the report is also written there (scripts/gpu_verify.sh collects it).
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/backend.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/gemm_cublaslt.h"

namespace qs {
namespace {

struct LinearShape {
  const char* model;
  const char* linear;
  int64_t N, K;
};

// GPT-2-small: hidden 768, 12 heads, MLP 3072. Pythia-1.4B: hidden 2048, MLP 8192 (GPT-NeoX names).
constexpr LinearShape kShapes[] = {
    {"gpt2-small", "c_attn", 2304, 768},         {"gpt2-small", "attn.c_proj", 768, 768},
    {"gpt2-small", "c_fc", 3072, 768},           {"gpt2-small", "mlp.c_proj", 768, 3072},
    {"pythia-1.4b", "query_key_value", 6144, 2048}, {"pythia-1.4b", "attention.dense", 2048, 2048},
    {"pythia-1.4b", "dense_h_to_4h", 8192, 2048},  {"pythia-1.4b", "dense_4h_to_h", 2048, 8192},
};
constexpr int64_t kTokens[] = {1, 2, 8, 16, 17, 32, 64, 128, 512};

#define CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call

TEST(CudaInt8Paths, EveryShapeAndTokenCountTakesAnExactPath) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device on this machine";
  cudaStream_t stream = nullptr;
  CUDA_OK(cudaStreamCreate(&stream));
  void* workspace = nullptr;
  const size_t workspace_bytes = size_t(32) << 20;
  CUDA_OK(cudaMalloc(&workspace, workspace_bytes));
  nlohmann::json report = nlohmann::json::array();
  {
    cuda::CublasLtGemm gemm(stream, workspace, workspace_bytes);
    for (const LinearShape& s : kShapes) {
      ASSERT_EQ(s.N % cuda::kGemmPad, 0);   // real shapes: the backend's padding changes nothing
      ASSERT_EQ(s.K % cuda::kGemmPad, 0);
      const int64_t max_t = kTokens[sizeof(kTokens) / sizeof(kTokens[0]) - 1];
      int8_t *x = nullptr, *w = nullptr;
      int32_t *got = nullptr, *want = nullptr;
      unsigned int* mismatches = nullptr;
      CUDA_OK(cudaMalloc(&x, size_t(max_t * s.K)));
      CUDA_OK(cudaMalloc(&w, size_t(s.N * s.K)));
      CUDA_OK(cudaMalloc(&got, size_t(max_t * s.N) * 4));
      CUDA_OK(cudaMalloc(&want, size_t(max_t * s.N) * 4));
      CUDA_OK(cudaMalloc(&mismatches, sizeof(unsigned int)));
      cuda::fill_random_int8(x, max_t * s.K, 0x1234u, stream);
      cuda::fill_random_int8(w, s.N * s.K, 0x9876u, stream);
      auto count = [&](int64_t T) {
        unsigned int n = 0;
        EXPECT_EQ(cudaMemsetAsync(mismatches, 0, sizeof(unsigned int), stream), cudaSuccess);
        cuda::count_mismatches(mismatches, got, want, T, s.N, s.N, stream);
        EXPECT_EQ(cudaMemcpyAsync(&n, mismatches, sizeof(n), cudaMemcpyDeviceToHost, stream), cudaSuccess);
        EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
        return n;
      };
      for (int64_t T : kTokens) {
        cuda::int8_gemm_reference(want, x, w, T, s.N, s.K, stream);
        const auto r = gemm.matmul(cuda::GemmType::kInt8, got, x, w, nullptr, Activation::kNone, T, s.N, s.K, s.K,
                                   s.K, s.N);
        const unsigned int cublaslt_wrong = r.ran ? count(T) : 0;
        std::string path = "cublaslt-imma", why;
        if (!r.ran || cublaslt_wrong > 0) {
          path = "dp4a";
          why = r.ran ? "cuBLASLt results wrong" : "no cuBLASLt algorithm";
          cuda::int8_gemm_dp4a(got, x, w, T, s.N, s.K, stream);
          EXPECT_EQ(count(T), 0u) << s.model << " " << s.linear << " T=" << T << ": the dp4a kernel is not exact";
        }
        EXPECT_EQ(cudaGetLastError(), cudaSuccess);
        nlohmann::json row = {{"model", s.model}, {"linear", s.linear}, {"N", s.N}, {"K", s.K}, {"T", T},
                              {"path", path}, {"cublaslt_mismatches", cublaslt_wrong}};
        if (!why.empty()) row["why"] = why;
        std::printf("[int8 path] %s\n", row.dump().c_str());
        report.push_back(row);
      }
      cudaFree(x), cudaFree(w), cudaFree(got), cudaFree(want), cudaFree(mismatches);
    }
  }
  cudaFree(workspace);
  cudaStreamDestroy(stream);
  if (const char* path = std::getenv("QS_INT8_PATHS_JSON")) {
    std::ofstream(path) << nlohmann::json{{"int8_paths", report}}.dump(1) << "\n";
  }
}

}  // namespace
}  // namespace qs
