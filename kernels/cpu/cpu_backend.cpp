// The CPU backend: our packed-panel GEMMs for fp32/fp16/bf16 and VNNI W8A8 from decode to prefill (gemv.h),
// oneDNN where they do not apply (u8s8s32 W8A8 without VNNI, sgemm for int8-weight-only/-naive prefill), an
// AVX-512 GEMV for those at small batch, block GEMVs for int4-weight-only (gemv_blocks.h), and the ops of
// cpu_ops.cpp. Activations are fp32.
#include <omp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include <oneapi/dnnl/dnnl.h>

#include "kernels/backend.h"
#include "kernels/cpu/attention_paged.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/gemv.h"
#include "kernels/cpu/gemv_blocks.h"
#include "kernels/cpu/quantize.h"
#include "kernels/error.h"

namespace qs {
namespace {

// N = out features, K = in features, T = tokens.

class CpuBuffer final : public DeviceBuffer {
 public:
  explicit CpuBuffer(size_t bytes) : bytes_(bytes) {
    data_ = std::aligned_alloc(64, std::max<size_t>(64, (bytes + 63) / 64 * 64));
    QS_CHECK(data_ != nullptr, ErrorCode::kResourceExhausted, "out of host memory allocating ", bytes, " bytes");
  }
  ~CpuBuffer() override { std::free(data_); }
  void* data() override { return data_; }
  size_t bytes() const override { return bytes_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

template <typename T>
std::vector<T> to_vector(const T* p, int64_t n) {
  return std::vector<T>(p, p + n);
}

class CpuLinear final : public LinearWeight {
 public:
  // fp32 / fp16 / bf16: packed panels of cpu::kPanelWidth rows (gemv.h), one layout from decode to prefill.
  // weight_bytes counts the N x K weights, not the zero rows that pad the last panel (as every backend reports).
  std::vector<float> w_f32;       // fp32: packed_elements(N, K)
  std::vector<uint16_t> w_half;   // fp16 / bf16: packed_elements(N, K)
  std::vector<int8_t> w_i8;       // int8 modes: (N, K), scales in row_scale (N); empty where w_vnni holds them
  std::vector<int8_t> w_vnni;     // W8A8 (int8, -smooth, -mixed) on VNNI CPUs: vnni_packed_bytes(N, K) (gemv.h)
  std::vector<uint8_t> w_u8;      // int8-naive: (N, K), one scale and zero point
  // int4-weight-only, and int8-weight-only by groups of 32: N rows of K/32 blocks of block_type, in tiles
  // (gemv_blocks.h)
  std::vector<uint8_t> w_blocks;
  cpu::BlockType block_type = cpu::BlockType::kQ4_1;
  std::vector<float> row_scale;   // (N)
  std::vector<int32_t> row_sum;   // int8 W8A8: sum_k w_i8[n, k], for the +128 shift of activations (N)
  // W8A8 by groups of 32 (int8, int8-smooth): the weights VNNI-packed as q + 128 (gemv.h), their fp16 scales
  // packed by panel (w8a8_group_scale_count); w_vnni, row_scale and row_sum are then empty.
  std::vector<uint8_t> w_vnni_offset;
  std::vector<uint16_t> w_group_scale;
  float tensor_scale = 1.0f;      // int8-naive
  int32_t zero_point = 0;         // int8-naive
  std::vector<float> bias;        // (N) or empty
  float outlier_threshold = 6.0f; // int8-mixed

  void dequantize_row(int64_t n, float* dst) const {
    const int64_t K = in_features;
    switch (precision) {
      case Precision::kFp32:
      case Precision::kFp16:
      case Precision::kBf16:
        cpu::unpack_row(dst, packed_weights(), packed_type(), n, out_features, K);
        break;
      case Precision::kInt8Naive:
        for (int64_t k = 0; k < K; ++k) {
          dst[k] = tensor_scale * float(int32_t(w_u8[size_t(n * K + k)]) - zero_point);
        }
        break;
      case Precision::kInt4WeightOnly:
        cpu::dequantize_block_row(dst, w_blocks.data(), block_type, n, out_features, K);
        break;
      default:  // int8, int8-weight-only (per row or in Q8_0 blocks), int8-mixed, int8-smooth
        if (!w_blocks.empty()) {
          cpu::dequantize_block_row(dst, w_blocks.data(), block_type, n, out_features, K);
          break;
        }
        if (!w_group_scale.empty()) {
          for (int64_t g = 0; g < K / cpu::kW8A8Group; ++g) {
            const float scale = f16_to_f32(cpu::w8a8_group_scale(w_group_scale.data(), n, g, K));
            for (int64_t k = g * cpu::kW8A8Group; k < (g + 1) * cpu::kW8A8Group; ++k) dst[k] = scale * float(q(n, k));
          }
          break;
        }
        for (int64_t k = 0; k < K; ++k) dst[k] = row_scale[size_t(n)] * float(q(n, k));
        break;
    }
  }

  // int8 weight (n, k) in whichever layout holds it.
  int8_t q(int64_t n, int64_t k) const {
    if (!w_vnni_offset.empty()) {   // q + 128 as a byte: its top bit flipped
      return int8_t(uint8_t(cpu::vnni_weight(reinterpret_cast<const int8_t*>(w_vnni_offset.data()), n, k,
                                             in_features)) ^ 0x80);
    }
    return w_vnni.empty() ? w_i8[size_t(n * in_features + k)] : cpu::vnni_weight(w_vnni.data(), n, k, in_features);
  }
  // fp32 / fp16 / bf16 (packed).
  cpu::WeightType packed_type() const {
    return precision == Precision::kFp32 ? cpu::WeightType::kF32
           : precision == Precision::kFp16 ? cpu::WeightType::kF16 : cpu::WeightType::kBF16;
  }
  const void* packed_weights() const {
    return precision == Precision::kFp32 ? static_cast<const void*>(w_f32.data()) : w_half.data();
  }
  // int8-weight-only and int8-naive (row-major (N, K)).
  cpu::WeightType gemv_type() const {
    return precision == Precision::kInt8Naive ? cpu::WeightType::kU8 : cpu::WeightType::kI8;
  }
  const void* gemv_weights() const {
    return precision == Precision::kInt8Naive ? static_cast<const void*>(w_u8.data()) : w_i8.data();
  }
};

// The KV cache in fp32, fp16, bf16 or int8, in the block layout of attention_paged.h, all layers of one block side
// by side: block b is [layer][K, V][NKV x HD x BS (and int8's NKV x BS scales)] at b * block_bytes(). The memory
// is one anonymous mapping that the kernel commits page by page as blocks are first written; the block manager
// hands out low block numbers first, so the resident part follows the most blocks ever in use, not the budget.
// With layer groups (KvCacheConfig::layer_group) each group is such a pool of its own layers and blocks, read
// through its own block tables.
class CpuKvCache final : public KvCache {
 public:
  explicit CpuKvCache(const KvCacheConfig& config) : config_(config) {
    QS_CHECK(config.num_layers > 0 && config.num_blocks > 0 && config.block_size > 0 && config.num_kv_heads > 0 &&
                 config.head_dim > 0 && config.num_blocks < INT32_MAX,
             ErrorCode::kInvalidArgument, "KV cache config must be all positive: layers ", config.num_layers,
             ", blocks ", config.num_blocks, ", block size ", config.block_size, ", kv heads ", config.num_kv_heads,
             ", head dim ", config.head_dim);
    QS_CHECK(cpu::attention_reads_kv_dtype(config.dtype), ErrorCode::kUnsupported,
             "the CPU backend stores the KV cache in fp32, fp16, bf16 or int8, not ", dtype_name(config.dtype));
    QS_CHECK(config.layer_group.empty() ||
                 (int64_t(config.layer_group.size()) == config.num_layers && config.group_layers(0) > 0 &&
                  config.group_layers(1) > 0 && config.group_layers(0) + config.group_layers(1) == config.num_layers &&
                  config.window_num_blocks > 0 && config.window_num_blocks < INT32_MAX),
             ErrorCode::kInvalidArgument, "KV cache layer groups must give each of the ", config.num_layers,
             " layers group 0 or 1, both groups some layers, and the second group a positive block count (",
             config.window_num_blocks, ")");
    pool_bytes_ = size_t(config.num_kv_heads * config.block_size) * kv_head_bytes(config.dtype, config.head_dim);
    elem_bytes_ = dtype_bytes(config.dtype, 1);
    layer_pool_.resize(size_t(config.num_layers));
    layer_index_.resize(size_t(config.num_layers));
    for (int64_t l = 0; l < config.num_layers; ++l) {
      const int32_t g = config.layer_group.empty() ? 0 : config.layer_group[size_t(l)];
      layer_pool_[size_t(l)] = g;
      layer_index_[size_t(l)] = pools_[size_t(g)].layers++;
    }
    for (int32_t g = 0; g < int32_t(config.num_groups()); ++g) {
      Pool& p = pools_[size_t(g)];
      p.num_blocks = config.group_blocks(g);
      p.block_bytes = 2 * size_t(p.layers) * pool_bytes_;
      p.mapped_bytes = round_to_page(p.block_bytes * size_t(p.num_blocks));
      p.base = mmap(nullptr, p.mapped_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
                    0);
      QS_CHECK(p.base != MAP_FAILED, ErrorCode::kResourceExhausted, "cannot map ", p.mapped_bytes,
               " bytes for the KV cache: ", std::strerror(errno));
    }
  }
  ~CpuKvCache() override {
    for (Pool& p : pools_)
      if (p.base && p.base != MAP_FAILED) munmap(p.base, p.mapped_bytes);
  }
  CpuKvCache(const CpuKvCache&) = delete;
  CpuKvCache& operator=(const CpuKvCache&) = delete;

  const KvCacheConfig& config() const override { return config_; }
  size_t bytes() const override {
    size_t total = 0;
    for (const Pool& p : pools_) total += p.block_bytes * size_t(p.num_blocks);
    return total;
  }
  size_t committed_bytes() const override {
    size_t total = 0;
    for (const Pool& p : pools_) {
      total += std::min(p.block_bytes * size_t(p.num_blocks),
                        round_to_page(p.block_bytes * size_t(p.blocks_touched.load(std::memory_order_relaxed))));
    }
    return total;
  }
  DType dtype() const { return config_.dtype; }
  // The layer's group: 0 reads BatchLayout::block_tables, 1 window_block_tables.
  int32_t group(int64_t layer) const { return layer_pool_[size_t(layer)]; }
  // Elements between block b and block b + 1 of one layer's K (or V).
  int64_t block_stride(int64_t layer) const {
    return int64_t(2 * size_t(pools_[size_t(group(layer))].layers) * pool_bytes_ / elem_bytes_);
  }
  void* k(int64_t layer) { return at(layer, size_t(2 * layer_index_[size_t(layer)]) * pool_bytes_); }
  void* v(int64_t layer) { return at(layer, size_t(2 * layer_index_[size_t(layer)] + 1) * pool_bytes_); }
  // Called with each pass's batch (the tables of `group`) before its tokens are written: keeps the committed
  // high-water mark.
  void note_blocks(const BatchLayout& batch, int32_t group) {
    Pool& p = pools_[size_t(group)];
    int64_t top = p.blocks_touched.load(std::memory_order_relaxed);
    for (size_t t = 0; t < batch.positions.size(); ++t) {
      const auto& table = batch.block_tables[size_t(batch.seq_of_token[t])];
      const size_t i = size_t(batch.positions[t] / config_.block_size);
      if (i < table.size()) top = std::max<int64_t>(top, int64_t(table[i]) + 1);
    }
    p.blocks_touched.store(std::min<int64_t>(top, p.num_blocks), std::memory_order_relaxed);
  }

 private:
  struct Pool {
    int64_t layers = 0;
    int64_t num_blocks = 0;
    size_t block_bytes = 0;       // one block over the pool's layers, K and V
    size_t mapped_bytes = 0;
    void* base = nullptr;
    std::atomic<int64_t> blocks_touched{0};   // 1 + the highest block ever written
  };
  static size_t round_to_page(size_t bytes) {
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    return (bytes + page - 1) / page * page;
  }
  void* at(int64_t layer, size_t offset) { return static_cast<char*>(pools_[size_t(group(layer))].base) + offset; }

  KvCacheConfig config_;
  size_t pool_bytes_ = 0;             // one layer's K (or V) of one block: NKV x HD x BS elements (+ scales)
  size_t elem_bytes_ = 0;             // of one element of the cache's dtype
  Pool pools_[2];                     // the second only with layer groups
  std::vector<int32_t> layer_pool_;   // per layer: its group's pool
  std::vector<int64_t> layer_index_;  // per layer: its place among its pool's layers
};

void check_dnnl(dnnl_status_t status, const char* what) {
  QS_CHECK(status == dnnl_success, ErrorCode::kInternal, "oneDNN ", what, " failed with status ", int(status));
}

size_t read_proc_kb(const char* file, const char* key) {
  std::ifstream in(file);
  std::string line;
  const size_t key_len = std::strlen(key);
  while (std::getline(in, line)) {
    if (line.compare(0, key_len, key) == 0) return size_t(std::strtoull(line.c_str() + key_len, nullptr, 10)) * 1024;
  }
  return 0;
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) : avx512_(cpu::gemv_avx512_available()), vnni_(cpu::gemv_vnni_available()) {
    if (threads > 0) omp_set_num_threads(threads);
  }

  std::string name() const override { return "cpu"; }
  DType activation_dtype() const override { return DType::F32; }
  // Every precision; int8-smooth is W8A8 on weights the engine has already smoothed (calibrated at load).
  bool supports(Precision) const override { return true; }
  // int8-weight-only's block GEMVs run everywhere; W8A8 by groups has only a VNNI kernel.
  bool supports_weight_groups(Precision precision) const override {
    return has_weight_groups(precision) && (precision == Precision::kInt8WeightOnly || vnni_);
  }

  MemoryInfo memory_info() const override {
    MemoryInfo info;
    info.device = "cpu";
    info.used_bytes = read_proc_kb("/proc/self/status", "VmRSS:");
    info.peak_bytes = read_proc_kb("/proc/self/status", "VmHWM:");
    info.total_bytes = read_proc_kb("/proc/meminfo", "MemTotal:");
    return info;
  }

  std::unique_ptr<DeviceBuffer> allocate(size_t bytes) override { return std::make_unique<CpuBuffer>(bytes); }
  void copy_to_host(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void synchronize() override {}

  std::unique_ptr<LinearWeight> make_linear(const HostTensor& weight, const HostTensor* bias, Precision precision,
                                            const LinearOptions& options) override {
    const int64_t N = weight.rows, K = weight.cols;
    auto lin = std::make_unique<CpuLinear>();
    lin->out_features = N;
    lin->in_features = K;
    lin->precision = precision;
    lin->original_bytes = size_t(N * K) * 4;
    lin->outlier_threshold = options.outlier_threshold;
    std::vector<float> w(static_cast<size_t>(N * K));
    convert_to_f32(w.data(), weight.data, weight.dtype, N * K);
    if (bias) {
      QS_CHECK(bias->numel() == N, ErrorCode::kInvalidModel, "bias has ", bias->numel(), " elements, expected ", N);
      lin->bias.resize(size_t(N));
      convert_to_f32(lin->bias.data(), bias->data, bias->dtype, N);
    }
    QS_CHECK(options.group_size == 0 ||
                 (options.group_size == kInt8WeightGroup && supports_weight_groups(precision)),
             ErrorCode::kInvalidArgument, "weight groups of ", options.group_size, " inputs with ",
             precision_name(precision), ": this CPU has groups of ", kInt8WeightGroup,
             " for int8-weight-only", vnni_ ? ", int8 and int8-smooth" : " (W8A8 groups need AVX-512 VNNI)");
    if (options.group_size != 0 && precision == Precision::kInt8WeightOnly) {
      make_int8_groups(*lin, weight, w.data());
    } else if (options.group_size != 0) {
      make_w8a8_groups(*lin, weight, w.data());
    } else switch (precision) {
      case Precision::kFp32:
        lin->w_f32.resize(cpu::packed_elements(N, K));
        cpu::pack_weights(lin->w_f32.data(), w.data(), cpu::WeightType::kF32, N, K);
        lin->weight_bytes = size_t(N * K) * 4;
        return lin;
      case Precision::kFp16:
      case Precision::kBf16: {
        lin->w_half.resize(cpu::packed_elements(N, K));
        cpu::pack_weights(lin->w_half.data(), w.data(), lin->packed_type(), N, K);
        lin->weight_bytes = size_t(N * K) * 2;
        break;
      }
      case Precision::kInt4WeightOnly:
        make_blocks(*lin, weight, w.data());
        break;
      case Precision::kInt8Naive:
        lin->w_u8.resize(size_t(N * K));
        cpu::quantize_per_tensor_uint8(lin->w_u8.data(), &lin->tensor_scale, &lin->zero_point, w.data(), N * K);
        lin->weight_bytes = lin->w_u8.size() + sizeof(float) + sizeof(int32_t);
        break;
      default: {  // int8 family: symmetric per-output-channel
        lin->w_i8.resize(size_t(N * K));
        lin->row_scale.resize(size_t(N));
        cpu::quantize_per_channel_int8(lin->w_i8.data(), lin->row_scale.data(), w.data(), N, K);
        lin->weight_bytes = lin->w_i8.size() + lin->row_scale.size() * 4;
        if (precision != Precision::kInt8WeightOnly) {
          lin->row_sum.resize(size_t(N));
          for (int64_t n = 0; n < N; ++n) {
            int32_t s = 0;
            for (int64_t k = 0; k < K; ++k) s += lin->w_i8[size_t(n * K + k)];
            lin->row_sum[size_t(n)] = s;
          }
          if (vnni_) {   // one VNNI kernel from decode to prefill, over weights packed for it
            lin->w_vnni.resize(cpu::vnni_packed_bytes(N, K));
            cpu::pack_weights_vnni(lin->w_vnni.data(), lin->w_i8.data(), N, K);
            std::vector<int8_t>().swap(lin->w_i8);
          }
        }
        break;
      }
    }
    if (options.compute_error) {
      std::vector<float> deq(static_cast<size_t>(N * K));
#pragma omp parallel for schedule(static)
      for (int64_t n = 0; n < N; ++n) lin->dequantize_row(n, deq.data() + n * K);
      lin->error = measure_quant_error(w.data(), deq.data(), N * K);
    }
    return lin;
  }

  DenseWeight make_dense(const HostTensor& tensor, DType storage) override {
    // The CPU keeps dense weights (norms, biases, position tables) in fp32 whatever is asked: they are small.
    DenseWeight d;
    d.rows = tensor.rows;
    d.cols = tensor.cols;
    d.dtype = DType::F32;
    d.buffer = allocate(size_t(tensor.numel()) * 4);
    convert_to_f32(static_cast<float*>(d.buffer->data()), tensor.data, tensor.dtype, tensor.numel());
    return d;
  }

  std::unique_ptr<KvCache> make_kv_cache(const KvCacheConfig& config) override {
    return std::make_unique<CpuKvCache>(config);
  }
  DType default_kv_cache_dtype() const override { return DType::F16; }
  bool supports_kv_cache_dtype(DType dtype) const override { return cpu::attention_reads_kv_dtype(dtype); }

  bool supports_kv_layer_groups() const override { return true; }

  void begin_batch(const BatchLayout& layout) override {
    batch_ = &layout;
    // The sliding group's layers see the same tokens through their own tables: one view for the whole pass.
    if (!layout.window_block_tables.empty()) {
      window_batch_.token_ids = layout.token_ids;
      window_batch_.positions = layout.positions;
      window_batch_.seq_of_token = layout.seq_of_token;
      window_batch_.logit_rows = layout.logit_rows;
      window_batch_.seq_lens = layout.seq_lens;
      window_batch_.block_tables = layout.window_block_tables;
    }
  }

  void embedding(Tensor out, const LinearWeight& table, const DenseWeight* positions_table) override {
    const auto& lin = static_cast<const CpuLinear&>(table);
    const int64_t T = out.rows, C = out.cols;
    QS_CHECK(C == lin.in_features && T == batch_->num_tokens(), ErrorCode::kInternal, "embedding shape mismatch");
    float* y = f32(out);
    for (int64_t t = 0; t < T; ++t) {
      const int32_t id = batch_->token_ids[size_t(t)];
      QS_CHECK(id >= 0 && id < lin.out_features, ErrorCode::kInvalidArgument, "token id ", id,
               " is outside the vocabulary (", lin.out_features, " tokens)");
      lin.dequantize_row(id, y + t * C);
    }
    if (positions_table) {
      for (int64_t t = 0; t < T; ++t) {
        QS_CHECK(batch_->positions[size_t(t)] < positions_table->rows, ErrorCode::kInvalidArgument, "position ",
                 batch_->positions[size_t(t)], " is beyond the model's ", positions_table->rows, " positions");
      }
      cpu::embedding_add_positions(y, dense(*positions_table), batch_->positions.data(), T, C);
    }
  }

  void linear(Tensor out, Tensor in, const LinearWeight& weight, Activation act) override {
    const auto& lin = static_cast<const CpuLinear&>(weight);
    const int64_t T = in.rows, K = in.cols, N = lin.out_features;
    QS_CHECK(K == lin.in_features && out.rows == T && out.cols == N, ErrorCode::kInternal, "linear shape mismatch: in (",
             T, ", ", K, "), weight (", N, ", ", lin.in_features, "), out (", out.rows, ", ", out.cols, ")");
    const float* x = f32(in);
    float* y = f32(out);
    if (T == 0) return;
    switch (lin.precision) {
      case Precision::kFp32:
      case Precision::kFp16:
      case Precision::kBf16:
        // Packed panels, converted in registers: decode streams the weights once, prefill reuses each panel
        // from cache for every tile of tokens; nothing is dequantized to memory.
        cpu::gemm_packed(y, x, lin.packed_weights(), lin.packed_type(), T, N, K);
        break;
      case Precision::kInt8:
      case Precision::kInt8Smooth:   // smoothing is folded into the weights and the preceding norm at load
        linear_w8a8(y, x, lin, T, N, K);
        break;
      case Precision::kInt8Mixed:
        linear_mixed(y, x, lin, T, N, K);
        break;
      case Precision::kInt4WeightOnly:
        // Decode and small batches stream the blocks once a pass of up to 8 tokens; prefill dequantizes tiles
        // of rows for sgemm, as int8-weight-only does.
        if (T <= cpu::kGemvBatchLimit) {
          cpu::gemv_blocks(y, x, lin.w_blocks.data(), lin.block_type, T, N, K);
        } else {
          linear_dequantize_sgemm(y, x, lin, T, N, K);
        }
        break;
      default:  // int8-weight-only, int8-naive: int8 weights, activations in fp32
        if (!lin.w_blocks.empty()) {   // int8-weight-only by groups: as int4-weight-only runs its blocks
          if (T <= cpu::kGemvBatchLimit) {
            cpu::gemv_blocks(y, x, lin.w_blocks.data(), lin.block_type, T, N, K);
          } else {
            linear_dequantize_sgemm(y, x, lin, T, N, K);
          }
        } else if (T <= cpu::kGemvBatchLimit && avx512_) {
          const float zp = lin.precision == Precision::kInt8Naive ? float(lin.zero_point) : 0.0f;
          const float* scales = lin.row_scale.empty() ? nullptr : lin.row_scale.data();
          for (int64_t t0 = 0; t0 < T; t0 += cpu::kGemvMaxRows) {
            const int64_t rows = std::min(cpu::kGemvMaxRows, T - t0);
            cpu::gemv_avx512(y + t0 * N, x + t0 * K, lin.gemv_weights(), lin.gemv_type(), scales, zp, rows, N, K);
          }
          if (lin.precision == Precision::kInt8Naive) {
            for (int64_t i = 0; i < T * N; ++i) y[i] *= lin.tensor_scale;
          }
        } else {
          linear_dequantize_sgemm(y, x, lin, T, N, K);
        }
        break;
    }
    epilogue(y, lin, T, N, act);
  }

  void layernorm(Tensor out, Tensor in, const DenseWeight& w, const DenseWeight* b, float eps) override {
    cpu::layernorm_forward(f32(out), f32(in), dense(w), b ? dense(*b) : nullptr, in.rows, in.cols, eps);
  }
  void rmsnorm(Tensor out, Tensor in, const DenseWeight& w, float eps) override {
    cpu::rmsnorm_forward(f32(out), f32(in), dense(w), in.rows, in.cols, eps);
  }
  void add(Tensor out, Tensor a, Tensor b) override {
    QS_CHECK(a.rows == b.rows && a.cols == b.cols, ErrorCode::kInternal, "add shape mismatch");
    cpu::add_forward(f32(out), f32(a), f32(b), a.rows * a.cols);
  }
  void silu_mul(Tensor out, Tensor gate_up) override {
    cpu::silu_mul_forward(f32(out), f32(gate_up), gate_up.rows, gate_up.cols / 2);
  }
  void rope(Tensor qkv, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, int64_t rotary_dim,
            float theta) override {
    cpu::rope_forward(f32(qkv), batch_->positions.data(), qkv.rows, num_heads, num_kv_heads, head_dim, rotary_dim,
                      theta);
  }
  void attention(Tensor out, Tensor qkv, KvCache& cache, int64_t layer, int64_t num_heads, int64_t num_kv_heads,
                 int64_t head_dim) override {
    attention_window(out, qkv, cache, layer, num_heads, num_kv_heads, head_dim, 0);
  }
  void attention_window(Tensor out, Tensor qkv, KvCache& cache, int64_t layer, int64_t num_heads,
                        int64_t num_kv_heads, int64_t head_dim, int64_t window) override {
    auto& kv = static_cast<CpuKvCache&>(cache);
    QS_CHECK(layer >= 0 && layer < kv.config().num_layers && num_kv_heads == kv.config().num_kv_heads &&
                 head_dim == kv.config().head_dim,
             ErrorCode::kInternal, "attention: layer ", layer, " with ", num_kv_heads, " KV heads of ", head_dim,
             " does not match the KV cache");
    const int32_t group = kv.group(layer);
    QS_CHECK(group == 0 || batch_->window_block_tables.size() == batch_->block_tables.size(), ErrorCode::kInternal,
             "attention: layer ", layer, " keeps its KV in the sliding layers' pool but the batch has ",
             batch_->window_block_tables.size(), " of their block tables for ", batch_->block_tables.size(),
             " sequences");
    const BatchLayout& batch = group == 0 ? *batch_ : window_batch_;
    kv.note_blocks(batch, group);
    cpu::attention_paged_forward(f32(out), f32(qkv), kv.k(layer), kv.v(layer), kv.dtype(), batch,
                                 kv.config().block_size, num_heads, num_kv_heads, head_dim, kv.block_stride(layer),
                                 cpu::AttentionIsa::kAuto, window);
  }
  bool supports_op(BackendOp) const override { return true; }
  void gated_activation(Tensor out, Tensor gate_up, Activation act) override {
    QS_CHECK(act == Activation::kSilu || act == Activation::kGeluTanh, ErrorCode::kInternal,
             "gated_activation: only silu and gelu-tanh gates exist");
    if (act == Activation::kSilu) {
      cpu::silu_mul_forward(f32(out), f32(gate_up), gate_up.rows, gate_up.cols / 2);
    } else {
      cpu::gelu_tanh_mul_forward(f32(out), f32(gate_up), gate_up.rows, gate_up.cols / 2);
    }
  }
  void head_rmsnorm(Tensor qkv, const DenseWeight& q_weight, const DenseWeight& k_weight, int64_t num_heads,
                    int64_t num_kv_heads, int64_t head_dim, float eps) override {
    QS_CHECK(q_weight.rows * q_weight.cols == head_dim && k_weight.rows * k_weight.cols == head_dim &&
                 qkv.cols == (num_heads + 2 * num_kv_heads) * head_dim,
             ErrorCode::kInternal, "head_rmsnorm: weights or qkv do not match the head size ", head_dim);
    cpu::head_rmsnorm_forward(f32(qkv), dense(q_weight), dense(k_weight), qkv.rows, num_heads, num_kv_heads,
                              head_dim, eps);
  }
  void scale(Tensor x, float factor) override {
    float* p = f32(x);
    for (int64_t i = 0; i < x.rows * x.cols; ++i) p[i] *= factor;
  }
  void gather_logit_rows(Tensor out, Tensor in) override {
    const float* x = f32(in);
    float* y = f32(out);
    for (size_t i = 0; i < batch_->logit_rows.size(); ++i) {
      std::memcpy(y + int64_t(i) * in.cols, x + int64_t(batch_->logit_rows[i]) * in.cols, size_t(in.cols) * 4);
    }
  }

 private:
  static float* f32(Tensor t) { return static_cast<float*>(t.data); }
  static const float* dense(const DenseWeight& w) { return static_cast<const float*>(w.buffer->data()); }

  static void epilogue(float* y, const CpuLinear& lin, int64_t T, int64_t N, Activation act) {
    if (!lin.bias.empty()) {
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t n = 0; n < N; ++n) y[t * N + n] += lin.bias[size_t(n)];
      }
    }
    cpu::apply_activation(y, T * N, act);
  }

