// `quantserve serve`: loads the models, starts one engine thread per model, the gRPC server (Inference, health,
// reflection), the OpenAI-compatible HTTP API and the /metrics endpoint, and drains on SIGTERM/SIGINT.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <memory>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/model_file.h"
#include "engine/tokenizer.h"
#include "kernels/error.h"
#include "server/cli_common.h"
#include "server/commands.h"
#include "server/config.h"
#include "server/auth.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/openai_api.h"
#include "server/scheduler.h"
#include "server/service.h"
#include "server/undecodable_request.h"

namespace qs::cli {

namespace {

// Takes gRPC's reflection plugin out of a ServerBuilder (see run_serve: linking the library adds it).
class WithoutReflection final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    std::erase_if(*plugins, [](const auto& plugin) { return plugin->name() == "proto_server_reflection"; });
  }
};

using server::Clock;

struct LoadedModel {
  std::unique_ptr<ModelFile> file;   // kept open: the weights may be views into its mapping
  std::unique_ptr<server::ModelWorker> worker;
  ~LoadedModel() {
    if (worker) worker->stop();   // the engine goes before the file it was loaded from
  }
  LoadedModel() = default;
  LoadedModel(LoadedModel&&) = default;
};

std::string resolve_precision(const std::string& requested, const Backend& backend) {
  if (!requested.empty()) return requested;
  return backend.name().rfind("cuda", 0) == 0 ? "fp16" : "fp32";
}

