// What `quantserve serve` is told: the models to serve, where to listen, and the request limits.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/model.h"

namespace qs::server {

// Request limits; over any of them a request is refused at once with a clear status.
struct ServerLimits {
  int64_t max_queued = 256;            // requests waiting for a place in the running batch
  int64_t max_tokenize_queued = 64;    // Tokenize calls queued or running (on their own thread, all models)
  int64_t max_batch_size = 32;         // running sequences per decode step
  int64_t max_batch_tokens = 512;      // tokens per forward pass
  int64_t max_prompt_tokens = 4096;
  int64_t max_new_tokens = 2048;
  int64_t max_message_bytes = 4 << 20; // gRPC receive limit
  int64_t kv_cache_tokens = 0;         // 0 = kv_cache_bytes, or the engine's default
  int64_t kv_cache_bytes = 0;          // KV-cache budget in bytes; 0 = kv_cache_tokens, or the engine's default
  std::string kv_cache_dtype;          // "fp32", "fp16", ...; empty = the backend's default (fp16 on the CPU)
  bool prefix_cache = true;            // reuse cached KV blocks of prompts' common prefixes (--prefix-cache)
};

// One served model: the name requests use and the file or directory it is loaded from.
struct ModelSpec {
  std::string name;
  std::string path;
};

struct ServeOptions {
  std::vector<ModelSpec> models;       // the first is the default for requests with an empty model
  std::string precision;               // empty = fp32 on the CPU, int8 on CUDA
  int64_t group_size = kGroupSizeAuto; // int8 modes: inputs per weight scale (auto, 0 = per row, 32)
  std::string quantize_embeddings = "auto";   // int8 modes: the embedding table and LM head too (auto, on, off)
  std::string device = "auto";
  std::string listen = "0.0.0.0:50051";
  std::string metrics_listen = "0.0.0.0:9090";
  std::string http_listen = "0.0.0.0:8000";   // the OpenAI-compatible API; empty = off
  double http_request_timeout_seconds = 10;   // a request's headers and body must be in within this
  int64_t http_max_connections = 1024;
  // TLS for both doors: certificate chain and key (PEM); with a client CA, clients must present a certificate
  // it signed (mTLS, gRPC). Without them both doors are plaintext (a warning unless bound to loopback).
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  std::string auth_token_file;                 // bearer tokens for both doors (server/auth.h); empty = none
  // gRPC server reflection: "auto" (on without --auth-token-file, off with it), "on" or "off".
  std::string reflection = "auto";
  ServerLimits limits;
  double drain_grace_seconds = 30;
  double engine_stall_seconds = 60;    // an engine thread this long without progress, with work queued: NOT_SERVING
  int threads = 0;                     // CPU backend threads; 0 = all cores
  std::string json_whitespace = "space";  // constrained JSON: "space" (one optional ' ' after ':' and ',') or "none"
  double step_delay_ms = 0;            // tests only: sleep between engine steps to mimic a slow device
};

// "name=PATH" or "PATH" (named after the file stem or directory name).
ModelSpec parse_model_spec(const std::string& arg);
// A name for a model path: "models/SmolLM2-135M-Instruct.Q4_1.gguf" -> "SmolLM2-135M-Instruct.Q4_1".
std::string model_name_from_path(const std::string& path);
// The default model (models/SmolLM2-135M-Instruct.Q4_1.gguf) resolved against the working directory and the
// source tree; throws qs::Error(kNotFound) telling to run scripts/setup.sh when it is in neither.
std::string default_model_path();
// Checks names are unique and limits positive; throws qs::Error(kInvalidArgument) naming the flag.
void validate(const ServeOptions& options);
// A byte size: "1073741824", "1.5GiB", "512MiB", "64KiB", "2GB" (SI: 1000s), "2G" / "512M" / "64K" (1024s), "0".
// Throws qs::Error(kInvalidArgument) naming `flag` for anything else, negative sizes included.
int64_t parse_byte_size(const std::string& text, const std::string& flag);

}  // namespace qs::server