  // int4-weight-only: GGUF Q4_1 and Q8_0 blocks are kept as they are and Q4_0 ones rewritten as Q4_1 without
  // rounding (a 4-bit file is not rounded twice); anything else is rounded to nearest into Q4_1 from its floats.
  static void make_blocks(CpuLinear& lin, const HostTensor& weight, const float* w) {
    const int64_t N = lin.out_features, K = lin.in_features, n_blocks = N * K / kGgufBlock32;
    QS_CHECK(K % kGgufBlock32 == 0, ErrorCode::kUnsupported, "int4-weight-only quantizes blocks of ", kGgufBlock32,
             " inputs, and this weight (", N, " x ", K, ") has ", K, " inputs, not a multiple of ", kGgufBlock32,
             "; load it in another precision (e.g. int8-weight-only)");
    if (weight.dtype == DType::Q8_0) {
      lin.block_type = cpu::BlockType::kQ8_0;
      tile(lin, weight.data);
      return;
    }
    lin.block_type = cpu::BlockType::kQ4_1;   // from the file's Q4_1 blocks, or from Q4_0's or from rounding
    if (weight.dtype == DType::Q4_1) {
      tile(lin, weight.data);
      return;
    }
    std::vector<BlockQ4_1> blocks(static_cast<size_t>(n_blocks));
    if (weight.dtype != DType::Q4_0 ||
        !cpu::convert_q4_0_to_q4_1(blocks.data(), static_cast<const BlockQ4_0*>(weight.data), n_blocks)) {
      cpu::quantize_q4_1(blocks.data(), w, N * K);
    }
    tile(lin, blocks.data());
  }

