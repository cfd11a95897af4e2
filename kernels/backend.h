// The Backend interface: device memory, weight preparation (quantization happens here, on the device) and
// the ops a transformer forward pass is made of. Model code says what to compute; a backend says how.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/precision.h"

namespace qs {

// T = tokens in the batch, C = channels, N = output features, K = input features, NH = query heads,
// NKV = key/value heads, HD = head dim, S = sequences, V = vocab.

// A host tensor in its stored dtype (F32, F16 or BF16), row-major, outermost dimension first.
struct HostTensor {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0;   // for a Linear weight: N (out features)
  int64_t cols = 1;   // for a Linear weight: K (in features); 1 for vectors
  int64_t numel() const { return rows * cols; }
};

// A 2-D activation on the backend's device: rows x cols, contiguous rows, in the backend's activation dtype.
struct Tensor {
  void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  DType dtype = DType::F32;
  Tensor slice_rows(int64_t first, int64_t count) const;   // a view of rows [first, first+count)
};

// Device memory that frees itself.
class DeviceBuffer {
 public:
  virtual ~DeviceBuffer() = default;
  virtual void* data() = 0;
  virtual size_t bytes() const = 0;
};

// A dense weight kept in float form on the device (norm weights and biases, embedding tables).
struct DenseWeight {
  std::unique_ptr<DeviceBuffer> buffer;
  DType dtype = DType::F32;   // storage: F32, F16 or BF16
  int64_t rows = 0, cols = 0;
  size_t bytes() const { return buffer ? buffer->bytes() : 0; }
};

// A Linear layer's weight (N x K) and optional bias (N) in a backend- and precision-specific form.
class LinearWeight {
 public:
  virtual ~LinearWeight() = default;
  int64_t out_features = 0;       // N
  int64_t in_features = 0;        // K
  Precision precision = Precision::kFp32;
  size_t weight_bytes = 0;        // device bytes of the weight, scales and zero points (bias excluded)
  size_t original_bytes = 0;      // bytes of the weight as it would be in fp32
  QuantError error;               // against the fp32 original; zero for fp32
};

// Tuning knobs for quantized linears that some precisions need (outlier threshold, smoothing).
struct LinearOptions {
  float outlier_threshold = 6.0f;           // int8-mixed: |activation| above this goes through the float path
  const float* input_smoothing = nullptr;   // int8-smooth: per-input-channel divisor already folded upstream (K)
  bool compute_error = true;                // measure QuantError at load
  // int8-weight-only, int8, int8-smooth: inputs per weight scale along K. 0 = one scale per output row;
  // kInt8WeightGroup = one fp16 scale per 32 inputs, as GGUF Q8_0 blocks (a Q8_0 source tensor is kept as it is),
  // and for W8A8 one activation scale per 32 inputs of a token. A backend says in supports_weight_groups() which
  // precisions it has group kernels for.
  int64_t group_size = 0;
};
constexpr int64_t kInt8WeightGroup = 32;

enum class Activation { kNone, kGeluTanh, kGeluErf, kRelu, kSilu };

// Ops a backend may lack; architectures that need one ask supports_op() at load and refuse with its name.
enum class BackendOp {
  kGeluTanhGate,            // gated_activation with kGeluTanh (Gemma's GeGLU)
  kHeadRmsNorm,             // head_rmsnorm (QK-norm: Qwen3, Gemma 3)
  kScale,                   // scale (Gemma's embedding multiplier)
  kSlidingWindowAttention,  // attention_window with a window (Mistral, Gemma 3)
};
const char* backend_op_name(BackendOp op);

// The tokens of one forward pass. Tokens of one sequence are consecutive and in position order.
struct BatchLayout {
  std::vector<int32_t> token_ids;      // [T]
  std::vector<int32_t> positions;      // [T] position of each token in its sequence
  std::vector<int32_t> seq_of_token;   // [T] index into the sequences below
  std::vector<int32_t> logit_rows;     // [L] rows of the hidden state whose logits are wanted
  // Per sequence: KV-cache block table and the sequence length after this pass (cached + new tokens).
  std::vector<std::vector<int32_t>> block_tables;   // [S][blocks]
  std::vector<int32_t> seq_lens;                    // [S]
  // With a KV cache of two layer groups (KvCacheConfig::layer_group): the sliding layers' tables, [S][blocks],
  // indexed by position / block_size as block_tables (which the global layers read); empty with one group.
  std::vector<std::vector<int32_t>> window_block_tables;
  int64_t num_tokens() const { return int64_t(token_ids.size()); }
};

// Paged key/value memory for all layers: per layer, K and V pools of num_blocks blocks of block_size tokens
// (NKV x HD values each, in `dtype`); how a block is laid out inside is the backend's business.
// Bytes one token's K (or V) of one head takes in a KV cache of `dtype`: head_dim elements, and for I8 the fp32
// scale they were quantized with (one per token and head: a token is written once, so its scale never changes).
inline size_t kv_head_bytes(DType dtype, int64_t head_dim) {
  return dtype_bytes(dtype, head_dim) + (dtype == DType::I8 ? sizeof(float) : 0);
}

struct KvCacheConfig {
  int64_t num_layers = 0;
  int64_t num_blocks = 0;
  int64_t block_size = 16;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  DType dtype = DType::F32;   // storage; attention computes in fp32 whatever this is
  // Per-layer-group KV (Gemma 3's global and sliding layers, Backend::supports_kv_layer_groups): empty, every
  // layer in one pool of num_blocks blocks; else num_layers entries, 0 for a layer of the pool of num_blocks
  // blocks (the global layers, BatchLayout::block_tables) and 1 for one of a pool of window_num_blocks blocks
  // (the sliding layers, BatchLayout::window_block_tables). A pool holds only its own group's layers.
  std::vector<int32_t> layer_group{};
  int64_t window_num_blocks = 0;
  int64_t num_groups() const { return layer_group.empty() ? 1 : 2; }
  int64_t group_layers(int32_t group) const {
    if (layer_group.empty()) return group == 0 ? num_layers : 0;
    int64_t n = 0;
    for (int32_t g : layer_group) n += g == group;
    return n;
  }
  int64_t group_blocks(int32_t group) const { return group == 0 ? num_blocks : window_num_blocks; }
  // Bytes of K and V for one token over all layers, and over one group's layers.
  size_t bytes_per_token() const { return 2 * size_t(num_layers * num_kv_heads) * kv_head_bytes(dtype, head_dim); }
  size_t group_bytes_per_token(int32_t group) const {
    return 2 * size_t(group_layers(group) * num_kv_heads) * kv_head_bytes(dtype, head_dim);
  }
};
class KvCache {
 public:
  virtual ~KvCache() = default;
  virtual const KvCacheConfig& config() const = 0;
  // The capacity: what num_blocks blocks take (the budget), whether or not it is backed by memory yet.
  virtual size_t bytes() const = 0;
  // The part of bytes() backed by memory now. A backend that commits pages as blocks are first written
  // reports less than bytes() until the cache has been used to its end.
  virtual size_t committed_bytes() const { return bytes(); }
};

struct MemoryInfo {
  std::string device;          // "cpu", "cuda:0"
  size_t used_bytes = 0;       // by this process on the device (RSS on the CPU)
  size_t total_bytes = 0;
  size_t peak_bytes = 0;       // peak allocated by this backend
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;                    // "cpu", "cuda:0"
  virtual DType activation_dtype() const = 0;              // F32 on the CPU
  virtual bool supports(Precision p) const = 0;
  // `p` with LinearOptions::group_size != 0 (none by default).
  virtual bool supports_weight_groups(Precision) const { return false; }
  // Whether --group-size auto picks groups for `p` here: where the group kernels are there and measured.
  virtual bool weight_groups_by_default(Precision p) const { return supports_weight_groups(p); }
  virtual MemoryInfo memory_info() const = 0;

