// quantserve-client: talks to a quantserve server over gRPC (generate, stream, models, info, health, tokenize,
// bench; bench also goes through the OpenAI HTTP API with --api http).
#include <CLI/CLI.hpp>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <optional>

#include <google/protobuf/util/json_util.h>

#include "client/bench.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "quantserve/v1/inference.grpc.pb.h"

namespace v1 = quantserve::v1;

namespace {

struct Common {
  std::string address = "localhost:50051";
  double timeout = 600;
  std::string token;   // bearer token, when the server has --auth-token-file
  std::string tls_ca;  // TLS: the CA bundle that signed the server's certificate (PEM); empty = plaintext
  std::string tls_cert, tls_key;   // mutual TLS: this client's certificate and key (PEM)
};

std::string read_pem(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "quantserve-client: cannot read %s\n", path.c_str());
    std::exit(2);
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

struct GenerateFlags {
  std::string model;
  std::string prompt;
  std::string system;
  int max_new_tokens = 0;
  std::optional<float> temperature;
  int top_k = 0;
  std::optional<float> top_p;
  std::optional<float> repetition_penalty;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool chat = false;
  bool ignore_eos = false;
  int logprobs = 0;
  std::string json_schema;   // a file name or the schema's JSON itself
  bool json = false;
};

std::shared_ptr<grpc::Channel> connect(const Common& common) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  if (common.tls_ca.empty() && common.tls_cert.empty()) {
    return grpc::CreateCustomChannel(common.address, grpc::InsecureChannelCredentials(), args);
  }
  grpc::SslCredentialsOptions tls;
  if (!common.tls_ca.empty()) tls.pem_root_certs = read_pem(common.tls_ca);   // else the system's roots
  if (!common.tls_cert.empty()) {
    tls.pem_cert_chain = read_pem(common.tls_cert);
    tls.pem_private_key = read_pem(common.tls_key);
  }
  return grpc::CreateCustomChannel(common.address, grpc::SslCredentials(tls), args);
}

// Every call's deadline, and its bearer token when one is given.
void set_deadline(grpc::ClientContext& context, const Common& common) {
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(int64_t(common.timeout * 1000)));
  if (!common.token.empty()) context.AddMetadata("authorization", "Bearer " + common.token);
}

[[noreturn]] void fail(const grpc::Status& status) {
  std::fprintf(stderr, "quantserve-client: %s: %s\n",
               [&] {
                 switch (status.error_code()) {
                   case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
                   case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
                   case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
                   case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
                   case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
                   case grpc::StatusCode::CANCELLED: return "CANCELLED";
                   case grpc::StatusCode::INTERNAL: return "INTERNAL";
                   case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
                   case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
                   default: return "error";
                 }
               }(),
               status.error_message().c_str());
  std::exit(1);
}

void add_generate_flags(CLI::App* cmd, GenerateFlags& f) {
  cmd->add_option("prompt", f.prompt, "Prompt text")->required();
  cmd->add_option("--model", f.model, "Served model name (default: the server's first)");
  cmd->add_option("--max-new-tokens", f.max_new_tokens, "Tokens to generate (0 = server default)");
  cmd->add_option("--temperature", f.temperature, "0 = greedy (default 1)");
  cmd->add_option("--top-k", f.top_k, "0 = off");
  cmd->add_option("--top-p", f.top_p, "(0, 1]; 1 = off");
  cmd->add_option("--repetition-penalty", f.repetition_penalty, "> 0; 1 = off");
  cmd->add_option("--seed", f.seed, "Same seed + same request = same tokens");
  cmd->add_option("--stop", f.stop, "Stop sequence (repeatable)");
  cmd->add_option("--stop-token-id", f.stop_token_ids, "Stop token id (repeatable)");
  cmd->add_flag("--chat", f.chat, "Apply the model's chat template");
  cmd->add_option("--system", f.system, "System message (with --chat)");
  cmd->add_flag("--ignore-eos", f.ignore_eos, "Keep generating past the end-of-sequence token");
  cmd->add_option("--logprobs", f.logprobs, "Top-N log-probabilities per token (0..20)");
  cmd->add_option("--json-schema", f.json_schema,
                  "Constrain the output to a JSON Schema: a file, or the schema's JSON itself "
                  "('{\"type\":\"object\"}' = any JSON object)");
  cmd->add_flag("--json", f.json, "Print the response(s) as JSON");
}