  // Row-major blocks of lin.block_type into the tiles the block GEMVs read (gemv_blocks.h), as lin's weight.
  static void tile(CpuLinear& lin, const void* blocks) {
    const int64_t N = lin.out_features, K = lin.in_features;
    lin.w_blocks.resize(size_t(N * K / kGgufBlock32) * cpu::block_type_bytes(lin.block_type));
    cpu::tile_blocks(lin.w_blocks.data(), blocks, lin.block_type, N, K);
    lin.weight_bytes = lin.w_blocks.size();
  }

  // The weight in groups of 32 inputs as Q8_0 blocks (fp16 scale + 32 int8, 34 bytes): a Q8_0 source tensor as it
  // is (not rounded twice), anything else quantized; refused, naming the precision, if K is not whole groups.
  static std::vector<uint8_t> q8_0_blocks(const CpuLinear& lin, const HostTensor& weight, const float* w) {
    const int64_t N = lin.out_features, K = lin.in_features;
    QS_CHECK(K % kGgufBlock32 == 0, ErrorCode::kUnsupported, precision_name(lin.precision), " with --group-size ",
             kGgufBlock32, " scales groups of ", kGgufBlock32, " inputs, and this weight (", N, " x ", K, ") has ",
             K, " inputs, not a multiple of ", kGgufBlock32, "; load it with --group-size 0 (one scale per row)");
    const size_t bytes = size_t(N * K / kGgufBlock32) * sizeof(BlockQ8_0);
    if (weight.dtype == DType::Q8_0) {
      const auto* src = static_cast<const uint8_t*>(weight.data);
      return std::vector<uint8_t>(src, src + bytes);
    }
    std::vector<uint8_t> blocks(bytes);
    cpu::quantize_q8_0(reinterpret_cast<BlockQ8_0*>(blocks.data()), w, N * K);
    return blocks;
  }