  // Memory.
  virtual std::unique_ptr<DeviceBuffer> allocate(size_t bytes) = 0;
  virtual void copy_to_host(void* dst, const void* device_src, size_t bytes) = 0;
  virtual void synchronize() = 0;
  Tensor new_tensor(std::unique_ptr<DeviceBuffer>& holder, int64_t rows, int64_t cols);

  // Weights, quantized on the device from the host copy in its stored dtype.
  virtual std::unique_ptr<LinearWeight> make_linear(const HostTensor& weight, const HostTensor* bias,
                                                    Precision precision, const LinearOptions& options) = 0;
  virtual DenseWeight make_dense(const HostTensor& tensor, DType storage) = 0;
  // Throws kUnsupported for a config.dtype the backend cannot store (see supports_kv_cache_dtype).
  virtual std::unique_ptr<KvCache> make_kv_cache(const KvCacheConfig& config) = 0;
  // KV-cache storage dtypes: what a cache gets when none is asked for, and which ones can be asked for.
  virtual DType default_kv_cache_dtype() const { return DType::F32; }
  virtual bool supports_kv_cache_dtype(DType dtype) const { return dtype == DType::F32; }
  // make_kv_cache takes a KvCacheConfig::layer_group (a pool and block table per layer group) and attention
  // reads each layer's group's pool through its table. Without it, a model with global and sliding layers keeps
  // one table for all of them.
  virtual bool supports_kv_layer_groups() const { return false; }

  // Per forward pass: makes the batch's ids, positions and block tables visible to the ops below.
  virtual void begin_batch(const BatchLayout& layout) = 0;

