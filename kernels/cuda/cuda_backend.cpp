// The CUDA backend: device memory, on-device weight quantization at load, cuBLASLt GEMMs and the forward ops.
// Kernels live in the .cu files (cuda_kernels.h); this file owns memory, checks shapes and picks the path.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <utility>

#include "kernels/backend.h"
#include "kernels/cpu/gemv_blocks.h"
#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/gemm_cublaslt.h"
#include "kernels/error.h"

namespace qs {

namespace cuda {

void log_warning(const char* message) { std::fprintf(stderr, "quantserve [cuda] warning: %s\n", message); }

namespace {

// T = tokens, N = out features, K = in features, Np/Kp = padded to kGemmPad, C = channels.

constexpr size_t kCublasWorkspaceBytes = size_t(32) << 20;  // what cuBLASLt recommends for Hopper
// KV cache storage. F32 like the CPU reference for the first, unverified version; the kernels are templated and
// F16 (half the memory, attention still accumulates in fp32) is this one constant away — see docs/CUDA.md.
constexpr DType kKvCacheDType = DType::F32;
// Batch sizes the load-time int8 GEMM check runs (decode and a prefill-like tile).
constexpr int64_t kCheckTokens[] = {1, 16};
// CUDA graphs for decode steps: a pure-decode pass of T tokens is padded to the first bucket >= T and replayed
// from a graph recorded for that bucket (Backend::graph_bucket). Larger decode batches run eagerly: their step
// is long enough that launch overhead no longer dominates.
constexpr int64_t kGraphBuckets[] = {1, 2, 4, 8, 16, 32, 64};
// The batch's device buffer starts this large so that it rarely moves (a move makes every graph stale).
constexpr size_t kMinBatchDeviceBytes = size_t(64) << 10;

// Bytes allocated through the backend, shared with the buffers so a buffer may outlive its backend.
struct MemoryStats {
  std::atomic<size_t> current{0};
  std::atomic<size_t> peak{0};
  void add(size_t bytes) {
    const size_t now = current.fetch_add(bytes) + bytes;
    size_t prev = peak.load();
    while (now > prev && !peak.compare_exchange_weak(prev, now)) {
    }
  }
  void remove(size_t bytes) { current.fetch_sub(bytes); }
};

// Makes `device` current for a scope and restores the caller's device after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    QS_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) QS_CUDA_CHECK(cudaSetDevice(device));
    else previous_ = -1;
  }
  ~DeviceGuard() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

class CudaBuffer final : public DeviceBuffer {
 public:
  CudaBuffer(int device, size_t bytes, std::shared_ptr<MemoryStats> stats)
      : device_(device), bytes_(bytes), stats_(std::move(stats)) {
    if (bytes == 0) return;
    const cudaError_t status = cudaMalloc(&data_, bytes);
    if (status == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear it: an allocation failure is not a sticky error
      size_t free_bytes = 0, total_bytes = 0;
      cudaMemGetInfo(&free_bytes, &total_bytes);
      QS_FAIL(ErrorCode::kResourceExhausted, "out of GPU memory on cuda:", device, ": asked for ", bytes,
              " bytes with ", free_bytes, " of ", total_bytes, " free");
    }
    QS_CUDA_CHECK(status);
    stats_->add(bytes);
  }
  ~CudaBuffer() override {
    if (!data_) return;
    int previous = -1;
    cudaGetDevice(&previous);
    if (previous != device_) cudaSetDevice(device_);
    cudaFree(data_);  // synchronizes the device: work still reading the buffer finishes first
    if (previous >= 0 && previous != device_) cudaSetDevice(previous);
    stats_->remove(bytes_);
  }
  void* data() override { return data_; }
  size_t bytes() const override { return bytes_; }

 private:
  int device_;
  void* data_ = nullptr;
  size_t bytes_;
  std::shared_ptr<MemoryStats> stats_;
};

// A Linear's weight in one of the supported precisions (see make_linear for each layout).
struct CudaLinear final : public LinearWeight {
  std::unique_ptr<DeviceBuffer> weight;  // fp32/fp16/bf16 [N, K]; int8 [Np, Kp]; int8-naive uint8 [N * K]
  std::unique_ptr<DeviceBuffer> scales;  // int8: fp32 [Np]; int8-naive: fp32 {scale, zero_point}
  std::unique_ptr<DeviceBuffer> bias;    // fp32 [N], or null
  DType float_type = DType::F32;         // fp32/fp16/bf16: the weight's storage
  bool blocks = false;                   // int4-weight-only, group-wise int8-weight-only: weight is [N, K / 32]
  cuda::BlockKind block_kind = cuda::BlockKind::kQ4_1;   // blocks of this kind (cuda_kernels.h)
  int64_t padded_n = 0, padded_k = 0;    // int8: Np, Kp
  bool int8_use_cublaslt = true;         // int8: false when the load-time check caught cuBLASLt being wrong
  const float* bias_data() const { return bias ? static_cast<const float*>(bias->data()) : nullptr; }
};

// Each pool holds one block more than config().num_blocks: block num_blocks is the graph scratch block, where
// the padding tokens of a graph-replayed decode step write their K/V (no sequence owns it).
class CudaKvCache final : public KvCache {
 public:
  CudaKvCache(const KvCacheConfig& config, DType dtype) : config_(config), dtype_(dtype) {
    static std::atomic<uint64_t> next_serial{1};
    serial_ = next_serial.fetch_add(1);
  }
  const KvCacheConfig& config() const override { return config_; }
  int64_t physical_blocks() const { return config_.num_blocks + 1; }
  int32_t scratch_block() const { return int32_t(config_.num_blocks); }
  size_t bytes() const override {
    size_t total = 0;
    for (const auto& b : k_) total += b->bytes();
    for (const auto& b : v_) total += b->bytes();
    return total;
  }
  KvCacheConfig config_;
  DType dtype_;
  uint64_t serial_ = 0;  // unique per cache made in this process: a graph remembers the cache it was recorded on
  std::vector<std::unique_ptr<DeviceBuffer>> k_, v_;  // per layer [num_blocks + 1, block_size, NKV, HD]
};

const char* activation_name(Activation a) {
  switch (a) {
    case Activation::kNone: return "none";
    case Activation::kGeluTanh: return "gelu-tanh";
    case Activation::kGeluErf: return "gelu-erf";
    case Activation::kRelu: return "relu";
    case Activation::kSilu: return "silu";
  }
  return "?";
}

const char* gemm_type_name(cuda::GemmType t) {
  switch (t) {
    case cuda::GemmType::kF32: return "fp32";
    case cuda::GemmType::kF16: return "fp16";
    case cuda::GemmType::kBF16: return "bf16";
    case cuda::GemmType::kInt8: return "int8";
  }
  return "?";
}

bool is_float_dtype(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device), stats_(std::make_shared<MemoryStats>()) {
    DeviceGuard guard(device_);
    cudaDeviceProp prop{};
    QS_CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
    QS_CHECK(prop.major >= 8, ErrorCode::kUnsupported, "cuda:", device_, " (", prop.name, ", sm_", prop.major,
             prop.minor, ") is older than Ampere (sm_80), which the CUDA backend needs for bf16 and int8 GEMMs");
    device_name_ = prop.name;
    QS_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    QS_CUDA_CHECK(cudaEventCreateWithFlags(&batch_uploaded_, cudaEventDisableTiming));
    workspace_ = allocate(kCublasWorkspaceBytes);
    gemm_ = std::make_unique<cuda::CublasLtGemm>(stream_, workspace_->data(), workspace_->bytes());
    error_scratch_ = allocate(cuda::quant_error_scratch_bytes());
    // QUANTSERVE_CUDA_INT8_GEMM=dp4a: every int8 GEMM on our own kernel (tests, and comparing against cuBLASLt).
    const char* int8_gemm = std::getenv("QUANTSERVE_CUDA_INT8_GEMM");
    int8_force_dp4a_ = int8_gemm && std::string_view(int8_gemm) == "dp4a";
    // QUANTSERVE_CUDA_GRAPHS=0: no CUDA graphs, every decode step launches its kernels (A/B runs, debugging).
    const char* graphs = std::getenv("QUANTSERVE_CUDA_GRAPHS");
    graphs_enabled_ = !(graphs && (std::string_view(graphs) == "0" || std::string_view(graphs) == "off" ||
                                   std::string_view(graphs) == "false"));
  }