  // int8-weight-only by groups of 32 inputs: Q8_0 blocks, which the block GEMV of int4-weight-only already
  // multiplies. A 4-bit GGUF tensor is not rounded again: Q4_0 blocks are Q8_0 ones exactly (d (q - 8)), and
  // Q4_1's minimum needs U8Min blocks (x = d q + m, a byte a weight), which hold them exactly.
  static void make_int8_groups(CpuLinear& lin, const HostTensor& weight, const float* w) {
    const int64_t n_blocks = lin.out_features * lin.in_features / kGgufBlock32;
    if (weight.dtype == DType::Q4_1) {
      lin.block_type = cpu::BlockType::kU8Min;
      std::vector<cpu::BlockU8Min> blocks(static_cast<size_t>(n_blocks));
      cpu::convert_q4_1_to_u8_min(blocks.data(), static_cast<const BlockQ4_1*>(weight.data), n_blocks);
      tile(lin, blocks.data());
    } else if (weight.dtype == DType::Q4_0) {
      lin.block_type = cpu::BlockType::kQ8_0;
      std::vector<BlockQ8_0> blocks(static_cast<size_t>(n_blocks));
      cpu::convert_q4_0_to_q8_0(blocks.data(), static_cast<const BlockQ4_0*>(weight.data), n_blocks);
      tile(lin, blocks.data());
    } else {
      lin.block_type = cpu::BlockType::kQ8_0;
      tile(lin, q8_0_blocks(lin, weight, w).data());
    }
  }