// --json-schema takes a file or the JSON itself: text that starts like JSON is the schema.
std::string read_json_schema(const std::string& arg) {
  const size_t first = arg.find_first_not_of(" \t\r\n");
  if (first == std::string::npos || arg[first] == '{' || arg == "true") return arg;
  std::ifstream in(arg, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "quantserve-client: --json-schema: cannot read '%s' (give a file or the schema's JSON)\n",
                 arg.c_str());
    std::exit(2);
  }
  return std::string(std::istreambuf_iterator<char>(in), {});
}

v1::GenerateRequest make_request(const GenerateFlags& f) {
  v1::GenerateRequest r;
  r.set_model(f.model);
  r.set_prompt(f.prompt);
  r.set_chat(f.chat);
  r.set_system_prompt(f.system);
  r.set_max_new_tokens(f.max_new_tokens);
  if (f.temperature) r.set_temperature(*f.temperature);
  r.set_top_k(f.top_k);
  if (f.top_p) r.set_top_p(*f.top_p);
  if (f.repetition_penalty) r.set_repetition_penalty(*f.repetition_penalty);
  if (f.seed) r.set_seed(*f.seed);
  for (const auto& s : f.stop) r.add_stop(s);
  for (int32_t id : f.stop_token_ids) r.add_stop_token_ids(id);
  r.set_ignore_eos(f.ignore_eos);
  r.set_logprobs(f.logprobs);
  if (!f.json_schema.empty()) r.set_json_schema(read_json_schema(f.json_schema));
  return r;
}

std::string to_json(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

void print_summary(const v1::GenerateResponse& r) {
  std::fprintf(stderr, "\n[%s: %s, %d prompt + %d generated tokens, ttft %.1f ms, total %.1f ms]\n",
               r.request_id().c_str(), v1::FinishReason_Name(r.finish_reason()).c_str(), r.usage().prompt_tokens(),
               r.usage().generated_tokens(), r.timings().time_to_first_token_seconds() * 1e3,
               r.timings().total_seconds() * 1e3);
}

int cmd_generate(const Common& common, const GenerateFlags& f) {
  auto stub = v1::Inference::NewStub(connect(common));
  grpc::ClientContext context;
  set_deadline(context, common);
  v1::GenerateResponse response;
  grpc::Status status = stub->Generate(&context, make_request(f), &response);
  if (!status.ok()) fail(status);
  if (f.json) {
    std::printf("%s\n", to_json(response).c_str());
  } else {
    std::printf("%s\n", response.text().c_str());
    print_summary(response);
  }
  return 0;
}

int cmd_stream(const Common& common, const GenerateFlags& f) {
  auto stub = v1::Inference::NewStub(connect(common));
  grpc::ClientContext context;
  set_deadline(context, common);
  auto reader = stub->GenerateStream(&context, make_request(f));
  v1::GenerateResponse chunk, last;
  while (reader->Read(&chunk)) {
    if (f.json) {
      std::printf("%s\n", to_json(chunk).c_str());
    } else {
      std::fwrite(chunk.text().data(), 1, chunk.text().size(), stdout);
    }
    std::fflush(stdout);
    last = chunk;
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) fail(status);
  if (!f.json) {
    std::printf("\n");
    print_summary(last);
  }
  return 0;
}

int cmd_models(const Common& common) {
  auto stub = v1::Inference::NewStub(connect(common));
  grpc::ClientContext context;
  set_deadline(context, common);
  v1::ListModelsResponse response;
  grpc::Status status = stub->ListModels(&context, {}, &response);
  if (!status.ok()) fail(status);
  std::printf("%-32s %-10s %-18s %-8s %s\n", "NAME", "ARCH", "PRECISION", "DEVICE", "PATH");
  for (const auto& m : response.models()) {
    std::printf("%-32s %-10s %-18s %-8s %s\n", m.name().c_str(), m.architecture().c_str(), m.precision().c_str(),
                m.device().c_str(), m.path().c_str());
  }
  return 0;
}

int cmd_info(const Common& common, const std::string& model, bool json) {
  auto stub = v1::Inference::NewStub(connect(common));
  grpc::ClientContext context;
  set_deadline(context, common);
  v1::GetModelRequest request;
  request.set_name(model);
  v1::ModelInfo info;
  grpc::Status status = stub->GetModel(&context, request, &info);
  if (!status.ok()) fail(status);
  if (json) {
    std::printf("%s\n", to_json(info).c_str());
    return 0;
  }
  std::printf("model        %s (%s, %s)\n", info.name().c_str(), info.path().c_str(), info.format().c_str());
  std::printf("architecture %s: %lld layers, hidden %lld, %lld heads (%lld kv), vocab %lld, context %lld%s\n",
              info.architecture().c_str(), (long long)info.num_layers(), (long long)info.hidden_size(),
              (long long)info.num_heads(), (long long)info.num_kv_heads(), (long long)info.vocab_size(),
              (long long)info.max_positions(), info.has_chat_template() ? ", chat template" : "");
  std::printf("precision    %s on %s: %.2f MiB of weights (%.2f MiB in fp32)\n", info.precision().c_str(),
              info.device().c_str(), double(info.weight_bytes()) / (1 << 20), double(info.original_bytes()) / (1 << 20));
  std::printf("load         %.2fs (quantize %.2fs), peak device %.2f MiB\n", info.load_seconds(),
              info.quantize_seconds(), double(info.peak_device_bytes()) / (1 << 20));
  if (info.quantization_size() > 0) {
    std::printf("%-12s %7s %12s %12s %12s %12s %12s\n", "class", "tensors", "MiB", "max abs", "mean abs",
                "median abs", "rel frob");
    for (const auto& c : info.quantization()) {
      std::printf("%-12s %7d %12.3f %12.3g %12.3g %12.3g %12.3g\n", c.tensor_class().c_str(), c.tensors(),
                  double(c.bytes()) / (1 << 20), c.max_abs_error(), c.mean_abs_error(), c.median_abs_error(),
                  c.rel_frobenius_error());
    }
  }
  const auto& l = info.limits();
  std::printf("limits       queued %lld, batch %lld seqs / %lld tokens, prompt %lld, new %lld, message %lld B, "
              "kv blocks %lld\n",
              (long long)l.max_queued(), (long long)l.max_batch_size(), (long long)l.max_batch_tokens(),
              (long long)l.max_prompt_tokens(), (long long)l.max_new_tokens(), (long long)l.max_message_bytes(),
              (long long)l.kv_cache_blocks_total());
  if (!l.kv_cache_dtype().empty()) {
    std::printf("kv cache     %s, %.1f MiB, %lld B a token (%lld tokens)\n", l.kv_cache_dtype().c_str(),
                double(l.kv_cache_bytes()) / (1 << 20), (long long)l.kv_cache_bytes_per_token(),
                (long long)(l.kv_cache_bytes_per_token() > 0 ? l.kv_cache_bytes() / l.kv_cache_bytes_per_token() : 0));
  }
  return 0;
}

int cmd_health(const Common& common, const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(connect(common));
  grpc::ClientContext context;
  set_deadline(context, common);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) fail(status);
  std::printf("%s\n", grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()).c_str());
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 3;
}