// Shows the seconds spent while a model loads, on a terminal only (logs stay one line per event).
class LoadProgress {
 public:
  explicit LoadProgress(std::string label) : label_(std::move(label)), start_(Clock::now()) {
    if (!isatty(fileno(stderr))) return;
    thread_ = std::thread([this] {
      while (!done_) {
        double s = std::chrono::duration<double>(Clock::now() - start_).count();
        std::fprintf(stderr, "\rquantserve: loading %s ... %.1fs", label_.c_str(), s);
        std::fflush(stderr);
        for (int i = 0; i < 4 && !done_; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      std::fprintf(stderr, "\r\033[K");
    });
  }
  ~LoadProgress() {
    done_ = true;
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::string label_;
  Clock::time_point start_;
  std::atomic<bool> done_{false};
  std::thread thread_;
};

LoadedModel load_model(const server::ModelSpec& spec, const server::ServeOptions& options, server::Metrics& metrics) {
  LoadedModel loaded;
  ModelFile* file_ptr = nullptr;
  std::string kv_dtype;   // set by the load, read by make_metrics (both on the engine thread, in that order)
  // Runs on the model's engine thread (see ModelWorker).
  auto load = [&]() -> server::LoadedEngine {
    server::LoadedEngine out;
    const bool cpu = options.device == "cpu" || (options.device == "auto" && !cuda_available());
    out.backend = cpu ? make_cpu_backend(options.threads) : make_backend(options.device);
    std::string precision_text = resolve_precision(options.precision, *out.backend);
    auto precision = parse_precision(precision_text);
    QS_CHECK(precision.has_value(), ErrorCode::kInvalidArgument, "--precision '", precision_text,
             "' is not one of: ", precision_list());
    std::unique_ptr<Model> model;
    std::unique_ptr<Tokenizer> tokenizer;
    {
      LoadProgress progress(spec.name + " (" + precision_text + " on " + out.backend->name() + ")");
      loaded.file = ModelFile::open(spec.path);
      file_ptr = loaded.file.get();
      LoadOptions load_options;
      load_options.precision = *precision;
      load_options.group_size = options.group_size;
      load_options.quantize_embeddings = cli::quantize_embeddings_choice(options.quantize_embeddings);
      model = Model::load(*file_ptr, *out.backend, load_options);
      tokenizer = std::make_unique<Tokenizer>(file_ptr->tokenizer_spec());
    }
    const LoadReport& report = model->report();
    std::fprintf(stderr,
                 "quantserve: loaded %s from %s: %s, %s on %s, %.1f MiB of weights, %.2fs (quantize %.2fs)\n",
                 spec.name.c_str(), spec.path.c_str(), architecture_name(model->config().arch),
                 precision_name(report.precision), out.backend->name().c_str(),
                 double(report.weight_bytes) / (1 << 20), report.load_seconds, report.quantize_seconds);
    EngineOptions engine_options;
    engine_options.max_batch_size = options.limits.max_batch_size;
    engine_options.max_batch_tokens = options.limits.max_batch_tokens;
    engine_options.prefill_chunk = std::min<int64_t>(engine_options.prefill_chunk, options.limits.max_batch_tokens);
    engine_options.kv_cache_tokens = options.limits.kv_cache_tokens;
    engine_options.kv_cache_bytes = options.limits.kv_cache_bytes;
    engine_options.prefix_cache = options.limits.prefix_cache;
    if (!options.limits.kv_cache_dtype.empty()) {
      engine_options.kv_cache_dtype = parse_kv_cache_dtype(options.limits.kv_cache_dtype);
    }
    out.engine = std::make_unique<Engine>(std::move(model), std::move(tokenizer), engine_options);
    const EngineOptions& resolved = out.engine->options();
    kv_dtype = kv_cache_dtype_name(*resolved.kv_cache_dtype);
    std::fprintf(stderr,
                 "quantserve: %s: KV cache %.1f MiB (%lld tokens, %s), memory committed as it is used, prefix cache "
                 "%s\n",
                 spec.name.c_str(), double(resolved.kv_cache_bytes) / (1 << 20), (long long)resolved.kv_cache_tokens,
                 kv_dtype.c_str(), resolved.prefix_cache ? "on" : "off");
    if (!out.engine->kv_layout().empty()) {
      std::fprintf(stderr, "quantserve: %s: %s\n", spec.name.c_str(), out.engine->kv_layout().c_str());
    }
    return out;
  };
  auto make_metrics = [&](const Model& model) -> server::ModelMetrics& {
    return metrics.add_model(spec.name, precision_name(model.report().precision), kv_dtype);
  };
  server::WorkerOptions worker_options;
  worker_options.limits = options.limits;
  worker_options.step_delay_ms = options.step_delay_ms;
  loaded.worker = std::make_unique<server::ModelWorker>(spec.name, load, make_metrics, metrics, worker_options);
  return loaded;
}

int64_t total_outstanding(const std::vector<LoadedModel>& models) {
  int64_t n = 0;
  for (const auto& m : models) n += m.worker->outstanding();
  return n;
}

// Waits up to `seconds` for SIGTERM/SIGINT (blocked in every thread); true when one arrived.
bool wait_signal(const sigset_t& signals, double seconds, int* which) {
  timespec ts;
  ts.tv_sec = time_t(seconds);
  ts.tv_nsec = long((seconds - double(ts.tv_sec)) * 1e9);
  int sig = sigtimedwait(&signals, nullptr, &ts);
  if (sig > 0) {
    *which = sig;
    return true;
  }
  return false;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  QS_CHECK(in.good(), ErrorCode::kInvalidArgument, "cannot read ", path.substr(0, 200));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

bool loopback(const std::string& listen) {
  return listen.rfind("127.", 0) == 0 || listen.rfind("localhost:", 0) == 0 || listen.rfind("[::1]:", 0) == 0;
}

// TLS when a certificate is given: grpc's file watcher re-reads the key, the chain and the client CA every few
// seconds, so a renewed certificate (cert-manager, a Secret update) is served without a restart.
std::shared_ptr<grpc::ServerCredentials> grpc_credentials(const server::ServeOptions& options) {
  if (options.tls_cert.empty()) {
    if (!loopback(options.listen)) {
      std::fprintf(stderr, "quantserve: warning: gRPC on %s is plaintext: pass --tls-cert and --tls-key to encrypt it\n",
                   options.listen.c_str());
    }
    return grpc::InsecureServerCredentials();
  }
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      options.tls_key, options.tls_cert, options.tls_client_ca, /*refresh_interval_sec=*/2);
  grpc::experimental::TlsServerCredentialsOptions tls(provider);
  tls.watch_identity_key_cert_pairs();
  if (options.tls_client_ca.empty()) {
    tls.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    tls.watch_root_certs();
    tls.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  return grpc::experimental::TlsServerCredentials(tls);
}

void run_serve(server::ServeOptions options, const std::vector<std::string>& model_args, const std::string& name) {
  for (const std::string& arg : model_args) options.models.push_back(server::parse_model_spec(arg));
  if (options.models.empty()) {
    std::string path = server::default_model_path();
    options.models.push_back({server::model_name_from_path(path), path});
  }
  if (!name.empty()) {
    QS_CHECK(model_args.size() <= 1, ErrorCode::kInvalidArgument,
             "--name names a single model; with several, write --model NAME=PATH");
    options.models.front().name = name;
  }
  server::validate(options);
  // Every HTTP and gRPC connection is a file descriptor: take the hard limit (the usual soft 1,024 would be
  // reached before --http-max-connections).
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
  }

  // Every thread started from here on inherits the blocked signals; the main thread takes them with sigwait.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  std::unique_ptr<server::TokenAuth> auth;
  if (!options.auth_token_file.empty()) {
    auth = std::make_unique<server::TokenAuth>(options.auth_token_file);
    std::fprintf(stderr, "quantserve: auth: %zu bearer token(s) from %s; health and /metrics stay open\n",
                 auth->tokens(), options.auth_token_file.c_str());
  }
  server::Metrics metrics(options.metrics_listen);
  // The OpenAI-compatible API listens from the start, so that /health says 503 "loading" while models load.
  server::OpenAiApi openai(options, metrics, auth.get());
  std::unique_ptr<server::HttpServer> http;
  if (!options.http_listen.empty()) {
    server::HttpServerOptions http_options;
    http_options.listen = options.http_listen;
    http_options.name = "openai";
    http_options.max_body_bytes = options.limits.max_message_bytes;
    http_options.max_connections = options.http_max_connections;
    http_options.request_timeout_seconds = options.http_request_timeout_seconds;
    http_options.threads = 2;
    if (!options.tls_cert.empty()) {
      http_options.tls_cert_pem = read_file(options.tls_cert);
      http_options.tls_key_pem = read_file(options.tls_key);
    }
    if (options.tls_cert.empty() && !loopback(options.http_listen)) {
      std::fprintf(stderr, "quantserve: warning: the OpenAI API on %s is plaintext: pass --tls-cert and --tls-key\n",
                   options.http_listen.c_str());
    }
    http = std::make_unique<server::HttpServer>(
        http_options, [&openai](const server::HttpRequest& request, std::shared_ptr<server::HttpExchange> exchange) {
          openai.handle(request, std::move(exchange));
        });
  }
  std::vector<LoadedModel> models;
  for (const auto& spec : options.models) models.push_back(load_model(spec, options, metrics));

  std::vector<server::ModelWorker*> workers;
  for (auto& m : models) workers.push_back(m.worker.get());
  server::InferenceService service(workers, options, metrics, auth.get());

  grpc::EnableDefaultHealthCheckService(true);
  // Reflection lists the service's methods (public in proto/), not models or data, but it answers without a token:
  // off by default when tokens are on. Debian's libgrpc++_reflection adds its plugin to every ServerBuilder from a
  // static initializer (linking it is enough), so "off" takes the plugin out again (WithoutReflection).
  const bool reflection = options.reflection == "on" || (options.reflection == "auto" && !auth);
  grpc::ServerBuilder builder;
  if (reflection) {
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    if (auth) std::fprintf(stderr, "quantserve: warning: --reflection on: reflection answers without a token\n");
  } else {
    builder.SetOption(std::make_unique<WithoutReflection>());
  }
  int port = 0;
  builder.AddListeningPort(options.listen, grpc_credentials(options), &port);
  builder.RegisterService(&service);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(server::make_undecodable_request_interceptor(metrics));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  builder.SetMaxReceiveMessageSize(int(options.limits.max_message_bytes));
  std::unique_ptr<grpc::Server> grpc_server = builder.BuildAndStart();
  QS_CHECK(grpc_server && port != 0, ErrorCode::kUnavailable, "cannot listen on ", options.listen,
           " (--listen): the address is invalid or the port is in use");
  grpc::HealthCheckServiceInterface* health = grpc_server->GetHealthCheckService();
  if (health) {
    health->SetServingStatus(true);
    health->SetServingStatus("quantserve.v1.Inference", true);
  }
  openai.attach(&service);
  std::string metrics_where = options.metrics_listen.empty() ? "off" : "http://" + options.metrics_listen + "/metrics";
  std::string http_where = http ? "http://" + options.http_listen + "/v1 (port " + std::to_string(http->port()) + ")"
                                : "off";
  std::fprintf(stderr, "quantserve: serving %zu model(s) on %s (gRPC port %d), OpenAI API %s, metrics %s\n",
               models.size(), options.listen.c_str(), port, http_where.c_str(), metrics_where.c_str());

  // Readiness is the overall status ("", and the Inference service's): SERVING once loaded, NOT_SERVING while
  // draining or while an engine is stalled. Liveness ("quantserve.liveness") turns NOT_SERVING only for a stalled
  // engine, so that a draining pod is taken out of the Services but not restarted.
  if (health) health->SetServingStatus("quantserve.liveness", true);
  int sig = 0;
  bool stalled = false;
  while (!wait_signal(signals, 1, &sig)) {
    std::string stuck;
    double worst = 0;
    for (auto& m : models) {
      const double s = m.worker->stalled_seconds();
      if (s > options.engine_stall_seconds && s > worst) {
        worst = s;
        stuck = m.worker->name();
      }
    }
    if (stuck.empty() == !stalled) continue;
    stalled = !stuck.empty();
    if (stalled) {
      std::fprintf(stderr, "quantserve: watchdog: the engine of model %s made no progress for %.0fs with requests "
                   "waiting: health NOT_SERVING\n", stuck.c_str(), worst);
    } else {
      std::fprintf(stderr, "quantserve: watchdog: every engine makes progress again: health SERVING\n");
    }
    openai.set_stalled(stalled);
    if (health) {
      health->SetServingStatus(!stalled);
      health->SetServingStatus("quantserve.v1.Inference", !stalled);
      health->SetServingStatus("quantserve.liveness", !stalled);
    }
  }
  std::fprintf(stderr, "quantserve: %s: draining (%lld requests in flight, grace %.1fs)\n",
               sig == SIGTERM ? "SIGTERM" : "SIGINT", (long long)total_outstanding(models), options.drain_grace_seconds);
  if (health) health->SetServingStatus(false);
  service.start_draining();

  const auto grace_end = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                            std::chrono::duration<double>(options.drain_grace_seconds));
  bool forced = false;
  while (total_outstanding(models) > 0 && Clock::now() < grace_end) {
    if (wait_signal(signals, 0.05, &sig)) {
      std::fprintf(stderr, "quantserve: second signal: cancelling the remaining requests now\n");
      forced = true;
      break;
    }
  }
  if (total_outstanding(models) > 0) {
    if (!forced) std::fprintf(stderr, "quantserve: grace period over: cancelling the remaining requests\n");
    for (auto& m : models) m.worker->cancel_all();
    const auto cancel_end = Clock::now() + std::chrono::seconds(5);
    while (total_outstanding(models) > 0 && Clock::now() < cancel_end) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  // Let the last chunks and statuses reach their clients, then stop at once: an idle client connection would
  // otherwise hold Shutdown until its deadline.
  const auto calls_end = Clock::now() + std::chrono::seconds(5);
  while ((service.active_calls() > 0 || openai.active() > 0) && Clock::now() < calls_end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  http.reset();   // what is still open gets its last bytes or a 503
  grpc_server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(100));
  for (auto& m : models) m.worker->stop();
  grpc_server->Wait();
  std::fprintf(stderr, "quantserve: stopped\n");
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("serve", "Serve models over gRPC (quantserve.v1.Inference) with Prometheus metrics");
  auto options = std::make_shared<server::ServeOptions>();
  auto model_args = std::make_shared<std::vector<std::string>>();
  auto name = std::make_shared<std::string>();
  auto& l = options->limits;
  cmd->add_option("--model", *model_args,
                  "Model to serve: PATH or NAME=PATH (a HF directory or a .gguf), repeatable; the first is the default "
                  "(default: models/SmolLM2-135M-Instruct.Q4_1.gguf)")
      ->envname("QUANTSERVE_MODEL")
      ->delimiter(',');
  cmd->add_option("--name", *name, "Name of the (single) model in requests and metrics (default: file stem)")
      ->envname("QUANTSERVE_NAME");
  cmd->add_option("--precision", options->precision,
                  "Weight precision: " + precision_list() + " (default: fp32 on CPU, fp16 on CUDA)")
      ->envname("QUANTSERVE_PRECISION");
  add_group_size_option(cmd, options->group_size);
  add_quantize_embeddings_option(cmd, options->quantize_embeddings);
  cmd->add_option("--device", options->device, "cpu, cuda, cuda:N or auto")
      ->envname("QUANTSERVE_DEVICE")
      ->capture_default_str();
  cmd->add_option("--listen", options->listen, "gRPC address HOST:PORT")
      ->envname("QUANTSERVE_LISTEN")
      ->capture_default_str();
  cmd->add_option("--metrics-listen", options->metrics_listen, "Prometheus /metrics address HOST:PORT")
      ->envname("QUANTSERVE_METRICS_LISTEN")
      ->capture_default_str();
  cmd->add_option("--http-listen", options->http_listen,
                  "OpenAI-compatible HTTP API address HOST:PORT (/v1/completions, /v1/chat/completions, /v1/models, "
                  "/health); empty = off")
      ->envname("QUANTSERVE_HTTP_LISTEN")
      ->capture_default_str();
  cmd->add_option("--http-request-timeout", options->http_request_timeout_seconds,
                  "Seconds an HTTP client has to send a whole request (headers and body); also the idle limit")
      ->envname("QUANTSERVE_HTTP_REQUEST_TIMEOUT")
      ->capture_default_str();
  cmd->add_option("--http-max-connections", options->http_max_connections,
                  "Open HTTP connections at most; more are closed at once")
      ->envname("QUANTSERVE_HTTP_MAX_CONNECTIONS")
      ->capture_default_str();
  cmd->add_option("--tls-cert", options->tls_cert,
                  "TLS certificate chain (PEM) for gRPC and the OpenAI API; gRPC re-reads it when it changes")
      ->envname("QUANTSERVE_TLS_CERT");
  cmd->add_option("--tls-key", options->tls_key, "TLS private key (PEM) of --tls-cert")->envname("QUANTSERVE_TLS_KEY");
  cmd->add_option("--tls-client-ca", options->tls_client_ca,
                  "CA bundle (PEM): gRPC clients must present a certificate it signed (mutual TLS)")
      ->envname("QUANTSERVE_TLS_CLIENT_CA");
  cmd->add_option("--auth-token-file", options->auth_token_file,
                  "Bearer tokens, one per line ('TOKEN' or 'TOKEN read' for a read-only one), for every gRPC call "
                  "and /v1 route but health; reloaded when the file changes")
      ->envname("QUANTSERVE_AUTH_TOKEN_FILE");
  cmd->add_option("--reflection", options->reflection,
                  "gRPC server reflection (it answers without a token): auto = on unless --auth-token-file is given")
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->envname("QUANTSERVE_REFLECTION")
      ->capture_default_str();
  cmd->add_option("--max-tokenize-queued", l.max_tokenize_queued,
                  "Tokenize calls queued or running (on a thread of their own) before RESOURCE_EXHAUSTED")
      ->envname("QUANTSERVE_MAX_TOKENIZE_QUEUED")
      ->capture_default_str();
  cmd->add_option("--max-queued", l.max_queued, "Requests waiting for the running batch before RESOURCE_EXHAUSTED")
      ->envname("QUANTSERVE_MAX_QUEUED")
      ->capture_default_str();
  cmd->add_option("--max-batch-size", l.max_batch_size, "Sequences per decode step")
      ->envname("QUANTSERVE_MAX_BATCH_SIZE")
      ->capture_default_str();
  cmd->add_option("--max-batch-tokens", l.max_batch_tokens, "Tokens per forward pass (prefill chunks + decodes)")
      ->envname("QUANTSERVE_MAX_BATCH_TOKENS")
      ->capture_default_str();
  cmd->add_option("--max-prompt-tokens", l.max_prompt_tokens, "Longest prompt accepted")
      ->envname("QUANTSERVE_MAX_PROMPT_TOKENS")
      ->capture_default_str();
  cmd->add_option("--max-new-tokens", l.max_new_tokens, "Largest max_new_tokens a request may ask for")
      ->envname("QUANTSERVE_MAX_NEW_TOKENS")
      ->capture_default_str();
  cmd->add_option("--max-message-bytes", l.max_message_bytes, "Largest gRPC request message")
      ->envname("QUANTSERVE_MAX_MESSAGE_BYTES")
      ->capture_default_str();
  cmd->add_option("--kv-cache-tokens", l.kv_cache_tokens,
                  "KV-cache capacity in tokens (0 = --kv-cache-bytes, or the default)")
      ->envname("QUANTSERVE_KV_CACHE_TOKENS")
      ->capture_default_str();
  auto kv_bytes = std::make_shared<std::string>();
  cmd->add_option("--kv-cache-bytes", *kv_bytes,
                  "KV-cache budget: bytes, or with KiB/MiB/GiB (K/M/G) or kB/MB/GB; at least one sequence of the "
                  "model's context. Memory is committed as the cache fills (default: 32 sequences at the model's "
                  "context, capped at 65,536 tokens)")
      ->envname("QUANTSERVE_KV_CACHE_BYTES");
  cmd->add_option("--kv-cache-dtype", l.kv_cache_dtype,
                  "KV-cache storage: fp32, fp16, bf16 or int8 (a scale per token and head; CPU only) (default: fp16 "
                  "on CPU, fp32 on CUDA, which stores fp32 only)")
      ->envname("QUANTSERVE_KV_CACHE_DTYPE");
  add_prefix_cache_option(cmd, l.prefix_cache);
  cmd->add_option("--engine-stall-seconds", options->engine_stall_seconds,
                  "Health turns NOT_SERVING (gRPC health, /health 503) when an engine thread makes no progress this "
                  "long with requests waiting")
      ->envname("QUANTSERVE_ENGINE_STALL_SECONDS")
      ->capture_default_str();
  cmd->add_option("--drain-grace-seconds", options->drain_grace_seconds,
                  "On SIGTERM, how long running requests may take to finish")
      ->envname("QUANTSERVE_DRAIN_GRACE_SECONDS")
      ->capture_default_str();
  cmd->add_option("--threads", options->threads, "CPU backend threads (0 = all cores)")
      ->envname("QUANTSERVE_THREADS")
      ->capture_default_str();
  cmd->add_option("--json-whitespace", options->json_whitespace,
                  "Constrained JSON output (json_schema): 'space' allows one space after ':' and ',' (the model "
                  "chooses), 'none' allows no whitespace at all")
      ->check(CLI::IsMember({"space", "none"}))
      ->envname("QUANTSERVE_JSON_WHITESPACE")
      ->capture_default_str();
  // Tests only (hidden): slows every engine step so cancellation and drain can be observed on tiny models.
  cmd->add_option("--step-delay-ms", options->step_delay_ms)->envname("QUANTSERVE_STEP_DELAY_MS")->group("");
  cmd->callback([options, model_args, name, kv_bytes] {
    if (!kv_bytes->empty()) options->limits.kv_cache_bytes = server::parse_byte_size(*kv_bytes, "--kv-cache-bytes");
    run_serve(*options, *model_args, *name);
  });
}

}  // namespace qs::cli