  // W8A8 by groups of 32 inputs: the weights as Q8_0 blocks (the same scale and rounding as int8-weight-only's
  // groups), then the int8 values VNNI-packed as q + 128 and the fp16 scales packed by panel for
  // gemm_w8a8_groups_vnni.
  static void make_w8a8_groups(CpuLinear& lin, const HostTensor& weight, const float* w) {
    const int64_t N = lin.out_features, K = lin.in_features, groups = K / kGgufBlock32;
    const std::vector<uint8_t> blocks = q8_0_blocks(lin, weight, w);
    const auto* q8 = reinterpret_cast<const BlockQ8_0*>(blocks.data());
    std::vector<int8_t> q(size_t(N * K));
    std::vector<uint16_t> d(size_t(N * groups));
    for (int64_t i = 0; i < N * groups; ++i) {
      std::copy(q8[i].qs, q8[i].qs + kGgufBlock32, q.data() + i * kGgufBlock32);
      d[size_t(i)] = q8[i].d;
    }
    lin.w_vnni_offset.resize(cpu::vnni_packed_bytes(N, K));
    cpu::pack_weights_vnni_offset(lin.w_vnni_offset.data(), q.data(), N, K);
    lin.w_group_scale.resize(cpu::w8a8_group_scale_count(N, K));
    cpu::pack_w8a8_group_scales(lin.w_group_scale.data(), d.data(), N, K);
    lin.weight_bytes = size_t(N * K) + d.size() * sizeof(uint16_t);
  }