int cmd_tokenize(const Common& common, const std::string& model, const std::string& text, bool chat, bool json) {
  auto stub = v1::Inference::NewStub(connect(common));
  grpc::ClientContext context;
  set_deadline(context, common);
  v1::TokenizeRequest request;
  request.set_model(model);
  request.set_text(text);
  request.set_chat(chat);
  request.set_parse_special(true);
  v1::TokenizeResponse response;
  grpc::Status status = stub->Tokenize(&context, request, &response);
  if (!status.ok()) fail(status);
  if (json) {
    std::printf("%s\n", to_json(response).c_str());
    return 0;
  }
  for (int i = 0; i < response.token_ids_size(); ++i) {
    std::printf("%6d  %s\n", response.token_ids(i), nlohmann::json(response.tokens(i)).dump(
                                                          -1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  }
  std::fprintf(stderr, "%d tokens\n", response.token_ids_size());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"quantserve-client: call a quantserve server (gRPC)"};
  app.require_subcommand(1);
  Common common;
  auto* address_opt = app.add_option("--address", common.address, "Server HOST:PORT (bench --api http: the HTTP API's, "
                                     "default localhost:8000)")
                          ->envname("QUANTSERVE_ADDRESS")
                          ->capture_default_str();
  app.add_option("--timeout", common.timeout, "Deadline per call in seconds")->capture_default_str();
  app.add_option("--token", common.token, "Bearer token (a server with --auth-token-file asks for one)")
      ->envname("QUANTSERVE_TOKEN");
  app.add_option("--tls-ca", common.tls_ca, "TLS: CA bundle (PEM) that signed the server's certificate")
      ->envname("QUANTSERVE_TLS_CA");
  app.add_option("--tls-cert", common.tls_cert, "Mutual TLS: this client's certificate chain (PEM)")
      ->envname("QUANTSERVE_TLS_CLIENT_CERT");
  app.add_option("--tls-key", common.tls_key, "Mutual TLS: this client's private key (PEM)")
      ->envname("QUANTSERVE_TLS_CLIENT_KEY");
  int rc = 0;

  GenerateFlags gen, stream;
  auto* generate_cmd = app.add_subcommand("generate", "Generate text (unary Generate)");
  add_generate_flags(generate_cmd, gen);
  generate_cmd->callback([&] { rc = cmd_generate(common, gen); });
  auto* stream_cmd = app.add_subcommand("stream", "Generate text, printing tokens as they arrive (GenerateStream)");
  add_generate_flags(stream_cmd, stream);
  stream_cmd->callback([&] { rc = cmd_stream(common, stream); });

  app.add_subcommand("models", "List the served models")->callback([&] { rc = cmd_models(common); });

  std::string info_model;
  bool info_json = false;
  auto* info_cmd = app.add_subcommand("info", "Describe a model: precision, weight bytes, quantization error, limits");
  info_cmd->add_option("model", info_model, "Model name (default: the server's first)");
  info_cmd->add_flag("--json", info_json);
  info_cmd->callback([&] { rc = cmd_info(common, info_model, info_json); });

  std::string health_service;
  auto* health_cmd = app.add_subcommand("health", "grpc.health.v1 check; exit 0 when SERVING");
  health_cmd->add_option("--service", health_service, "Service name (empty = the server as a whole)");
  health_cmd->callback([&] { rc = cmd_health(common, health_service); });

  std::string tok_model, tok_text;
  bool tok_chat = false, tok_json = false;
  auto* tok_cmd = app.add_subcommand("tokenize", "Show the token ids of a text");
  tok_cmd->add_option("text", tok_text)->required();
  tok_cmd->add_option("--model", tok_model);
  tok_cmd->add_flag("--chat", tok_chat, "Apply the chat template first");
  tok_cmd->add_flag("--json", tok_json);
  tok_cmd->callback([&] { rc = cmd_tokenize(common, tok_model, tok_text, tok_chat, tok_json); });

  qs::client::BenchOptions bench;
  bool bench_json = false;
  std::string bench_output;
  bool bench_unary = false;
  auto* bench_cmd = app.add_subcommand("bench", "Closed-loop load: N concurrent clients, through gRPC or the HTTP API");
  bench_cmd->add_option("--api", bench.api, "The door: grpc (GenerateStream / Generate) or http (POST /v1/completions)")
      ->check(CLI::IsMember({"grpc", "http"}))
      ->capture_default_str();
  bench_cmd->add_flag("--unary", bench_unary, "Unary requests (Generate, or stream: false) instead of streamed ones");
  bench_cmd->add_option("--concurrency", bench.concurrency)->capture_default_str();
  auto* requests_opt = bench_cmd->add_option("--requests", bench.requests, "Total requests");
  bench_cmd->add_option("--duration", bench.duration_seconds, "Seconds to run")->excludes(requests_opt);
  bench_cmd->add_option("--prompt-tokens", bench.prompt_tokens)->capture_default_str();
  bench_cmd->add_option("--max-new-tokens", bench.max_new_tokens)->capture_default_str();
  bench_cmd->add_option("--temperature", bench.temperature)->capture_default_str();
  bench_cmd->add_option("--model", bench.model);
  bench_cmd->add_flag("--json", bench_json, "Print the summary as JSON");
  bench_cmd->add_option("--output", bench_output, "Also write the JSON summary to FILE");
  bench_cmd->callback([&] {
    if (bench.requests <= 0 && bench.duration_seconds <= 0) bench.requests = 4 * int64_t(bench.concurrency);
    const bool http = bench.api == "http";
    bench.stream = !bench_unary;
    bench.address = http && address_opt->count() == 0 && !std::getenv("QUANTSERVE_ADDRESS") ? "localhost:8000"
                                                                                              : common.address;
    bench.token = common.token;
    bench.tls_ca = common.tls_ca;
    bench.tls_cert = common.tls_cert;
    bench.tls_key = common.tls_key;
    bench.timeout_seconds = common.timeout;
    nlohmann::json summary = qs::client::run_bench(
        http ? qs::client::http_door(bench) : qs::client::grpc_door(connect(common), bench), bench);
    if (bench_json) {
      std::printf("%s\n", summary.dump(2).c_str());
    } else {
      std::printf("%s", qs::client::format_bench(summary).c_str());
    }
    if (!bench_output.empty()) {
      std::ofstream out(bench_output);
      out << summary.dump(2) << "\n";
      if (!out) throw std::runtime_error("cannot write " + bench_output);
    }
    rc = summary["requests_ok"].get<int64_t>() > 0 ? 0 : 1;
  });

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "quantserve-client: %s\n", e.what());
    return 1;
  }
  return rc;
}