  // Ops. Outputs first, then inputs, then weights (llm.c order). `out` may alias an input where noted.
  // out[T, C] = table[token_ids] (rows of a Linear's weight, dequantized: the embedding table is stored as a
  // LinearWeight so a tied LM head shares it); then, if positions_table, out += positions_table[positions].
  virtual void embedding(Tensor out, const LinearWeight& table, const DenseWeight* positions_table) = 0;
  // out[T, N] = act(in[T, K] @ W^T + b).
  virtual void linear(Tensor out, Tensor in, const LinearWeight& weight, Activation act) = 0;
  virtual void layernorm(Tensor out, Tensor in, const DenseWeight& weight, const DenseWeight* bias, float eps) = 0;
  virtual void rmsnorm(Tensor out, Tensor in, const DenseWeight& weight, float eps) = 0;
  // out = a + b (out may alias a or b).
  virtual void add(Tensor out, Tensor a, Tensor b) = 0;
  // out[T, F] = silu(gate_up[T, :F]) * gate_up[T, F:].
  virtual void silu_mul(Tensor out, Tensor gate_up) = 0;
  // Rotary embedding on the q and k heads of qkv[T, (NH + 2 NKV) HD], in place, rotate_half convention,
  // over the first rotary_dim dims of each head, at the batch's positions.
  virtual void rope(Tensor qkv, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, int64_t rotary_dim,
                    float theta) = 0;
  // Writes k, v of qkv into the cache for this layer, then out[T, NH HD] = causal softmax(q k^T / sqrt(HD)) v
  // over each token's sequence (cached tokens and this pass's up to its own position); GQA by head groups.
  virtual void attention(Tensor out, Tensor qkv, KvCache& cache, int64_t layer, int64_t num_heads,
                         int64_t num_kv_heads, int64_t head_dim) = 0;
  // out[L, C] = in[logit_rows of the batch].
  virtual void gather_logit_rows(Tensor out, Tensor in) = 0;

  // ---- Ops some architectures add (the defaults refuse, naming the op; see supports_op) ----
  virtual bool supports_op(BackendOp op) const { return false; }
  // out[T, F] = act(gate_up[T, :F]) * gate_up[T, F:]; kSilu is silu_mul.
  virtual void gated_activation(Tensor out, Tensor gate_up, Activation act);
  // In place on qkv[T, (NH + 2 NKV) HD]: each q head (HD) = rmsnorm(head) * q_weight, each k head with k_weight.
  virtual void head_rmsnorm(Tensor qkv, const DenseWeight& q_weight, const DenseWeight& k_weight, int64_t num_heads,
                            int64_t num_kv_heads, int64_t head_dim, float eps);
  // x *= factor, in place.
  virtual void scale(Tensor x, float factor);
  // attention() where each token sees only the `window` latest positions of its sequence, itself included
  // (window 0: all of them, as attention()).
  virtual void attention_window(Tensor out, Tensor qkv, KvCache& cache, int64_t layer, int64_t num_heads,
                                int64_t num_kv_heads, int64_t head_dim, int64_t window);

  // ---- Graphs for decode steps (optional; the defaults mean "not supported": every pass runs its ops) ----
  // A backend that can record a pass's device work once and replay it (CUDA graphs) turns a small model's
  // decode step from hundreds of kernel launches into one. The model uses this for pure-decode passes only:
  //   1. graph_bucket(T) > 0: pad the batch to that many tokens; padding tokens are sequences of their own at
  //      position 0 whose block table is { graph_scratch_block(cache) }, and their logits are ignored. Block
  //      tables are padded with -1 to a width that is part of the key, so the device layout is fixed.
  //   2. Keep every activation buffer the ops touch at the same address as when the graph was recorded (call
  //      reset_graphs() when one moves), then begin_batch(padded) — it copies into a fixed device area.
  //   3. replay(key, cache); if it returns false, run the ops as usual (they are this pass's result) and then
  //      record the same ops again between begin_capture(key, cache) and end_capture() for the next pass.
  //      Recording does not execute anything. end_capture() false (or an op throwing while recording, after
  //      which end_capture() must still be called) means the graph could not be made: nothing changes.
  // Whatever the ops check on the host (token ids, positions, KV blocks) replay checks against the batch too.
  virtual int64_t graph_bucket(int64_t num_tokens) const { return 0; }
  virtual int32_t graph_scratch_block(const KvCache& cache) const { return -1; }
  virtual bool begin_capture(uint64_t key, const KvCache& cache) { return false; }
  virtual bool end_capture() { return false; }
  virtual bool replay(uint64_t key, const KvCache& cache) { return false; }
  virtual void reset_graphs() {}
};

// The CPU backend (always built). `threads` 0 means all cores.
std::unique_ptr<Backend> make_cpu_backend(int threads = 0);
// The CUDA backend for `device`; throws kUnsupported where this build or machine has none.
std::unique_ptr<Backend> make_cuda_backend(int device = 0);
bool cuda_available();
// "cpu", "cuda", "cuda:N" or "auto" (CUDA when a device is present, else CPU).
std::unique_ptr<Backend> make_backend(const std::string& device);

}  // namespace qs