  // Low-precision weights at larger batch: dequantize a block of rows to fp32, multiply with sgemm.
  void linear_dequantize_sgemm(float* y, const float* x, const CpuLinear& lin, int64_t T, int64_t N, int64_t K) {
    constexpr int64_t kBlockRows = 256;
    scratch_w_.resize(size_t(std::min(kBlockRows, N) * K));
    for (int64_t n0 = 0; n0 < N; n0 += kBlockRows) {
      const int64_t nb = std::min(kBlockRows, N - n0);
#pragma omp parallel for schedule(static)
      for (int64_t n = 0; n < nb; ++n) lin.dequantize_row(n0 + n, scratch_w_.data() + n * K);
      check_dnnl(dnnl_sgemm('N', 'T', T, nb, K, 1.0f, x, K, scratch_w_.data(), K, 0.0f, y + n0, N), "sgemm");
    }
  }

  template <class T>
  static void grow(std::vector<T>& v, size_t n) {
    if (v.size() < n) v.resize(n);
  }

  // W8A8: activations quantized per token to int8 and shifted by +128 to uint8 (VNNI multiplies u8 x s8);
  // the shift is undone with the weights' row sums: (x + 128) . w = x . w + 128 * sum(w).
  void linear_w8a8(float* y, const float* x, const CpuLinear& lin, int64_t T, int64_t N, int64_t K) {
    if (!lin.w_group_scale.empty()) {   // by groups of 32: one activation scale per token and group
      const int64_t groups = T * K / cpu::kW8A8Group;
      grow(scratch_q_, size_t(T * K));
      grow(scratch_scale_, size_t(groups));
      grow(scratch_dot_start_, size_t(groups));
      auto* xq = reinterpret_cast<int8_t*>(scratch_q_.data());
      cpu::quantize_per_group_int8(xq, scratch_scale_.data(), scratch_dot_start_.data(), x, T, K, cpu::kW8A8Group);
      cpu::gemm_w8a8_groups_vnni(y, xq, scratch_scale_.data(), scratch_dot_start_.data(), lin.w_vnni_offset.data(),
                                 lin.w_group_scale.data(), T, N, K);
      return;
    }
    // Scratch only grows: resize() down for one linear and back up for the next would zero-fill the difference
    // every time (q/k/v's 960 outputs, then o's 576, then gate/up's 3,072): 2% of an int8 batch-16 step's
    // instructions in memset (callgrind). The VNNI path needs no int32 accumulators at all.
    grow(scratch_q_, size_t(T * K));
    grow(scratch_scale_, size_t(T));
    cpu::quantize_per_token_int8_shifted(scratch_q_.data(), scratch_scale_.data(), x, T, K);
    if (!lin.w_vnni.empty()) {
      // Our VNNI kernel at every batch: decode streams the packed weights once, prefill reuses each panel from
      // cache for every tile of tokens, and the dequantization is its epilogue.
      cpu::gemm_w8a8_vnni(y, scratch_q_.data(), scratch_scale_.data(), lin.w_vnni.data(), lin.row_scale.data(),
                          lin.row_sum.data(), T, N, K);
      return;
    }
    grow(scratch_acc_, size_t(T * N));
    const int32_t c_offset = 0;
    check_dnnl(dnnl_gemm_u8s8s32('N', 'T', 'F', T, N, K, 1.0f, scratch_q_.data(), K, 0, lin.w_i8.data(), K, 0, 0.0f,
                                 scratch_acc_.data(), N, &c_offset),
               "gemm_u8s8s32");
#pragma omp parallel for schedule(static) if (T * N > 16384)
    for (int64_t t = 0; t < T; ++t) {
      const float st = scratch_scale_[size_t(t)];
      for (int64_t n = 0; n < N; ++n) {
        const int32_t acc = scratch_acc_[size_t(t * N + n)] - 128 * lin.row_sum[size_t(n)];
        y[t * N + n] = float(acc) * st * lin.row_scale[size_t(n)];
      }
    }
  }