  ~CudaBackend() override {
    cudaSetDevice(device_);
    if (stream_) cudaStreamSynchronize(stream_);
    for (auto& [key, graph] : graphs_) cudaGraphExecDestroy(graph.exec);
    gemm_.reset();
    workspace_.reset();
    if (batch_uploaded_) cudaEventDestroy(batch_uploaded_);
    if (staging_) cudaFreeHost(staging_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  std::string name() const override { return str("cuda:", device_); }
  DType activation_dtype() const override { return DType::F32; }

  bool supports(Precision p) const override {
    switch (p) {
      case Precision::kFp32: case Precision::kFp16: case Precision::kBf16: case Precision::kInt8:
      case Precision::kInt8WeightOnly: case Precision::kInt8Naive: case Precision::kInt4WeightOnly:
        return true;
      case Precision::kInt8Mixed: case Precision::kInt8Smooth:
        return false;
    }
    return false;
  }

  // int8-weight-only by groups of 32 (Q8_0 / U8Min blocks, the block GEMV); W8A8 by groups has no CUDA kernel.
  // Only on request (--group-size 32): --group-size auto stays per row here until the block GEMV has been measured
  // on a GPU against the per-row one (scripts/gpu_verify.sh).
  bool supports_weight_groups(Precision p) const override { return p == Precision::kInt8WeightOnly; }
  bool weight_groups_by_default(Precision) const override { return false; }

  MemoryInfo memory_info() const override {
    DeviceGuard guard(device_);
    MemoryInfo info;
    info.device = name();
    size_t free_bytes = 0, total_bytes = 0;
    QS_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    info.total_bytes = total_bytes;
    info.used_bytes = total_bytes - free_bytes;  // device-wide, as nvidia-smi shows it (context included)
    info.peak_bytes = stats_->peak.load();        // what this backend allocated at most
    return info;
  }

  // ---- memory ---------------------------------------------------------------------------------------------

  std::unique_ptr<DeviceBuffer> allocate(size_t bytes) override {
    DeviceGuard guard(device_);
    return std::make_unique<CudaBuffer>(device_, bytes, stats_);
  }

  void copy_to_host(void* dst, const void* device_src, size_t bytes) override {
    if (bytes == 0) return;
    DeviceGuard guard(device_);
    QS_CUDA_CHECK(cudaMemcpyAsync(dst, device_src, bytes, cudaMemcpyDeviceToHost, stream_));
    QS_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  void synchronize() override {
    DeviceGuard guard(device_);
    QS_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  // ---- weights --------------------------------------------------------------------------------------------

  std::unique_ptr<LinearWeight> make_linear(const HostTensor& weight, const HostTensor* bias, Precision precision,
                                            const LinearOptions& options) override {
    QS_CHECK(supports(precision), ErrorCode::kUnsupported, "precision ", precision_name(precision),
             " is not implemented by the CUDA backend yet; use one of fp32, fp16, bf16, int8, int8-weight-only, "
             "int8-naive, int4-weight-only");
    QS_CHECK(options.group_size == 0 || (options.group_size == kInt8WeightGroup && supports_weight_groups(precision)),
             ErrorCode::kUnsupported, "the CUDA backend has no group-wise kernels for ", precision_name(precision),
             " (weight groups of ", options.group_size, " inputs); use --group-size 0");
    const bool block_weight = precision == Precision::kInt4WeightOnly || options.group_size == kInt8WeightGroup;
    QS_CHECK(is_float_dtype(weight.dtype) ||
                 (block_weight && (weight.dtype == DType::Q4_0 || weight.dtype == DType::Q4_1 ||
                                   weight.dtype == DType::Q8_0)),
             ErrorCode::kInvalidModel, "a linear weight must be F32, F16 or BF16",
             block_weight ? " (or Q4_0, Q4_1, Q8_0 blocks)" : "", ", not ", dtype_name(weight.dtype));
    QS_CHECK(weight.rows > 0 && weight.cols > 0 && weight.data, ErrorCode::kInvalidModel,
             "a linear weight must be a non-empty matrix, got ", weight.rows, " x ", weight.cols);
    const int64_t N = weight.rows, K = weight.cols;
    if (bias)
      QS_CHECK(bias->numel() == N && is_float_dtype(bias->dtype) && bias->data, ErrorCode::kInvalidModel,
               "a linear bias must have ", N, " float elements (one per output feature), got ", bias->numel(), " ",
               dtype_name(bias->dtype));
    DeviceGuard guard(device_);
    auto lin = std::make_unique<CudaLinear>();
    lin->out_features = N;
    lin->in_features = K;
    lin->precision = precision;
    lin->original_bytes = size_t(N * K) * sizeof(float);

    if (block_weight) {
      make_block_linear(*lin, weight, options);
      upload_bias(*lin, bias);
      return lin;
    }

    // The host tensor goes up in its stored dtype; the quantized form is made from it on the device and the
    // original is freed before the next tensor comes, so the peak is the model so far + this tensor.
    std::unique_ptr<DeviceBuffer> original = upload(weight.data, dtype_bytes(weight.dtype, N * K));
    const void* w = original->data();
    const DType w_type = weight.dtype;

    switch (precision) {
      case Precision::kFp32:
      case Precision::kFp16:
      case Precision::kBf16: {
        const DType storage = precision == Precision::kFp32 ? DType::F32
                              : precision == Precision::kFp16 ? DType::F16 : DType::BF16;
        lin->float_type = storage;
        if (storage == w_type) {
          lin->weight = std::move(original);  // already what we keep: no copy, no error
        } else {
          lin->weight = allocate(dtype_bytes(storage, N * K));
          cuda::cast_float(lin->weight->data(), storage, w, w_type, N * K, stream_);
          if (options.compute_error && storage != DType::F32) {
            lin->error = measure_error(w, w_type, dequant_view(*lin), N, K);
          }
        }
        lin->weight_bytes = dtype_bytes(storage, N * K);
        break;
      }
      case Precision::kInt8:
      case Precision::kInt8WeightOnly: {
        const int64_t Np = cuda::round_up(N, cuda::kGemmPad), Kp = cuda::round_up(K, cuda::kGemmPad);
        lin->padded_n = Np;
        lin->padded_k = Kp;
        lin->weight = allocate(size_t(Np * Kp));
        lin->scales = allocate(size_t(Np) * sizeof(float));
        auto* q = static_cast<int8_t*>(lin->weight->data());
        auto* scales = static_cast<float*>(lin->scales->data());
        cuda::quantize_per_channel_int8(q, scales, w, w_type, N, K, Np, Kp, stream_);
        if (options.compute_error) {
          lin->error = measure_error(w, w_type, dequant_view(*lin), N, K);
        }
        // Reported without the zero padding (at most 15 rows and columns), so the figure matches the CPU's.
        lin->weight_bytes = size_t(N * K) + size_t(N) * sizeof(float);
        if (precision == Precision::kInt8)
          lin->int8_use_cublaslt = !int8_force_dp4a_ && int8_gemm_is_trustworthy(q, Np, Kp);
        break;
      }
      case Precision::kInt8Naive: {
        lin->weight = allocate(size_t(N * K));
        lin->scales = allocate(2 * sizeof(float));
        auto minmax = allocate(2 * sizeof(float));
        auto* q = static_cast<uint8_t*>(lin->weight->data());
        auto* params = static_cast<float*>(lin->scales->data());
        cuda::quantize_per_tensor_uint8(q, params, static_cast<float*>(minmax->data()), w, w_type, N * K, stream_);
        if (options.compute_error) {
          lin->error = measure_error(w, w_type, dequant_view(*lin), N, K);
        }
        lin->weight_bytes = size_t(N * K) + 2 * sizeof(float);
        break;
      }
      case Precision::kInt8Mixed:
      case Precision::kInt8Smooth:
        break;  // refused above
      case Precision::kInt4WeightOnly:
        break;  // make_block_linear, above
    }
    original.reset();  // after the stream work that reads it (cudaFree synchronizes)
    upload_bias(*lin, bias);
    return lin;
  }

  void upload_bias(CudaLinear& lin, const HostTensor* bias) {
    const int64_t N = lin.out_features;
    if (bias) {
      auto raw = upload(bias->data, dtype_bytes(bias->dtype, N));
      if (bias->dtype == DType::F32) {
        lin.bias = std::move(raw);
      } else {
        lin.bias = allocate(size_t(N) * sizeof(float));
        cuda::cast_float(lin.bias->data(), DType::F32, raw->data(), bias->dtype, N, stream_);
      }
    }
    QS_CUDA_CHECK(cudaStreamSynchronize(stream_));  // surface any kernel error at the tensor that caused it
  }

  // int4-weight-only and int8-weight-only by groups of 32: the CPU backend's blocks, made on the host by its own
  // converters and quantizers (kernels/cpu/gemv_blocks.h), so both backends hold the same bytes: a file's Q4_1 and
  // Q8_0 blocks kept as they are (int4), Q4_0 rewritten as Q4_1 (int4) or Q8_0 (int8) and Q4_1 as U8Min (int8),
  // all exactly; floats rounded to nearest into Q4_1 (int4) or Q8_0 (int8). Uploaded row after row as GGUF has
  // them (the CPU's tiles are for its SIMD; a warp reads a row's blocks side by side).
  void make_block_linear(CudaLinear& lin, const HostTensor& weight, const LinearOptions& options) {
    const int64_t N = lin.out_features, K = lin.in_features, n_blocks = N * K / 32;
    QS_CHECK(K % 32 == 0, ErrorCode::kUnsupported, precision_name(lin.precision), " quantizes blocks of 32 inputs, ",
             "and this weight (", N, " x ", K, ") has ", K, " inputs, not a multiple of 32; load it in another ",
             "precision");
    const bool int4 = lin.precision == Precision::kInt4WeightOnly;
    std::vector<float> floats;   // the source as floats, where it is rounded (for the error too)
    auto source_floats = [&]() -> const float* {
      if (floats.empty()) {
        floats.resize(size_t(N * K));
        convert_to_f32(floats.data(), weight.data, weight.dtype, N * K);
      }
      return floats.data();
    };
    std::vector<uint8_t> blocks;
    auto as_blocks = [&](const void* src, size_t bytes) {
      blocks.assign(static_cast<const uint8_t*>(src), static_cast<const uint8_t*>(src) + bytes);
    };
    if (weight.dtype == DType::Q8_0) {
      lin.block_kind = cuda::BlockKind::kQ8_0;
      as_blocks(weight.data, size_t(n_blocks) * sizeof(BlockQ8_0));
    } else if (int4) {
      lin.block_kind = cuda::BlockKind::kQ4_1;
      std::vector<BlockQ4_1> q(static_cast<size_t>(n_blocks));
      if (weight.dtype == DType::Q4_1) {
        std::memcpy(q.data(), weight.data, q.size() * sizeof(BlockQ4_1));
      } else if (weight.dtype != DType::Q4_0 ||
                 !cpu::convert_q4_0_to_q4_1(q.data(), static_cast<const BlockQ4_0*>(weight.data), n_blocks)) {
        cpu::quantize_q4_1(q.data(), source_floats(), N * K);
      }
      as_blocks(q.data(), q.size() * sizeof(BlockQ4_1));
    } else if (weight.dtype == DType::Q4_1) {
      lin.block_kind = cuda::BlockKind::kU8Min;
      std::vector<cpu::BlockU8Min> q(static_cast<size_t>(n_blocks));
      cpu::convert_q4_1_to_u8_min(q.data(), static_cast<const BlockQ4_1*>(weight.data), n_blocks);
      as_blocks(q.data(), q.size() * sizeof(cpu::BlockU8Min));
    } else {
      lin.block_kind = cuda::BlockKind::kQ8_0;
      std::vector<BlockQ8_0> q(static_cast<size_t>(n_blocks));
      if (weight.dtype == DType::Q4_0) {
        cpu::convert_q4_0_to_q8_0(q.data(), static_cast<const BlockQ4_0*>(weight.data), n_blocks);
      } else {
        cpu::quantize_q8_0(q.data(), source_floats(), N * K);
      }
      as_blocks(q.data(), q.size() * sizeof(BlockQ8_0));
    }
    lin.blocks = true;
    lin.weight = upload(blocks.data(), blocks.size());
    lin.weight_bytes = blocks.size();
    if (options.compute_error && !floats.empty()) {   // kept blocks are the file's values: error 0
      auto original = upload(floats.data(), floats.size() * sizeof(float));
      lin.error = measure_error(original->data(), DType::F32, dequant_view(lin), N, K);
    }
  }

  DenseWeight make_dense(const HostTensor& tensor, DType storage) override {
    QS_CHECK(is_float_dtype(tensor.dtype) && is_float_dtype(storage), ErrorCode::kInvalidModel,
             "dense weights are F32, F16 or BF16 on the CUDA backend, got ", dtype_name(tensor.dtype), " stored as ",
             dtype_name(storage));
    QS_CHECK(tensor.numel() >= 0 && (tensor.data || tensor.numel() == 0), ErrorCode::kInvalidModel,
             "a dense weight has no data");
    DeviceGuard guard(device_);
    DenseWeight d;
    d.dtype = storage;
    d.rows = tensor.rows;
    d.cols = tensor.cols;
    auto raw = upload(tensor.data, dtype_bytes(tensor.dtype, tensor.numel()));
    if (tensor.dtype == storage) {
      d.buffer = std::move(raw);
    } else {
      d.buffer = allocate(dtype_bytes(storage, tensor.numel()));
      cuda::cast_float(d.buffer->data(), storage, raw->data(), tensor.dtype, tensor.numel(), stream_);
      raw.reset();
    }
    QS_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return d;
  }

  std::unique_ptr<KvCache> make_kv_cache(const KvCacheConfig& config) override {
    QS_CHECK(config.num_layers > 0 && config.num_blocks > 0 && config.block_size > 0 && config.num_kv_heads > 0 &&
                 config.head_dim > 0 && config.num_blocks < INT32_MAX,
             ErrorCode::kInvalidArgument, "KV cache config must be all positive: layers ", config.num_layers,
             ", blocks ", config.num_blocks, ", block size ", config.block_size, ", kv heads ", config.num_kv_heads,
             ", head dim ", config.head_dim);
    QS_CHECK(supports_kv_cache_dtype(config.dtype), ErrorCode::kUnsupported, "the CUDA backend stores the KV cache in ",
             dtype_name(kKvCacheDType), " only, not ", dtype_name(config.dtype));
    DeviceGuard guard(device_);
    auto cache = std::make_unique<CudaKvCache>(config, kKvCacheDType);
    const size_t pool = dtype_bytes(kKvCacheDType, cache->physical_blocks() * config.block_size *
                                                       config.num_kv_heads * config.head_dim);
    for (int64_t l = 0; l < config.num_layers; ++l) {
      cache->k_.push_back(allocate(pool));
      cache->v_.push_back(allocate(pool));
    }
    return cache;
  }

  // ---- per pass -------------------------------------------------------------------------------------------

  // Packs ids, positions, seq_of_token, logit rows and the flattened block tables into one pinned staging
  // buffer and sends it with a single copy; the ops of the pass read them from batch_view_.
  void begin_batch(const BatchLayout& layout) override {
    const int64_t T = layout.num_tokens();
    const int64_t L = int64_t(layout.logit_rows.size());
    const int64_t S = int64_t(layout.seq_lens.size());
    QS_CHECK(int64_t(layout.positions.size()) == T && int64_t(layout.seq_of_token.size()) == T,
             ErrorCode::kInternal, "batch layout: ", T, " tokens but ", layout.positions.size(), " positions and ",
             layout.seq_of_token.size(), " sequence indices");
    QS_CHECK(int64_t(layout.block_tables.size()) == S, ErrorCode::kInternal, "batch layout: ", S,
             " sequence lengths but ", layout.block_tables.size(), " block tables");
    int64_t max_blocks = 1;
    for (const auto& table : layout.block_tables) max_blocks = std::max<int64_t>(max_blocks, int64_t(table.size()));
    for (int64_t t = 0; t < T; ++t) {
      const int32_t s = layout.seq_of_token[size_t(t)];
      QS_CHECK(s >= 0 && s < S, ErrorCode::kInternal, "batch layout: token ", t, " belongs to sequence ", s, " of ", S);
      QS_CHECK(layout.positions[size_t(t)] >= 0, ErrorCode::kInternal, "batch layout: token ", t,
               " has a negative position");
    }
    for (int32_t r : layout.logit_rows)
      QS_CHECK(r >= 0 && r < T, ErrorCode::kInternal, "batch layout: logit row ", r, " outside ", T, " tokens");

    DeviceGuard guard(device_);
    const size_t count = size_t(3 * T + L + S * max_blocks);
    const size_t bytes = std::max<size_t>(count, 1) * sizeof(int32_t);
    // The previous pass's copy must have left the staging buffer before it is overwritten.
    QS_CUDA_CHECK(cudaEventSynchronize(batch_uploaded_));
    if (staging_bytes_ < bytes) {
      const size_t want = std::max(bytes, staging_bytes_ * 3 / 2);
      if (staging_) QS_CUDA_CHECK(cudaFreeHost(staging_));
      staging_ = nullptr;
      staging_bytes_ = 0;
      QS_CUDA_CHECK(cudaHostAlloc(&staging_, want, cudaHostAllocDefault));
      staging_bytes_ = want;
    }
    auto* p = static_cast<int32_t*>(staging_);
    auto put = [&p](const std::vector<int32_t>& v) {
      if (!v.empty()) std::memcpy(p, v.data(), v.size() * sizeof(int32_t));
      p += v.size();
    };
    put(layout.token_ids);
    put(layout.positions);
    put(layout.seq_of_token);
    put(layout.logit_rows);
    for (const auto& table : layout.block_tables) {
      put(table);
      std::fill(p, p + (max_blocks - int64_t(table.size())), -1);
      p += max_blocks - int64_t(table.size());
    }
    int32_t* device = static_cast<int32_t*>(scratch(batch_device_, std::max(bytes, kMinBatchDeviceBytes)));
    QS_CUDA_CHECK(cudaMemcpyAsync(device, staging_, count * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    QS_CUDA_CHECK(cudaEventRecord(batch_uploaded_, stream_));

    batch_view_ = cuda::BatchView{};
    batch_view_.token_ids = device;
    batch_view_.positions = device + T;
    batch_view_.seq_of_token = device + 2 * T;
    batch_view_.logit_rows = device + 3 * T;
    batch_view_.block_tables = device + 3 * T + L;
    batch_view_.num_tokens = T;
    batch_view_.num_logit_rows = L;
    batch_view_.num_seqs = S;
    batch_view_.max_blocks = max_blocks;
    layout_ = layout;  // for host-side checks (token ids against a table, block tables against a cache)
    have_batch_ = true;
  }

  // ---- ops ------------------------------------------------------------------------------------------------

  // The table is a Linear's weight (so a tied LM head shares it): rows are dequantized from whatever form
  // its precision keeps them in.
  void embedding(Tensor out, const LinearWeight& table, const DenseWeight* positions_table) override {
    require_batch("embedding");
    const auto& lin = dynamic_cast<const CudaLinear&>(table);
    const int64_t T = batch_view_.num_tokens, C = lin.in_features;
    check_activation(out, T, C, "embedding output");
    if (positions_table)
      QS_CHECK(positions_table->cols == C || positions_table->rows * positions_table->cols == 0, ErrorCode::kInternal,
               "position table has ", positions_table->cols, " columns, the token table ", C);
    const int64_t max_positions = positions_table ? positions_table->rows : -1;
    check_tokens(lin.out_features, max_positions);
    if (capturing_) {  // what replay() must check in place of this op
      capture_.vocab = lin.out_features;
      capture_.max_positions = max_positions;
    }
    DeviceGuard guard(device_);
    cuda::embedding(f32(out), batch_view_, dequant_view(lin), positions_table ? positions_table->buffer->data() : nullptr,
                    positions_table ? positions_table->dtype : DType::F32, C, stream_);
  }

  void linear(Tensor out, Tensor in, const LinearWeight& weight, Activation act) override {
    const auto& lin = dynamic_cast<const CudaLinear&>(weight);
    const int64_t T = in.rows, N = lin.out_features, K = lin.in_features;
    check_activation(in, T, K, "linear input");
    check_activation(out, T, N, "linear output");
    if (T == 0) return;
    DeviceGuard guard(device_);
    const float* x = static_cast<const float*>(in.data);
    float* y = f32(out);
    const float* bias = lin.bias_data();
    switch (lin.precision) {
      case Precision::kFp32:
        float_gemm(cuda::GemmType::kF32, y, x, lin.weight->data(), bias, act, T, N, K);
        break;
      case Precision::kFp16:
      case Precision::kBf16: {
        const DType t = lin.float_type;
        void* xh = scratch(scratch_x_half_, dtype_bytes(t, T * K));
        cuda::cast_float(xh, t, x, DType::F32, T * K, stream_);
        float_gemm(t == DType::F16 ? cuda::GemmType::kF16 : cuda::GemmType::kBF16, y, xh, lin.weight->data(), bias,
                   act, T, N, K);
        break;
      }
      case Precision::kInt8:
        int8_linear(y, x, lin, act, T);
        break;
      case Precision::kInt4WeightOnly:
        block_linear(y, x, lin, bias, act, T);
        break;
      case Precision::kInt8WeightOnly: {
        if (lin.blocks) {
          block_linear(y, x, lin, bias, act, T);
          break;
        }
        const auto* q = static_cast<const int8_t*>(lin.weight->data());
        const auto* scales = static_cast<const float*>(lin.scales->data());
        if (T <= cuda::kGemvMaxTokens) {
          cuda::int8_weight_only_gemv(y, x, q, scales, bias, act, T, N, K, lin.padded_k, stream_);
        } else {
          // Larger batches: dequantize into a temporary fp16 weight and use the tensor-core GEMM.
          void* wh = scratch(scratch_w_, dtype_bytes(DType::F16, N * K));
          cuda::dequantize_per_channel(wh, DType::F16, q, scales, N, K, lin.padded_k, stream_);
          void* xh = scratch(scratch_x_half_, dtype_bytes(DType::F16, T * K));
          cuda::cast_float(xh, DType::F16, x, DType::F32, T * K, stream_);
          float_gemm(cuda::GemmType::kF16, y, xh, wh, bias, act, T, N, K);
        }
        break;
      }
      case Precision::kInt8Naive: {
        // The textbook baseline: dequantize the whole tensor, then an fp32 GEMM.
        auto* wf = static_cast<float*>(scratch(scratch_w_, size_t(N * K) * sizeof(float)));
        cuda::dequantize_per_tensor(wf, static_cast<const uint8_t*>(lin.weight->data()),
                                    static_cast<const float*>(lin.scales->data()), N * K, stream_);
        float_gemm(cuda::GemmType::kF32, y, x, wf, bias, act, T, N, K);
        break;
      }
      case Precision::kInt8Mixed:
      case Precision::kInt8Smooth:
        QS_FAIL(ErrorCode::kUnsupported, "precision ", precision_name(lin.precision),
                " is not implemented by the CUDA backend");
    }
  }

  // Block weights: the GEMV up to kGemvMaxTokens tokens; above, the weight dequantized to fp16 for cuBLASLt (as
  // per-row int8-weight-only does; fp16 holds a Q4_1 value d q + m to 11 bits, where the CPU's prefill uses fp32).
  void block_linear(float* y, const float* x, const CudaLinear& lin, const float* bias, Activation act, int64_t T) {
    const int64_t N = lin.out_features, K = lin.in_features;
    if (T <= cuda::kGemvMaxTokens) {
      cuda::block_gemv(y, x, lin.weight->data(), lin.block_kind, bias, act, T, N, K, stream_);
      return;
    }
    void* wh = scratch(scratch_w_, dtype_bytes(DType::F16, N * K));
    cuda::dequantize_view(wh, DType::F16, dequant_view(lin), N, K, stream_);
    void* xh = scratch(scratch_x_half_, dtype_bytes(DType::F16, T * K));
    cuda::cast_float(xh, DType::F16, x, DType::F32, T * K, stream_);
    float_gemm(cuda::GemmType::kF16, y, xh, wh, bias, act, T, N, K);
  }

  void layernorm(Tensor out, Tensor in, const DenseWeight& weight, const DenseWeight* bias, float eps) override {
    const int64_t T = in.rows, C = in.cols;
    check_activation(out, T, C, "layernorm output");
    check_activation(in, T, C, "layernorm input");
    QS_CHECK(weight.rows * weight.cols == C && (!bias || (bias->rows * bias->cols == C && bias->dtype == weight.dtype)),
             ErrorCode::kInternal, "layernorm weight/bias do not match ", C, " channels");
    DeviceGuard guard(device_);
    cuda::layernorm(f32(out), f32(in), weight.buffer->data(), bias ? bias->buffer->data() : nullptr, weight.dtype, T,
                    C, eps, stream_);
  }

  void rmsnorm(Tensor out, Tensor in, const DenseWeight& weight, float eps) override {
    const int64_t T = in.rows, C = in.cols;
    check_activation(out, T, C, "rmsnorm output");
    check_activation(in, T, C, "rmsnorm input");
    QS_CHECK(weight.rows * weight.cols == C, ErrorCode::kInternal, "rmsnorm weight does not match ", C, " channels");
    DeviceGuard guard(device_);
    cuda::rmsnorm(f32(out), f32(in), weight.buffer->data(), weight.dtype, T, C, eps, stream_);
  }

  void add(Tensor out, Tensor a, Tensor b) override {
    check_activation(b, a.rows, a.cols, "add input");
    check_activation(out, a.rows, a.cols, "add output");
    DeviceGuard guard(device_);
    cuda::add(f32(out), f32(a), f32(b), a.rows * a.cols, stream_);
  }

  void silu_mul(Tensor out, Tensor gate_up) override {
    QS_CHECK(gate_up.cols % 2 == 0, ErrorCode::kInternal, "silu_mul input has an odd width ", gate_up.cols);
    check_activation(out, gate_up.rows, gate_up.cols / 2, "silu_mul output");
    DeviceGuard guard(device_);
    cuda::gated_activation(f32(out), f32(gate_up), gate_up.rows, gate_up.cols / 2, Activation::kSilu, stream_);
  }

  // ---- the ops Gemma 3, Qwen3 and Mistral add (Backend::supports_op) ----
  bool supports_op(BackendOp) const override { return true; }

  void gated_activation(Tensor out, Tensor gate_up, Activation act) override {
    QS_CHECK(gate_up.cols % 2 == 0, ErrorCode::kInternal, "gated_activation input has an odd width ", gate_up.cols);
    check_activation(out, gate_up.rows, gate_up.cols / 2, "gated_activation output");
    DeviceGuard guard(device_);
    cuda::gated_activation(f32(out), f32(gate_up), gate_up.rows, gate_up.cols / 2, act, stream_);
  }

  void head_rmsnorm(Tensor qkv, const DenseWeight& q_weight, const DenseWeight& k_weight, int64_t num_heads,
                    int64_t num_kv_heads, int64_t head_dim, float eps) override {
    check_activation(qkv, qkv.rows, (num_heads + 2 * num_kv_heads) * head_dim, "head_rmsnorm qkv");
    QS_CHECK(q_weight.rows * q_weight.cols == head_dim && k_weight.rows * k_weight.cols == head_dim &&
                 q_weight.dtype == k_weight.dtype,
             ErrorCode::kInternal, "head_rmsnorm: weights do not match the head size ", head_dim);
    DeviceGuard guard(device_);
    cuda::head_rmsnorm(f32(qkv), q_weight.buffer->data(), k_weight.buffer->data(), q_weight.dtype, qkv.rows,
                       num_heads, num_kv_heads, head_dim, eps, stream_);
  }

  void scale(Tensor x, float factor) override {
    check_activation(x, x.rows, x.cols, "scale");
    DeviceGuard guard(device_);
    cuda::scale(f32(x), x.rows * x.cols, factor, stream_);
  }

  void rope(Tensor qkv, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, int64_t rotary_dim,
            float theta) override {
    require_batch("rope");
    check_activation(qkv, batch_view_.num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, "rope qkv");
    DeviceGuard guard(device_);
    cuda::rope(f32(qkv), batch_view_, num_heads, num_kv_heads, head_dim, rotary_dim, theta, stream_);
  }

  void attention(Tensor out, Tensor qkv, KvCache& cache, int64_t layer, int64_t num_heads, int64_t num_kv_heads,
                 int64_t head_dim) override {
    attention_window(out, qkv, cache, layer, num_heads, num_kv_heads, head_dim, 0);
  }

  // One block table for every layer (no KV layer groups here): Gemma 3's sliding layers read the same blocks as
  // its global ones, only fewer of them; Mistral's tables give back the blocks before the window.
  void attention_window(Tensor out, Tensor qkv, KvCache& cache, int64_t layer, int64_t num_heads,
                        int64_t num_kv_heads, int64_t head_dim, int64_t window) override {
    require_batch("attention");
    auto& kv = dynamic_cast<CudaKvCache&>(cache);
    const KvCacheConfig& cfg = kv.config_;
    const int64_t T = batch_view_.num_tokens;
    check_activation(qkv, T, (num_heads + 2 * num_kv_heads) * head_dim, "attention qkv");
    check_activation(out, T, num_heads * head_dim, "attention output");
    QS_CHECK(layer >= 0 && layer < cfg.num_layers, ErrorCode::kInternal, "layer ", layer, " outside the KV cache's ",
             cfg.num_layers);
    QS_CHECK(num_kv_heads == cfg.num_kv_heads && head_dim == cfg.head_dim, ErrorCode::kInternal,
             "attention with ", num_kv_heads, " kv heads of ", head_dim, " on a cache made for ", cfg.num_kv_heads,
             " of ", cfg.head_dim);
    check_kv_slots(cfg.block_size, kv.physical_blocks());
    if (capturing_) {
      QS_CHECK(kv.serial_ == capture_.cache_serial, ErrorCode::kInternal,
               "attention recorded into a graph on another KV cache than the graph was begun with");
      capture_.block_size = cfg.block_size;
      capture_.kv_blocks = kv.physical_blocks();
    }
    DeviceGuard guard(device_);
    cuda::paged_attention(f32(out), f32(qkv), kv.k_[size_t(layer)]->data(), kv.v_[size_t(layer)]->data(), kv.dtype_,
                          batch_view_, num_heads, num_kv_heads, head_dim, cfg.block_size, window, stream_);
  }

  void gather_logit_rows(Tensor out, Tensor in) override {
    require_batch("gather_logit_rows");
    check_activation(in, batch_view_.num_tokens, in.cols, "gather_logit_rows input");
    check_activation(out, batch_view_.num_logit_rows, in.cols, "gather_logit_rows output");
    DeviceGuard guard(device_);
    cuda::gather_rows(f32(out), f32(in), batch_view_, in.cols, stream_);
  }

  // ---- CUDA graphs for decode steps (see Backend in kernels/backend.h for the protocol) -------------------
  //
  // A graph records the kernels and cuBLASLt calls of one pass with their pointers and shapes baked in. It
  // stays valid while (a) every buffer it touches is where it was: the model's activations (the model calls
  // reset_graphs() when one moves), this backend's scratch buffers and batch buffer (buffers_generation_
  // counts their moves), the KV cache (its serial); and (b) the batch has the recorded shape: T, L, S and the
  // block-table width, which the model fixes by padding. The batch's contents (ids, positions, tables) are
  // read from the device at run time, so begin_batch's copy into the fixed batch buffer is all a step needs.

  int64_t graph_bucket(int64_t num_tokens) const override {
    if (!graphs_enabled_ || num_tokens <= 0) return 0;
    for (int64_t b : kGraphBuckets)
      if (num_tokens <= b) return b;
    return 0;
  }

  int32_t graph_scratch_block(const KvCache& cache) const override {
    const auto* kv = dynamic_cast<const CudaKvCache*>(&cache);
    return graphs_enabled_ && kv ? kv->scratch_block() : -1;
  }

  bool begin_capture(uint64_t key, const KvCache& cache) override {
    const auto* kv = dynamic_cast<const CudaKvCache*>(&cache);
    if (!graphs_enabled_ || !kv || !have_batch_ || capturing_ || failed_graphs_.count(key)) return false;
    DeviceGuard guard(device_);
    capture_ = Graph{};
    capture_.cache_serial = kv->serial_;
    capture_.generation = buffers_generation_;
    capture_.num_tokens = batch_view_.num_tokens;
    capture_.num_logit_rows = batch_view_.num_logit_rows;
    capture_.num_seqs = batch_view_.num_seqs;
    capture_.max_blocks = batch_view_.max_blocks;
    // Thread-local mode: an unsafe call from this thread while recording (an allocation, a synchronization) is
    // an error instead of a silent hazard; the ops then throw and end_capture() discards the graph.
    const cudaError_t status = cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal);
    if (status != cudaSuccess) {
      cudaGetLastError();
      graph_failed(key, str("cudaStreamBeginCapture: ", cudaGetErrorString(status)));
      return false;
    }
    capturing_ = true;
    capture_key_ = key;
    return true;
  }

  bool end_capture() override {
    if (!capturing_) return false;
    DeviceGuard guard(device_);
    capturing_ = false;
    cudaGraph_t graph = nullptr;
    cudaError_t status = cudaStreamEndCapture(stream_, &graph);
    cudaGraphExec_t exec = nullptr;
    if (status == cudaSuccess && graph) status = cudaGraphInstantiate(&exec, graph, 0);
    if (graph) cudaGraphDestroy(graph);
    if (status != cudaSuccess || !exec || buffers_generation_ != capture_.generation || capture_.vocab < 0 ||
        capture_.block_size <= 0) {
      cudaGetLastError();  // capture errors are not sticky; clear the last error for the next check
      if (exec) cudaGraphExecDestroy(exec);
      graph_failed(capture_key_, status != cudaSuccess ? str("capture: ", cudaGetErrorString(status))
                                                       : std::string("the pass did not record as a decode step"));
      return false;
    }
    capture_.exec = exec;
    if (auto it = graphs_.find(capture_key_); it != graphs_.end()) cudaGraphExecDestroy(it->second.exec);
    graphs_[capture_key_] = capture_;
    return true;
  }

  bool replay(uint64_t key, const KvCache& cache) override {
    if (!graphs_enabled_ || !have_batch_ || capturing_) return false;
    const auto it = graphs_.find(key);
    if (it == graphs_.end()) return false;
    const Graph& g = it->second;
    if (g.generation != buffers_generation_) {  // a scratch or batch buffer moved: every graph is stale
      reset_graphs();
      return false;
    }
    const auto* kv = dynamic_cast<const CudaKvCache*>(&cache);
    if (!kv || kv->serial_ != g.cache_serial || batch_view_.num_tokens != g.num_tokens ||
        batch_view_.num_logit_rows != g.num_logit_rows || batch_view_.num_seqs != g.num_seqs ||
        batch_view_.max_blocks != g.max_blocks)
      return false;
    // The host-side checks the recorded ops would have made on this batch.
    check_tokens(g.vocab, g.max_positions);
    check_kv_slots(g.block_size, g.kv_blocks);
    DeviceGuard guard(device_);
    QS_CUDA_CHECK(cudaGraphLaunch(g.exec, stream_));
    return true;
  }

  void reset_graphs() override {
    if (graphs_.empty()) return;
    DeviceGuard guard(device_);
    for (auto& [key, graph] : graphs_) cudaGraphExecDestroy(graph.exec);  // in-flight launches still finish
    graphs_.clear();
  }

 private:
  // A recorded decode step and what replaying it needs to hold.
  struct Graph {
    cudaGraphExec_t exec = nullptr;
    uint64_t cache_serial = 0, generation = 0;
    int64_t num_tokens = 0, num_logit_rows = 0, num_seqs = 0, max_blocks = 0;
    // The host checks of the recorded ops, redone on each replayed batch.
    int64_t vocab = -1, max_positions = -1, block_size = 0, kv_blocks = 0;
  };

  void graph_failed(uint64_t key, const std::string& why) {
    failed_graphs_.insert(key);  // not retried: each try costs an extra pass's worth of host work
    cuda::log_warning(str("CUDA graph for decode key ", key, " could not be recorded (", why,
                          "); those steps run without a graph").c_str());
  }

  // Token ids inside the vocabulary and positions inside the position table (max_positions < 0: none).
  void check_tokens(int64_t vocab, int64_t max_positions) const {
    for (int32_t id : layout_.token_ids)
      QS_CHECK(id >= 0 && id < vocab, ErrorCode::kInvalidArgument, "token id ", id, " is outside the vocabulary (",
               vocab, " tokens)");
    if (max_positions >= 0)
      for (int32_t pos : layout_.positions)
        QS_CHECK(pos < max_positions, ErrorCode::kInvalidArgument, "position ", pos, " is beyond the model's ",
                 max_positions, " positions");
  }

  // Every token's slot must be inside its sequence's block table and the pool (kernels trust the tables).
  void check_kv_slots(int64_t block_size, int64_t pool_blocks) const {
    const int64_t T = int64_t(layout_.token_ids.size());
    for (int64_t t = 0; t < T; ++t) {
      const int32_t s = layout_.seq_of_token[size_t(t)], pos = layout_.positions[size_t(t)];
      const auto& table = layout_.block_tables[size_t(s)];
      QS_CHECK(pos / block_size < int64_t(table.size()), ErrorCode::kInternal, "token ", t, " at position ", pos,
               " is past sequence ", s, "'s ", table.size(), " KV blocks");
      QS_CHECK(pos < layout_.seq_lens[size_t(s)], ErrorCode::kInternal, "token ", t, " at position ", pos,
               " is past sequence ", s, "'s length ", layout_.seq_lens[size_t(s)]);
      for (int64_t b = 0; b <= pos / block_size; ++b) {
        const int32_t block = table[size_t(b)];
        QS_CHECK(block >= 0 && block < pool_blocks, ErrorCode::kInternal, "KV block ", block, " of sequence ", s,
                 " is outside the cache's ", pool_blocks, " blocks");
      }
    }
  }

  static float* f32(const Tensor& t) { return static_cast<float*>(t.data); }

  void check_activation(const Tensor& t, int64_t rows, int64_t cols, const char* what) const {
    QS_CHECK(t.dtype == DType::F32, ErrorCode::kInternal, what, " is ", dtype_name(t.dtype),
             "; the CUDA backend's activations are F32");
    QS_CHECK(t.rows == rows && t.cols == cols, ErrorCode::kInternal, what, " is ", t.rows, " x ", t.cols,
             ", expected ", rows, " x ", cols);
    QS_CHECK(t.data || rows * cols == 0, ErrorCode::kInternal, what, " has no data");
  }

  void require_batch(const char* op) const {
    QS_CHECK(have_batch_, ErrorCode::kInternal, op, " called before begin_batch");
  }

  std::unique_ptr<DeviceBuffer> upload(const void* host, size_t bytes) {
    auto buffer = allocate(bytes);
    // Pageable source: the call returns once the bytes are staged, so the host copy may go at once.
    // TODO(perf): pinned double-buffered staging to overlap the PCIe copy with quantizing the previous tensor.
    if (bytes) QS_CUDA_CHECK(cudaMemcpyAsync(buffer->data(), host, bytes, cudaMemcpyHostToDevice, stream_));
    return buffer;
  }

  // A scratch buffer of at least `bytes`; grows by half again so a growing batch does not reallocate each pass.
  void* scratch(std::unique_ptr<DeviceBuffer>& holder, size_t bytes) {
    if (!holder || holder->bytes() < bytes) {
      QS_CHECK(!capturing_, ErrorCode::kInternal, "a scratch buffer would move while a CUDA graph is recorded");
      const size_t want = std::max(bytes, holder ? holder->bytes() * 3 / 2 : size_t(0));
      holder.reset();  // cudaFree waits for the work that still reads the old one
      holder = allocate(std::max<size_t>(want, 256));
      ++buffers_generation_;  // graphs recorded with the old address are stale
    }
    return holder->data();
  }

  static cuda::DequantView dequant_view(const CudaLinear& lin) {
    cuda::DequantView view;
    view.data = lin.weight->data();
    if (lin.blocks) {
      view.kind = cuda::DequantView::kBlocks;
      view.ld = lin.in_features / 32;
      view.block_kind = lin.block_kind;
      return view;
    }
    switch (lin.precision) {
      case Precision::kInt8:
      case Precision::kInt8WeightOnly:
        view.kind = cuda::DequantView::kPerChannelInt8;
        view.ld = lin.padded_k;
        view.scales = static_cast<const float*>(lin.scales->data());
        break;
      case Precision::kInt8Naive:
        view.kind = cuda::DequantView::kPerTensorUint8;
        view.ld = lin.in_features;
        view.scales = static_cast<const float*>(lin.scales->data());
        break;
      default:
        view.kind = cuda::DequantView::kFloat;
        view.float_type = lin.float_type;
        view.ld = lin.in_features;
        break;
    }
    return view;
  }

  QuantError measure_error(const void* original, DType original_type, const cuda::DequantView& view, int64_t N,
                           int64_t K) {
    return cuda::measure_quant_error_device(original, original_type, view, N, K, error_scratch_->data(), stream_);
  }

  void float_gemm(cuda::GemmType type, float* y, const void* x, const void* w, const float* bias, Activation act,
                  int64_t T, int64_t N, int64_t K) {
    const auto r = gemm_->matmul(type, y, x, w, bias, act, T, N, K, /*ldx=*/K, /*ldw=*/K, /*ldy=*/N);
    QS_CHECK(r.ran, ErrorCode::kUnsupported, "cuBLASLt has no ", gemm_type_name(type), " GEMM algorithm for ", T,
             " x ", K, " by ", N, " x ", K, " (activation ", activation_name(act), ") on ", device_name_);
    if (!r.epilogue_applied) cuda::bias_activation(y, bias, act, T, N, stream_);
  }

  void int8_linear(float* y, const float* x, const CudaLinear& lin, Activation act, int64_t T) {
    const int64_t N = lin.out_features, K = lin.in_features, Np = lin.padded_n, Kp = lin.padded_k;
    auto* xq = static_cast<int8_t*>(scratch(scratch_xq_, size_t(T * Kp)));
    auto* x_scales = static_cast<float*>(scratch(scratch_x_scales_, size_t(T) * sizeof(float)));
    auto* acc = static_cast<int32_t*>(scratch(scratch_acc_, size_t(T * Np) * sizeof(int32_t)));
    const auto* w = static_cast<const int8_t*>(lin.weight->data());
    cuda::quantize_rows_int8(xq, x_scales, x, T, K, Kp, stream_);
    bool done = false;
    if (lin.int8_use_cublaslt)
      done = gemm_->matmul(cuda::GemmType::kInt8, acc, xq, w, nullptr, Activation::kNone, T, Np, Kp, Kp, Kp, Np).ran;
    if (!done) cuda::int8_gemm_dp4a(acc, xq, w, T, Np, Kp, stream_);
    cuda::dequantize_int32(y, acc, Np, x_scales, static_cast<const float*>(lin.scales->data()), lin.bias_data(), act,
                           T, N, stream_);
  }

  // cuBLAS int8 GEMMs are known to return wrong results for some shapes on some versions; each new (N, K) is
  // run once at load on random activations against a plain reference kernel. False: use the dp4a kernel.
  bool int8_gemm_is_trustworthy(const int8_t* w, int64_t Np, int64_t Kp) {
    const auto key = std::make_pair(Np, Kp);
    if (auto it = int8_shape_ok_.find(key); it != int8_shape_ok_.end()) return it->second;
    constexpr int64_t max_t = *std::max_element(std::begin(kCheckTokens), std::end(kCheckTokens));
    auto x = allocate(size_t(max_t * Kp));
    auto got = allocate(size_t(max_t * Np) * sizeof(int32_t));
    auto want = allocate(size_t(max_t * Np) * sizeof(int32_t));
    auto mismatches = allocate(sizeof(unsigned int));
    auto* xq = static_cast<int8_t*>(x->data());
    auto* got_p = static_cast<int32_t*>(got->data());
    auto* want_p = static_cast<int32_t*>(want->data());
    auto* count_p = static_cast<unsigned int*>(mismatches->data());
    cuda::fill_random_int8(xq, max_t * Kp, 0x5eed1234u, stream_);
    bool ok = true;
    int verified = 0;
    std::string why;
    for (int64_t T : kCheckTokens) {
      const auto r = gemm_->matmul(cuda::GemmType::kInt8, got_p, xq, w, nullptr, Activation::kNone, T, Np, Kp, Kp, Kp,
                                   Np);
      if (!r.ran) continue;  // no algorithm for this T: such calls take the dp4a kernel at run time anyway
      ++verified;
      cuda::int8_gemm_reference(want_p, xq, w, T, Np, Kp, stream_);
      QS_CUDA_CHECK(cudaMemsetAsync(count_p, 0, sizeof(unsigned int), stream_));
      cuda::count_mismatches(count_p, got_p, want_p, T, Np, Np, stream_);
      unsigned int count = 0;
      QS_CUDA_CHECK(cudaMemcpyAsync(&count, count_p, sizeof(count), cudaMemcpyDeviceToHost, stream_));
      QS_CUDA_CHECK(cudaStreamSynchronize(stream_));
      if (count) {
        ok = false;
        why = str("cuBLASLt int8 GEMM returned ", count, " wrong values of ", T * Np, " for T=", T);
        break;
      }
    }
    if (ok && verified == 0) {  // nothing could be checked: do not trust it blindly
      ok = false;
      why = "cuBLASLt has no int8 algorithm for the checked batch sizes";
    }
    if (!ok)
      cuda::log_warning(str(why, " at N=", Np, " K=", Kp, " on ", device_name_,
                            "; this shape uses the dp4a int8 kernel instead").c_str());
    int8_shape_ok_[key] = ok;
    return ok;
  }

  int device_;
  std::string device_name_;
  std::shared_ptr<MemoryStats> stats_;
  cudaStream_t stream_ = nullptr;  // every op of this backend runs on it, in order
  std::unique_ptr<DeviceBuffer> workspace_;
  std::unique_ptr<cuda::CublasLtGemm> gemm_;
  std::unique_ptr<DeviceBuffer> error_scratch_;
  bool int8_force_dp4a_ = false;
  std::map<std::pair<int64_t, int64_t>, bool> int8_shape_ok_;  // (Np, Kp) -> cuBLASLt verified at load

  // The pass's batch: pinned staging, its device copy, and a host copy for the host-side checks.
  void* staging_ = nullptr;
  size_t staging_bytes_ = 0;
  cudaEvent_t batch_uploaded_ = nullptr;
  std::unique_ptr<DeviceBuffer> batch_device_;
  cuda::BatchView batch_view_;
  BatchLayout layout_;
  bool have_batch_ = false;

  // Per-op temporaries, grown on demand and kept (they never exceed the largest layer's needs).
  std::unique_ptr<DeviceBuffer> scratch_xq_, scratch_x_scales_, scratch_acc_, scratch_x_half_, scratch_w_;
  uint64_t buffers_generation_ = 0;  // bumped whenever scratch() moves a buffer (batch buffer included)

  // CUDA graphs per decode key (bucket and block-table width, chosen by the model).
  bool graphs_enabled_ = true;
  std::map<uint64_t, Graph> graphs_;
  std::set<uint64_t> failed_graphs_;
  bool capturing_ = false;
  uint64_t capture_key_ = 0;
  Graph capture_;  // the graph being recorded
};

}  // namespace
}  // namespace cuda

bool cuda_available() {
  static const bool available = [] {
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);  // no driver / no device: an error code, not a crash
    if (status != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return count > 0;
  }();
  return available;
}

std::unique_ptr<Backend> make_cuda_backend(int device) {
  QS_CHECK(cuda_available(), ErrorCode::kUnsupported,
           "no CUDA device is available (no GPU, or no NVIDIA driver); use --device cpu");
  int count = 0;
  QS_CUDA_CHECK(cudaGetDeviceCount(&count));
  QS_CHECK(device >= 0 && device < count, ErrorCode::kInvalidArgument, "CUDA device ", device,
           " does not exist; this machine has ", count, " (cuda:0 .. cuda:", count - 1, ")");
  return std::make_unique<cuda::CudaBackend>(device);
}

}  // namespace qs
