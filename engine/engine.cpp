// The generation engine: admission against the KV-cache block pool, iteration-level (continuous) batching
// of prefill chunks and decode tokens in one forward pass, sampling, stop conditions, events.
#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <deque>
#include <map>
#include <random>

#include "engine/grammar.h"
#include "engine/kv_cache.h"
#include "engine/sampler.h"
#include "kernels/error.h"

namespace qs {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kNone: return "none";
    case FinishReason::kLength: return "length";
    case FinishReason::kEos: return "eos";
    case FinishReason::kStop: return "stop";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
  }
  return "none";
}

namespace {
using Clock = std::chrono::steady_clock;
double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Length of the longest suffix of `text` that is a proper prefix of some stop string: text that must be held
// back because the next token might complete a stop sequence.
size_t stop_prefix_holdback(const std::string& text, size_t from, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const auto& s : stops) {
    const size_t max_len = std::min(s.size() - 1, text.size() - from);
    for (size_t len = max_len; len > hold; --len) {
      if (text.compare(text.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  return hold;
}
}  // namespace

struct Sequence {
  uint64_t id = 0;
  std::vector<int32_t> tokens;         // prompt then generated
  int32_t prompt_len = 0;
  int64_t num_computed = 0;            // tokens already in the KV cache
  SamplingParams params;
  EventCallback on_event;
  std::vector<int32_t> block_table;
  WindowBlocks window;                 // with KV layer groups: the sliding layers' ring (block_table: the global)
  std::mt19937_64 rng;
  std::unique_ptr<StreamingDecoder> decoder;
  std::unique_ptr<GrammarMatcher> grammar;   // constrained decoding: where the output stands in its grammar
  std::string text;                    // decoded generated text so far
  size_t emitted = 0;                  // bytes of `text` already sent
  bool cancel_requested = false;
  Clock::time_point submitted, scheduled, first_token;
  bool has_first_token = false;
  int32_t generated() const { return int32_t(tokens.size()) - prompt_len; }
};

struct Engine::Impl {
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
  EngineOptions options;
  std::unique_ptr<KvCache> cache;
  std::unique_ptr<KvBlockManager> blocks;
  std::deque<std::unique_ptr<Sequence>> waiting;
  std::vector<std::unique_ptr<Sequence>> running;
  uint64_t next_id = 1;
  EngineStats stats;
  BatchLayout batch;
  std::vector<float> logits;
  std::unique_ptr<VocabularyIndex> vocabulary;   // built for the first constrained request, then shared
  // The window when every layer slides (Mistral): a sequence gives back the blocks that slid out of it as it
  // advances. 0 when any layer is global (Gemma 3, whose 1-in-6 global layers read every position: with one
  // block table for all layers no block is ever outside every layer's window; see window_blocks).
  int64_t window_in_every_layer = 0;
  // KV layer groups (Gemma 3 on the CPU, EngineOptions::kv_layer_groups): the sliding layers' pool and window;
  // block_table and `blocks` are then the global layers'. Null / 0 with one group.
  std::unique_ptr<KvBlockManager> window_blocks;
  int64_t group_window = 0;
  int64_t kv_budget_bytes = 0;                  // both pools' blocks that sequences hold, together
  int64_t global_block_bytes = 0, window_block_bytes = 0;
  std::string kv_layout;

  int64_t kv_held_bytes() const {
    return blocks->used() * global_block_bytes + (window_blocks ? window_blocks->promised() * window_block_bytes : 0);
  }
  // With layer groups: what a sequence takes at admission, its whole length of global blocks and its ring.
  int64_t admission_bytes(const Sequence& s) const {
    return blocks->blocks_for(int64_t(s.prompt_len) + s.params.max_new_tokens) * global_block_bytes +
           admission_ring(s) * window_block_bytes;
  }

  // With layer groups: the ring a sequence takes at admission (its longest pass is its prompt's chunk), and the
  // smaller one it keeps once its prompt is computed (one token a pass).
  int64_t admission_ring(const Sequence& s) const {
    const int64_t chunk = std::max<int64_t>(1, std::min({options.prefill_chunk, options.max_batch_tokens,
                                                         int64_t(s.prompt_len)}));
    return WindowBlocks::ring_blocks(group_window, chunk, options.kv_block_size,
                                     int64_t(s.prompt_len) + s.params.max_new_tokens);
  }
  int64_t decode_ring(const Sequence& s) const {
    return WindowBlocks::ring_blocks(group_window, 1, options.kv_block_size,
                                     int64_t(s.prompt_len) + s.params.max_new_tokens);
  }

  const VocabularyIndex& vocabulary_index() {
    if (!vocabulary) {
      std::vector<int32_t> eos = {tokenizer->eos_id()};
      if (model->config().eos_token_id != tokenizer->eos_id()) eos.push_back(model->config().eos_token_id);
      vocabulary = std::make_unique<VocabularyIndex>(*tokenizer, std::move(eos));
    }
    return *vocabulary;
  }

  void emit(Sequence& s, GenerationEvent& ev, FinishReason finish) {
    const auto now = Clock::now();
    ev.request_id = s.id;
    ev.finish = finish;
    ev.prompt_tokens = s.prompt_len;
    ev.generated_tokens = s.generated();
    ev.queue_seconds = s.scheduled.time_since_epoch().count() ? seconds_between(s.submitted, s.scheduled) : 0;
    ev.first_token_seconds = s.has_first_token ? seconds_between(s.submitted, s.first_token) : 0;
    ev.total_seconds = seconds_between(s.submitted, now);
    if (s.on_event) s.on_event(ev);
  }

  // The request's last event: `ev` carries this step's tokens and text, if any. On length or EOS the text held
  // back (an incomplete character, a possible stop-sequence prefix) is released too. Frees the KV blocks.
  void finish(Sequence& s, GenerationEvent ev, FinishReason reason) {
    if (reason == FinishReason::kLength || reason == FinishReason::kEos) {
      s.text += s.decoder->flush();
      ev.text += s.text.substr(s.emitted);
      s.emitted = s.text.size();
    }
    blocks->release(s.block_table);
    if (window_blocks) s.window.release(*window_blocks);
    emit(s, ev, reason);
  }

  // Appends a sampled token; returns the finish reason (kNone to go on). Fills ev with the new text.
  FinishReason accept_token(Sequence& s, const SampleResult& r, GenerationEvent& ev) {
    const int32_t tok = r.token;
    s.tokens.push_back(tok);
    ev.token_ids.push_back(tok);
    if (s.params.logprobs > 0) {
      ev.logprobs.push_back({tok, r.logprob});
      ev.top_logprobs.push_back(r.top);
    }
    const bool is_eos = tok == tokenizer->eos_id() || tok == model->config().eos_token_id;
    if (is_eos && !s.params.ignore_eos) return FinishReason::kEos;
    if (std::find(s.params.stop_token_ids.begin(), s.params.stop_token_ids.end(), tok) !=
        s.params.stop_token_ids.end()) {
      // The stop token is not output, but the text before it is, including what was held back because it
      // began a stop sequence.
      s.text += s.decoder->flush();
      ev.text = s.text.substr(s.emitted);
      s.emitted = s.text.size();
      return FinishReason::kStop;
    }
    s.text += s.decoder->push(tok);
    const size_t search_from = s.emitted;
    // One token can complete several stop sequences: the output ends before the one that starts first.
    size_t first_stop = std::string::npos;
    for (const auto& stop : s.params.stop) {
      const size_t pos = s.text.find(stop, search_from > stop.size() ? search_from - stop.size() : 0);
      if (pos != std::string::npos && pos + stop.size() > s.emitted) first_stop = std::min(first_stop, pos);
    }
    if (first_stop != std::string::npos) {
      // The stop sequence and anything after it is not output.
      ev.text = s.text.substr(s.emitted, first_stop > s.emitted ? first_stop - s.emitted : 0);
      s.emitted = s.text.size();
      return FinishReason::kStop;
    }
    if (s.generated() >= s.params.max_new_tokens) return FinishReason::kLength;
    const size_t hold = s.params.stop.empty() ? 0 : stop_prefix_holdback(s.text, s.emitted, s.params.stop);
    const size_t ready = s.text.size() - hold;
    if (ready > s.emitted) {
      ev.text = s.text.substr(s.emitted, ready - s.emitted);
      s.emitted = ready;
    }
    return FinishReason::kNone;
  }

  void admit() {
    while (!waiting.empty() && int64_t(running.size()) < options.max_batch_size) {
      Sequence& s = *waiting.front();
      // With layer groups the two pools share one budget: the sequence's global blocks and sliding ring must fit
      // in what it has left. The ring first: it is all-or-nothing like the global blocks below.
      // The prompt's cached prefix is shared, not computed; its last token is always computed, for the logits
      // (as vLLM does: at most prompt_len - 1 tokens are looked up, so a fully cached prompt recomputes its
      // last block into a fresh one, and shared blocks are never written).
      int64_t max_cached = int64_t(s.prompt_len) - 1;
      if (window_blocks) {
        if (kv_held_bytes() + admission_bytes(s) > kv_budget_bytes) break;
        // A hit needs the global blocks up to it and the sliding ones of its window (window_prefix_hit).
        const int64_t lookup = max_cached / options.kv_block_size;
        const std::vector<int32_t> sliding = window_blocks->cached_blocks(s.tokens, lookup);
        const WindowPrefixHit hit =
            window_prefix_hit(blocks->cached_blocks(s.tokens, lookup), sliding, group_window, options.kv_block_size);
        const std::span<const int32_t> shared =
            hit.blocks > 0 ? std::span<const int32_t>(sliding).subspan(size_t(hit.first_sliding),
                                                                      size_t(hit.blocks - hit.first_sliding))
                           : std::span<const int32_t>();
        if (!s.window.acquire(*window_blocks, admission_ring(s), hit.first_sliding, shared)) break;
        max_cached = hit.blocks * options.kv_block_size;
      }
      // Reserve the whole request (prompt + max_new_tokens) up front: a running request never waits for
      // memory, so there is no preemption and no deadlock; the cost is admitting fewer long requests.
      const std::optional<int64_t> cached =
          blocks->allocate(s.block_table, s.tokens, max_cached, int64_t(s.prompt_len) + s.params.max_new_tokens);
      if (!cached) {
        if (window_blocks) s.window.release(*window_blocks);
        break;
      }
      // With layer groups the global blocks found are those window_prefix_hit counted: nothing changed between.
      QS_CHECK(!window_blocks || *cached == max_cached, ErrorCode::kInternal, "the global pool shared ", *cached,
               " tokens of a prefix hit of ", max_cached);
      s.num_computed = *cached;
      if (blocks->prefix_caching()) {
        stats.prefix_cache_queried_tokens += s.prompt_len;
        stats.prefix_cache_hit_tokens += *cached;
      }
      s.scheduled = Clock::now();
      running.push_back(std::move(waiting.front()));
      waiting.pop_front();
    }
  }

  void drop_cancelled() {
    for (auto& sp : running) {
      if (sp && sp->cancel_requested) {
        finish(*sp, {}, FinishReason::kCancelled);
        sp.reset();
      }
    }
    std::erase(running, nullptr);
  }

  void step() {
    drop_cancelled();
    admit();
    if (running.empty()) return;
    // Decode tokens first (one per running stream keeps inter-token latency flat), then prefill chunks.
    std::stable_sort(running.begin(), running.end(), [](const auto& a, const auto& b) {
      const bool ad = int64_t(a->tokens.size()) - a->num_computed == 1;
      const bool bd = int64_t(b->tokens.size()) - b->num_computed == 1;
      return ad && !bd;
    });
    batch.token_ids.clear();
    batch.positions.clear();
    batch.seq_of_token.clear();
    batch.logit_rows.clear();
    batch.block_tables.clear();
    batch.seq_lens.clear();
    batch.window_block_tables.clear();
    std::vector<Sequence*> in_batch, wants_logits;
    int64_t budget = options.max_batch_tokens;
    for (auto& sp : running) {
      Sequence& s = *sp;
      const int64_t remaining = int64_t(s.tokens.size()) - s.num_computed;
      const int64_t chunk = std::min({remaining, budget, remaining == 1 ? int64_t(1) : options.prefill_chunk});
      if (chunk <= 0) continue;
      const int32_t seq_index = int32_t(in_batch.size());
      for (int64_t i = 0; i < chunk; ++i) {
        batch.token_ids.push_back(s.tokens[size_t(s.num_computed + i)]);
        batch.positions.push_back(int32_t(s.num_computed + i));
        batch.seq_of_token.push_back(seq_index);
      }
      batch.block_tables.push_back(s.block_table);
      if (window_blocks) {
        // Short when the ring ran out: check_window_blocks_held() below then fails the request.
        s.window.cover(*window_blocks, s.num_computed + chunk);
        batch.window_block_tables.push_back(s.window.table());
      }
      batch.seq_lens.push_back(int32_t(s.num_computed + chunk));
      if (s.num_computed + chunk == int64_t(s.tokens.size())) {
        batch.logit_rows.push_back(int32_t(batch.token_ids.size()) - 1);
        wants_logits.push_back(&s);
      }
      s.num_computed += chunk;
      in_batch.push_back(&s);
      budget -= chunk;
      if (budget == 0) break;
    }
    stats.last_batch_size = int64_t(in_batch.size());
    stats.last_batch_tokens = batch.num_tokens();
    ++stats.steps;
    if (in_batch.empty()) return;
    try {
      if (window_in_every_layer > 0) {
        check_window_blocks_held(batch, batch.block_tables, window_in_every_layer, options.kv_block_size);
      }
      if (window_blocks) {
        check_window_blocks_held(batch, batch.window_block_tables, group_window, options.kv_block_size);
      }
      model->forward(batch, *cache, logits);
    } catch (const Error& e) {
      // A failed pass fails the requests in it, not the engine.
      for (Sequence* s : in_batch) {
        s->cancel_requested = false;
        GenerationEvent ev;
        ev.error = e.what();
        finish(*s, ev, FinishReason::kError);
      }
      std::erase_if(running, [&](const auto& sp) {
        return std::find(in_batch.begin(), in_batch.end(), sp.get()) != in_batch.end();
      });
      return;
    }
    // The blocks this pass filled can be shared from now on (before sampling: a finished request releases them).
    for (Sequence* s : in_batch) blocks->commit(s->block_table, s->tokens, s->num_computed);
    if (window_in_every_layer > 0) {
      for (Sequence* s : in_batch) blocks->release_front(s->block_table, s->num_computed, window_in_every_layer);
    }
    if (window_blocks) {
      for (Sequence* s : in_batch) {
        window_blocks->commit(s->window.table(), s->tokens, s->num_computed);
        s->window.slide(*window_blocks, s->num_computed, group_window);
        if (s->num_computed >= s->prompt_len) s->window.shrink(*window_blocks, decode_ring(*s));
      }
    }
    const int64_t V = model->config().vocab_size;
    std::vector<Sequence*> finished;
    for (size_t i = 0; i < wants_logits.size(); ++i) {
      Sequence& s = *wants_logits[i];
      if (s.cancel_requested) continue;   // dropped at the next step
      float* row = logits.data() + int64_t(i) * V;
      apply_presence_frequency_penalties(row, V, s.params, s.tokens.data() + s.prompt_len, size_t(s.generated()));
      if (s.grammar) mask_logits(row, V, s.grammar->allowed_tokens());
      const SampleResult r = sample_token(row, V, s.params, s.tokens, s.rng);
      if (s.grammar && !s.grammar->accept_token(r.token)) {
        // Only reachable if the grammar left no token at all: fail the request rather than emit invalid output.
        GenerationEvent ev;
        ev.error = "constrained decoding: no token can continue the document";
        finish(s, ev, FinishReason::kError);
        finished.push_back(&s);
        continue;
      }
      if (!s.has_first_token) {
        s.has_first_token = true;
        s.first_token = Clock::now();
      }
      GenerationEvent ev;
      const FinishReason reason = accept_token(s, r, ev);
      if (reason == FinishReason::kNone) {
        emit(s, ev, FinishReason::kNone);
      } else {
        finish(s, ev, reason);
        finished.push_back(&s);
      }
    }
    std::erase_if(running, [&](const auto& sp) {
      return std::find(finished.begin(), finished.end(), sp.get()) != finished.end();
    });
  }
};

Engine::Engine(std::unique_ptr<Model> model, std::unique_ptr<Tokenizer> tokenizer, const EngineOptions& options)
    : impl_(std::make_unique<Impl>()) {
  QS_CHECK(model && tokenizer, ErrorCode::kInternal, "engine needs a model and a tokenizer");
  impl_->model = std::move(model);
  impl_->tokenizer = std::move(tokenizer);
  impl_->options = options;
  EngineOptions& o = impl_->options;
  const ModelConfig& c = impl_->model->config();
  if (o.max_context <= 0 || o.max_context > c.max_positions) o.max_context = c.max_positions;
  bool every_layer_slides = c.sliding_window > 0;
  for (int64_t l = 0; l < c.num_layers; ++l) every_layer_slides = every_layer_slides && c.layer_slides(l);
  impl_->window_in_every_layer = every_layer_slides ? c.sliding_window : 0;
  QS_CHECK(o.max_batch_size > 0 && o.max_batch_tokens > 0 && o.prefill_chunk > 0 && o.kv_block_size > 0,
           ErrorCode::kInvalidArgument, "engine limits must be positive");
  Backend& backend = impl_->model->backend();
  const DType kv_dtype = o.kv_cache_dtype.value_or(backend.default_kv_cache_dtype());
  if (!backend.supports_kv_cache_dtype(kv_dtype)) {
    std::string stored;
    for (DType d : {DType::F32, DType::F16, DType::BF16, DType::I8}) {
      if (backend.supports_kv_cache_dtype(d)) stored += std::string(stored.empty() ? "" : ", ") + kv_cache_dtype_name(d);
    }
    QS_FAIL(ErrorCode::kInvalidArgument, "the ", backend.name(), " backend cannot store the KV cache in ",
            kv_cache_dtype_name(kv_dtype), "; it stores ", stored);
  }
  KvCacheConfig kv;
  kv.num_layers = c.num_layers;
  kv.block_size = o.kv_block_size;
  kv.num_kv_heads = c.num_kv_heads;
  kv.head_dim = c.head_dim;
  kv.dtype = kv_dtype;
  // Global and sliding layers (Gemma 3): a pool and table for each, so the sliding layers hold only their window.
  int64_t sliding_layers = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) sliding_layers += c.sliding_window > 0 && c.layer_slides(l);
  const bool grouped = o.kv_layer_groups && sliding_layers > 0 && sliding_layers < c.num_layers &&
                       backend.supports_kv_layer_groups();
  int64_t num_blocks = 0;
  int64_t ring = 0;   // with groups: the sliding layers' blocks of a sequence of max_context while its prompt runs
  if (grouped) {
    for (int64_t l = 0; l < c.num_layers; ++l) kv.layer_group.push_back(c.layer_slides(l) ? 1 : 0);
    impl_->group_window = c.sliding_window;
    const int64_t chunk = std::min({o.prefill_chunk, o.max_batch_tokens, o.max_context});
    ring = WindowBlocks::ring_blocks(c.sliding_window, chunk, o.kv_block_size, o.max_context);
    const GroupedKvBlocks sizes = grouped_kv_cache_blocks(
        o.kv_cache_bytes, o.kv_cache_tokens, kv.bytes_per_token(), kv.group_bytes_per_token(0),
        kv.group_bytes_per_token(1), o.kv_block_size, o.max_context, o.max_batch_size, ring);
    num_blocks = sizes.global_blocks;
    kv.window_num_blocks = sizes.window_blocks;
    impl_->kv_budget_bytes = sizes.budget_bytes;
    impl_->global_block_bytes = int64_t(kv.group_bytes_per_token(0)) * o.kv_block_size;
    impl_->window_block_bytes = int64_t(kv.group_bytes_per_token(1)) * o.kv_block_size;
  } else {
    num_blocks = kv_cache_blocks(o.kv_cache_bytes, o.kv_cache_tokens, kv.bytes_per_token(), o.kv_block_size,
                                 o.max_context, o.max_batch_size);
  }
  kv.num_blocks = num_blocks;
  // What was resolved is what options() reports: with groups, the shared budget, and the tokens one table for all
  // layers would hold in it.
  o.kv_cache_dtype = kv_dtype;
  o.kv_cache_tokens = num_blocks * o.kv_block_size;
  o.kv_cache_bytes = int64_t(kv.bytes_per_token()) * o.kv_cache_tokens;
  if (grouped) {
    o.kv_cache_bytes = impl_->kv_budget_bytes;
    o.kv_cache_tokens = impl_->kv_budget_bytes / int64_t(kv.bytes_per_token()) / o.kv_block_size * o.kv_block_size;
    auto mib = [](double bytes) {
      char text[32];
      if (bytes >= (1 << 20)) {
        std::snprintf(text, sizeof text, "%.1f MiB", bytes / (1 << 20));
      } else {
        std::snprintf(text, sizeof text, "%.1f KiB", bytes / 1024);
      }
      return std::string(text);
    };
    const int64_t context_blocks = (o.max_context + o.kv_block_size - 1) / o.kv_block_size;
    impl_->kv_layout = str(
        "KV cache in two layer groups sharing the ", mib(double(impl_->kv_budget_bytes)), ": ",
        c.num_layers - sliding_layers, " global layers hold every position (", impl_->global_block_bytes,
        " bytes a block), ", sliding_layers, " sliding layers a ring of ", ring,
        " blocks a sequence while its prompt runs and ",
        WindowBlocks::ring_blocks(c.sliding_window, 1, o.kv_block_size, o.max_context), " while it decodes (window ",
        c.sliding_window, ", ", impl_->window_block_bytes, " bytes a block): a sequence of ", o.max_context,
        " tokens takes ", mib(double(context_blocks * impl_->global_block_bytes + ring * impl_->window_block_bytes)),
        " (", mib(double(context_blocks * o.kv_block_size) * double(kv.bytes_per_token())),
        " with one table); CPU backend only");
  }
  impl_->cache = backend.make_kv_cache(kv);
  // A cached block's contents depend on the tokens and on what this engine is: the model, its precision and the
  // KV dtype seed every chain hash.
  std::optional<uint64_t> prefix_seed;
  if (o.prefix_cache) {
    const LoadReport& report = impl_->model->report();
    prefix_seed = std::hash<std::string>{}(report.model_path + "|" + c.name + "|" + architecture_name(c.arch) + "|" +
                                           precision_name(report.precision) + "|" + kv_cache_dtype_name(kv_dtype) +
                                           "|" + std::to_string(o.kv_block_size));
  }
  impl_->blocks = std::make_unique<KvBlockManager>(num_blocks, o.kv_block_size, prefix_seed);
  // The sliding layers' blocks are hashed with the same seed: a block's hash names the same tokens in both pools.
  if (grouped) impl_->window_blocks = std::make_unique<KvBlockManager>(kv.window_num_blocks, o.kv_block_size, prefix_seed);
}

Engine::~Engine() = default;

const Model& Engine::model() const { return *impl_->model; }
const Tokenizer& Engine::tokenizer() const { return *impl_->tokenizer; }
const EngineOptions& Engine::options() const { return impl_->options; }
const std::string& Engine::kv_layout() const { return impl_->kv_layout; }

uint64_t Engine::submit(std::vector<int32_t> prompt_ids, const SamplingParams& params, EventCallback on_event) {
  Impl& m = *impl_;
  validate_sampling(params);
  QS_CHECK(!prompt_ids.empty(), ErrorCode::kInvalidArgument, "the prompt is empty");
  const int64_t V = m.model->config().vocab_size;
  for (int32_t id : prompt_ids) {
    QS_CHECK(id >= 0 && id < V, ErrorCode::kInvalidArgument, "prompt token id ", id, " is outside the vocabulary (",
             V, " tokens)");
  }
  const int64_t need = int64_t(prompt_ids.size()) + params.max_new_tokens;
  QS_CHECK(need <= m.options.max_context, ErrorCode::kInvalidArgument, "prompt (", prompt_ids.size(),
           " tokens) + max_new_tokens (", params.max_new_tokens, ") exceeds the context length ", m.options.max_context);
  // Never fits, whatever else runs: a bad argument, not "exhausted" (which clients retry for ever).
  QS_CHECK(m.blocks->blocks_for(need) <= m.blocks->total(), ErrorCode::kInvalidArgument, "prompt (",
           prompt_ids.size(), " tokens", ") + max_new_tokens (", params.max_new_tokens, ") needs ",
           m.blocks->blocks_for(need), " KV-cache blocks but the whole cache has ", m.blocks->total(), " (",
           m.blocks->total() * m.options.kv_block_size, " tokens; --kv-cache-bytes): it can never fit");
  auto s = std::make_unique<Sequence>();
  s->prompt_len = int32_t(prompt_ids.size());
  s->params = params;
  if (m.window_blocks) {
    QS_CHECK(m.admission_bytes(*s) <= m.kv_budget_bytes, ErrorCode::kInvalidArgument, "prompt (",
             prompt_ids.size(), " tokens) + max_new_tokens (", params.max_new_tokens, ") needs ",
             m.admission_bytes(*s), " bytes of KV cache but the whole cache has ", m.kv_budget_bytes,
             " (--kv-cache-bytes): it can never fit");
  }
  s->id = m.next_id++;
  s->tokens = std::move(prompt_ids);
  s->on_event = std::move(on_event);
  s->rng.seed(params.seed ? *params.seed : std::random_device{}());
  s->decoder = std::make_unique<StreamingDecoder>(*m.tokenizer);
  if (params.grammar) s->grammar = std::make_unique<GrammarMatcher>(params.grammar, m.vocabulary_index());
  s->submitted = Clock::now();
  const uint64_t id = s->id;
  m.waiting.push_back(std::move(s));
  return id;
}

void Engine::cancel(uint64_t request_id) {
  Impl& m = *impl_;
  for (auto it = m.waiting.begin(); it != m.waiting.end(); ++it) {
    if ((*it)->id == request_id) {
      std::unique_ptr<Sequence> s = std::move(*it);
      m.waiting.erase(it);
      m.finish(*s, {}, FinishReason::kCancelled);
      return;
    }
  }
  for (auto& s : m.running) {
    if (s->id == request_id) s->cancel_requested = true;
  }
}

bool Engine::has_work() const { return !impl_->waiting.empty() || !impl_->running.empty(); }

void Engine::step() { impl_->step(); }

EngineStats Engine::stats() const {
  EngineStats s = impl_->stats;
  s.running = int64_t(impl_->running.size());
  s.waiting = int64_t(impl_->waiting.size());
  s.kv_blocks_used = impl_->blocks->used();
  s.kv_blocks_total = impl_->blocks->total();
  s.kv_blocks_cached = impl_->blocks->cached();
  s.kv_cache_bytes = int64_t(impl_->cache->bytes());
  s.kv_cache_committed_bytes = int64_t(impl_->cache->committed_bytes());
  s.kv_cache_used_bytes = s.kv_blocks_total > 0 ? s.kv_cache_bytes / s.kv_blocks_total * s.kv_blocks_used : 0;
  if (impl_->window_blocks) {
    s.kv_window_blocks_used = impl_->window_blocks->promised();   // the rings admitted sequences may fill
    s.kv_window_blocks_cached = impl_->window_blocks->cached();
    s.kv_window_blocks_total = impl_->window_blocks->total();
    s.kv_cache_bytes = impl_->kv_budget_bytes;   // the pools are mapped for the whole budget each
    s.kv_cache_used_bytes = impl_->kv_held_bytes();
  }
  return s;
}

GenerateResult generate_once(Engine& engine, const std::vector<int32_t>& prompt_ids, const SamplingParams& params) {
  GenerateResult result;
  std::string error;
  bool done = false;
  engine.submit(prompt_ids, params, [&](const GenerationEvent& ev) {
    result.text += ev.text;
    result.token_ids.insert(result.token_ids.end(), ev.token_ids.begin(), ev.token_ids.end());
    result.prompt_tokens = ev.prompt_tokens;
    if (ev.finish != FinishReason::kNone) {
      result.finish = ev.finish;
      error = ev.error;
      done = true;
    }
  });
  while (!done && engine.has_work()) engine.step();
  QS_CHECK(result.finish != FinishReason::kError, ErrorCode::kInternal, "generation failed: ", error);
  return result;
}

}  // namespace qs