  // LLM.int8(): input columns whose magnitude exceeds the threshold in any token are multiplied in float
  // (against the dequantized int8 weights of those columns); the rest goes through W8A8 with those columns
  // zeroed, so the outliers no longer inflate the per-token scales.
  void linear_mixed(float* y, const float* x, const CpuLinear& lin, int64_t T, int64_t N, int64_t K) {
    outlier_cols_.clear();
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t t = 0; t < T; ++t) {
        if (std::fabs(x[t * K + k]) > lin.outlier_threshold) {
          outlier_cols_.push_back(k);
          break;
        }
      }
    }
    if (outlier_cols_.empty()) {
      linear_w8a8(y, x, lin, T, N, K);
      return;
    }
    scratch_x_.assign(x, x + T * K);
    for (int64_t k : outlier_cols_) {
      for (int64_t t = 0; t < T; ++t) scratch_x_[size_t(t * K + k)] = 0.0f;
    }
    linear_w8a8(y, scratch_x_.data(), lin, T, N, K);
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const float s = lin.row_scale[size_t(n)];
      for (int64_t t = 0; t < T; ++t) {
        float acc = 0;
        for (int64_t k : outlier_cols_) acc += x[t * K + k] * float(lin.q(n, k));
        y[t * N + n] += acc * s;
      }
    }
  }

  bool avx512_;
  bool vnni_;
  const BatchLayout* batch_ = nullptr;
  BatchLayout window_batch_;   // the pass as the sliding layers see it (their block tables), with layer groups
  std::vector<float> scratch_w_, scratch_scale_, scratch_x_;
  std::vector<uint8_t> scratch_q_;
  std::vector<int32_t> scratch_acc_, scratch_dot_start_;
  std::vector<int64_t> outlier_cols_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) { return std::make_unique<CpuBackend>(threads); }

}  // namespace qs
