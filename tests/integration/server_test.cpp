// End-to-end tests of `quantserve serve`: the real binary on loopback ports, real gRPC channels, /metrics over HTTP.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <future>
#include <memory>
#include <thread>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "quantserve/v1/inference.grpc.pb.h"
#include "server_process.h"

namespace v1 = quantserve::v1;
using qs::test::ServerProcess;
using Clock = std::chrono::steady_clock;

namespace {

const std::string kFixture = std::string(QS_SOURCE_DIR) + "/tests/fixtures/models/gpt2";

std::unique_ptr<ServerProcess> start_server(std::vector<std::string> extra) {
  std::vector<std::string> args = {"--model", "gpt2=" + kFixture, "--device", "cpu", "--threads", "1"};
  args.insert(args.end(), extra.begin(), extra.end());
  auto server = std::make_unique<ServerProcess>(args);
  if (!server->start()) {
    ADD_FAILURE() << "quantserve did not become healthy; its log:\n" << server->log();
    return nullptr;
  }
  return server;
}

std::unique_ptr<v1::Inference::Stub> stub_for(const ServerProcess& server) {
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(16 << 20);
  return v1::Inference::NewStub(grpc::CreateCustomChannel(server.address, grpc::InsecureChannelCredentials(), args));
}

void deadline_in(grpc::ClientContext& context, double seconds) {
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(int64_t(seconds * 1000)));
}

v1::GenerateRequest greedy(const std::string& prompt, int max_new_tokens) {
  v1::GenerateRequest r;
  r.set_prompt(prompt);
  r.set_max_new_tokens(max_new_tokens);
  r.set_temperature(0);
  r.set_ignore_eos(true);
  return r;
}

grpc::Status generate(v1::Inference::Stub& stub, const v1::GenerateRequest& request, v1::GenerateResponse* response,
                      double timeout = 60) {
  grpc::ClientContext context;
  deadline_in(context, timeout);
  return stub.Generate(&context, request, response);
}

// Sends `bytes` as the request of `method` ("/quantserve.v1.Inference/Generate"), bypassing protobuf.
grpc::Status call_with_raw_bytes(const std::string& address, const std::string& method, const std::string& bytes) {
  grpc::GenericStub stub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::Slice slice(bytes);
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::ClientContext context;
  deadline_in(context, 30);
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, method, grpc::StubOptions(), &request, &response,
                 [&done](grpc::Status status) { done.set_value(std::move(status)); });
  return done.get_future().get();
}

// Lists the services reflection names (`names`); the status of the reflection call (UNIMPLEMENTED when off).
grpc::Status reflection_services(const std::string& address, std::vector<std::string>* names) {
  auto reflection = grpc::reflection::v1alpha::ServerReflection::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  deadline_in(context, 10);
  auto stream = reflection->ServerReflectionInfo(&context);
  grpc::reflection::v1alpha::ServerReflectionRequest request;
  request.set_list_services("");
  grpc::reflection::v1alpha::ServerReflectionResponse response;
  if (stream->Write(request) && stream->Read(&response)) {
    for (const auto& s : response.list_services_response().service()) names->push_back(s.name());
  }
  stream->WritesDone();
  return stream->Finish();
}

// Polls /metrics until `pred` holds or `timeout` passes.
template <typename Pred>
bool wait_metrics(int port, Pred pred, double timeout, qs::test::Scrape* last = nullptr) {
  const auto end = Clock::now() + std::chrono::milliseconds(int64_t(timeout * 1000));
  while (Clock::now() < end) {
    auto scrape = qs::test::parse_metrics(qs::test::http_get(port, "/metrics"));
    if (last) *last = scrape;
    if (pred(scrape)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

double requests_with_status(const qs::test::Scrape& s, const std::string& status) {
  double total = 0;
  for (const auto& [key, v] : s.samples) {
    if (key.rfind("quantserve_requests_total{", 0) == 0 && key.find("model=\"gpt2\"") != std::string::npos &&
        key.find("status=\"" + status + "\"") != std::string::npos) {
      total += v;
    }
  }
  return total;
}

// One server for the functional tests: generous batch, small limits to test against.
class ServeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = start_server({"--max-prompt-tokens", "32", "--max-new-tokens", "100", "--max-message-bytes", "65536",
                            "--max-batch-size", "32"})
                  .release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    if (!server_) GTEST_SKIP() << "server did not start";
    stub_ = stub_for(*server_);
  }
  static ServerProcess* server_;
  std::unique_ptr<v1::Inference::Stub> stub_;
};
ServerProcess* ServeTest::server_ = nullptr;

TEST_F(ServeTest, UnaryGenerate) {
  v1::GenerateResponse r;
  grpc::Status status = generate(*stub_, greedy("Hello world", 16), &r);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(r.token_ids_size(), 16);
  EXPECT_EQ(r.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(r.usage().generated_tokens(), 16);
  EXPECT_GT(r.usage().prompt_tokens(), 0);
  EXPECT_EQ(r.model(), "gpt2");
  EXPECT_FALSE(r.request_id().empty());
  EXPECT_GT(r.timings().total_seconds(), 0);
  EXPECT_GE(r.timings().total_seconds(), r.timings().time_to_first_token_seconds());
  // Greedy is deterministic.
  v1::GenerateResponse again;
  ASSERT_TRUE(generate(*stub_, greedy("Hello world", 16), &again).ok());
  EXPECT_EQ(r.text(), again.text());
}

TEST_F(ServeTest, TokenIdsPromptAndLogprobs) {
  v1::GenerateRequest request = greedy("", 4);
  request.clear_prompt();
  for (int id : {5, 6, 7}) request.add_prompt_token_ids(id);
  request.set_logprobs(3);
  v1::GenerateResponse r;
  grpc::Status status = generate(*stub_, request, &r);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(r.usage().prompt_tokens(), 3);
  ASSERT_EQ(r.logprobs_size(), 4);
  for (const auto& lp : r.logprobs()) {
    EXPECT_LE(lp.logprob(), 0);
    EXPECT_EQ(lp.top_size(), 3);
  }
}

TEST_F(ServeTest, StreamConcatenatesToUnary) {
  v1::GenerateRequest request = greedy("Once upon a time", 24);
  request.set_temperature(0.9f);
  request.set_seed(1234);
  v1::GenerateResponse unary;
  ASSERT_TRUE(generate(*stub_, request, &unary).ok());

  grpc::ClientContext context;
  deadline_in(context, 60);
  auto reader = stub_->GenerateStream(&context, request);
  v1::GenerateResponse chunk;
  std::string text;
  std::vector<int> ids;
  int chunks = 0;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  while (reader->Read(&chunk)) {
    ++chunks;
    text += chunk.text();
    ids.insert(ids.end(), chunk.token_ids().begin(), chunk.token_ids().end());
    if (chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) finish = chunk.finish_reason();
  }
  grpc::Status status = reader->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_GE(chunks, 1);
  EXPECT_EQ(finish, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(text, unary.text());
  EXPECT_EQ(ids, std::vector<int>(unary.token_ids().begin(), unary.token_ids().end()));
}

TEST_F(ServeTest, ConcurrentGreedyEqualsAlone) {
  const std::vector<std::string> prompts = {"The cat", "A dog ran", "Hello", "In the beginning", "Numbers 1 2 3",
                                            "quantized", "Why is the sky", "x y z"};
  std::vector<std::string> alone(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    v1::GenerateResponse r;
    ASSERT_TRUE(generate(*stub_, greedy(prompts[i], 20), &r).ok());
    alone[i] = r.text() + "|" + std::to_string(r.token_ids_size());
  }
  constexpr int kRequests = 32;
  std::vector<std::string> together(kRequests);
  std::vector<grpc::Status> statuses(kRequests);
  std::vector<std::thread> threads;
  for (int i = 0; i < kRequests; ++i) {
    threads.emplace_back([&, i] {
      auto stub = stub_for(*server_);
      v1::GenerateResponse r;
      statuses[i] = generate(*stub, greedy(prompts[i % prompts.size()], 20), &r);
      together[i] = r.text() + "|" + std::to_string(r.token_ids_size());
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(statuses[i].ok()) << statuses[i].error_message();
    EXPECT_EQ(together[i], alone[i % prompts.size()]) << "request " << i;
  }
}

TEST_F(ServeTest, InvalidArguments) {
  struct Case {
    std::string what;
    v1::GenerateRequest request;
  };
  std::vector<Case> cases;
  auto base = greedy("Hello", 8);
  cases.push_back({"empty prompt", greedy("", 8)});
  { auto r = base; r.set_temperature(-1); cases.push_back({"temperature < 0", r}); }
  { auto r = base; r.set_top_p(0); cases.push_back({"top_p = 0", r}); }
  { auto r = base; r.set_top_p(1.5f); cases.push_back({"top_p > 1", r}); }
  { auto r = base; r.set_top_k(-1); cases.push_back({"top_k < 0", r}); }
  { auto r = base; r.set_repetition_penalty(0); cases.push_back({"repetition_penalty = 0", r}); }
  { auto r = base; r.set_repetition_penalty(1e-38f); cases.push_back({"repetition_penalty 1e-38 (inf logits)", r}); }
  { auto r = base; r.set_presence_penalty(2.5f); cases.push_back({"presence_penalty > 2", r}); }
  { auto r = base; for (int i = 0; i < 17; ++i) r.add_stop("s" + std::to_string(i)); cases.push_back({"17 stops", r}); }
  { auto r = base; r.add_stop(std::string(300, 'x')); cases.push_back({"a 300-byte stop", r}); }
  { auto r = base; r.set_chat(true); r.set_system_prompt(std::string(40000, 's'));
    cases.push_back({"a system prompt far over --max-prompt-tokens", r}); }
  { auto r = greedy("", 8); auto* m = r.add_messages(); m->set_role("tool"); m->set_content("x");
    cases.push_back({"message role tool", r}); }
  { auto r = base; r.set_logprobs(21); cases.push_back({"logprobs > 20", r}); }
  { auto r = base; r.set_max_new_tokens(101); cases.push_back({"max_new_tokens over --max-new-tokens", r}); }
  { auto r = base; r.set_max_new_tokens(-1); cases.push_back({"max_new_tokens < 0", r}); }
  {
    std::string long_prompt;
    for (int i = 0; i < 60; ++i) long_prompt += "word ";
    cases.push_back({"prompt over --max-prompt-tokens", greedy(long_prompt, 8)});
  }
  {
    auto r = greedy("", 8);
    for (int i = 0; i < 40; ++i) r.add_prompt_token_ids(1);
    cases.push_back({"prompt ids over --max-prompt-tokens", r});
  }
  { auto r = greedy("", 8); r.add_prompt_token_ids(1000000); cases.push_back({"token id out of vocabulary", r}); }
  { auto r = base; r.set_json_schema("{\"type\":\"object\",\"requir\x7f\\n\":1}");
    cases.push_back({"a schema keyword with control bytes (found by tests/fuzz request_validation)", r}); }
  for (const auto& c : cases) {
    v1::GenerateResponse r;
    grpc::Status status = generate(*stub_, c.request, &r);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.what << ": " << status.error_message();
    EXPECT_FALSE(status.error_message().empty()) << c.what;
    // Echoed bytes never reach a status (and the log line that carries it) raw.
    const std::string message = status.error_message();
    EXPECT_TRUE(std::none_of(message.begin(), message.end(), [](unsigned char ch) { return ch < 0x20 || ch == 0x7f; }))
        << c.what;
  }
  // The same through the streaming call.
  grpc::ClientContext context;
  deadline_in(context, 10);
  auto bad = base;
  bad.set_temperature(-2);
  auto reader = stub_->GenerateStream(&context, bad);
  v1::GenerateResponse chunk;
  while (reader->Read(&chunk)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServeTest, UnknownModelAndMessageSize) {
  auto request = greedy("Hello", 4);
  request.set_model("no-such-model");
  v1::GenerateResponse r;
  grpc::Status status = generate(*stub_, request, &r);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << status.error_message();
  // A name is echoed bounded and without control characters (a newline would forge a log line).
  request.set_model(std::string(60000, 'm') + "\nquantserve: forged");
  status = generate(*stub_, request, &r);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << status.error_message();
  EXPECT_LT(status.error_message().size(), 400u);
  EXPECT_EQ(status.error_message().find('\n'), std::string::npos);

  auto huge = greedy(std::string(100000, 'a'), 4);   // over --max-message-bytes 65536
  status = generate(*stub_, huge, &r);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
}

TEST_F(ServeTest, ModelsInfoTokenize) {
  grpc::ClientContext c1;
  deadline_in(c1, 10);
  v1::ListModelsResponse models;
  ASSERT_TRUE(stub_->ListModels(&c1, {}, &models).ok());
  ASSERT_EQ(models.models_size(), 1);
  EXPECT_EQ(models.models(0).name(), "gpt2");
  EXPECT_EQ(models.models(0).architecture(), "gpt2");

  grpc::ClientContext c2;
  deadline_in(c2, 10);
  v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModel(&c2, {}, &info).ok());
  EXPECT_EQ(info.precision(), "fp32");
  EXPECT_GT(info.weight_bytes(), 0u);
  EXPECT_EQ(info.weight_bytes_by_precision().count("fp32"), 1u);
  EXPECT_EQ(info.limits().max_new_tokens(), 100);
  EXPECT_EQ(info.limits().max_prompt_tokens(), 32);
  EXPECT_GT(info.limits().kv_cache_blocks_total(), 0);

  grpc::ClientContext c3;
  deadline_in(c3, 10);
  v1::TokenizeRequest tr;
  tr.set_text("Hello world");
  v1::TokenizeResponse tokens;
  ASSERT_TRUE(stub_->Tokenize(&c3, tr, &tokens).ok());
  EXPECT_GT(tokens.token_ids_size(), 0);
  EXPECT_EQ(tokens.token_ids_size(), tokens.tokens_size());
}

TEST_F(ServeTest, HealthAndReflection) {
  auto channel = grpc::CreateChannel(server_->address, grpc::InsecureChannelCredentials());
  auto health = grpc::health::v1::Health::NewStub(channel);
  for (const std::string service : {"", "quantserve.v1.Inference"}) {
    grpc::ClientContext context;
    deadline_in(context, 5);
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    ASSERT_TRUE(health->Check(&context, request, &response).ok()) << service;
    EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING) << service;
  }

  auto reflection = grpc::reflection::v1alpha::ServerReflection::NewStub(channel);
  grpc::ClientContext context;
  deadline_in(context, 5);
  auto stream = reflection->ServerReflectionInfo(&context);
  grpc::reflection::v1alpha::ServerReflectionRequest request;
  request.set_list_services("");
  ASSERT_TRUE(stream->Write(request));
  grpc::reflection::v1alpha::ServerReflectionResponse response;
  ASSERT_TRUE(stream->Read(&response));
  std::vector<std::string> names;
  for (const auto& s : response.list_services_response().service()) names.push_back(s.name());
  EXPECT_NE(std::find(names.begin(), names.end(), "quantserve.v1.Inference"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "grpc.health.v1.Health"), names.end());
  request.set_file_containing_symbol("quantserve.v1.Inference");
  ASSERT_TRUE(stream->Write(request));
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_GT(response.file_descriptor_response().file_descriptor_proto_size(), 0);
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(ServeTest, UndecodableRequestsAreInvalidArgumentNamingTheType) {
  // Field 1 (a string) announcing 5 bytes and carrying 2: no protobuf parser accepts it.
  const std::string truncated = "\x0a\x05" "ab";
  for (const auto& [method, type] : std::vector<std::pair<std::string, std::string>>{
           {"Generate", "quantserve.v1.GenerateRequest"},
           {"GenerateStream", "quantserve.v1.GenerateRequest"},
           {"Tokenize", "quantserve.v1.TokenizeRequest"},
           {"GetModel", "quantserve.v1.GetModelRequest"}}) {
    grpc::Status status = call_with_raw_bytes(server_->address, "/quantserve.v1.Inference/" + method, truncated);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method << ": " << status.error_message();
    EXPECT_NE(status.error_message().find(type), std::string::npos) << method << ": " << status.error_message();
  }
  // A method the service does not have is still gRPC's own UNIMPLEMENTED.
  EXPECT_EQ(call_with_raw_bytes(server_->address, "/quantserve.v1.Inference/NoSuchMethod", "").error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
  // And the server still answers a good request.
  v1::GenerateResponse r;
  EXPECT_TRUE(generate(*stub_, greedy("Hello", 2), &r).ok());
}

TEST_F(ServeTest, MetricsFamiliesPresent) {
  v1::GenerateResponse r;
  ASSERT_TRUE(generate(*stub_, greedy("metrics please", 8), &r).ok());
  qs::test::Scrape scrape;
  ASSERT_TRUE(wait_metrics(server_->metrics_port, [](const qs::test::Scrape& s) {
    return s.value("quantserve_generated_tokens_total", {"model=\"gpt2\""}) >= 8;
  }, 10, &scrape)) << "no generated tokens counted";
  const std::map<std::string, std::string> families = {
      {"quantserve_time_to_first_token_seconds", "histogram"},
      {"quantserve_inter_token_latency_seconds", "histogram"},
      {"quantserve_request_duration_seconds", "histogram"},
      {"quantserve_queue_duration_seconds", "histogram"},
      {"quantserve_prompt_tokens_total", "counter"},
      {"quantserve_generated_tokens_total", "counter"},
      {"quantserve_requests_total", "counter"},
      {"quantserve_requests_running", "gauge"},
      {"quantserve_requests_waiting", "gauge"},
      {"quantserve_batch_size", "gauge"},
      {"quantserve_kv_cache_blocks_used", "gauge"},
      {"quantserve_kv_cache_blocks_total", "gauge"},
      {"quantserve_kv_cache_capacity_bytes", "gauge"},
      {"quantserve_kv_cache_committed_bytes", "gauge"},
      {"quantserve_kv_cache_used_bytes", "gauge"},
      {"quantserve_kv_cache_blocks_cached", "gauge"},
      {"quantserve_kv_cache_window_blocks_used", "gauge"},
      {"quantserve_kv_cache_window_blocks_total", "gauge"},
      {"quantserve_kv_cache_window_blocks_cached", "gauge"},
      {"quantserve_prefix_cache_queried_tokens_total", "counter"},
      {"quantserve_prefix_cache_hit_tokens_total", "counter"},
      {"quantserve_device_memory_used_bytes", "gauge"},
      {"quantserve_device_memory_total_bytes", "gauge"},
      {"quantserve_model_weight_bytes", "gauge"},
      {"quantserve_model_load_seconds", "gauge"},
      {"quantserve_model_quantize_seconds", "gauge"},
      {"quantserve_model_weight_bytes_saved", "gauge"},
      {"quantserve_quantization_relative_error", "gauge"},
      {"quantserve_api_request_duration_seconds", "histogram"},
      {"process_resident_memory_bytes", "gauge"},
  };
  for (const auto& [name, type] : families) {
    ASSERT_TRUE(scrape.types.count(name)) << name << " missing";
    EXPECT_EQ(scrape.types.at(name), type) << name;
  }
  EXPECT_GT(scrape.value("quantserve_time_to_first_token_seconds_count", {"model=\"gpt2\""}), 0);
  EXPECT_GT(scrape.value("quantserve_requests_total", {"model=\"gpt2\"", "status=\"OK\"", "finish_reason=\"length\""}),
            0);
  // Pre-created, so dashboards never see a gap.
  EXPECT_GE(scrape.value("quantserve_requests_total", {"status=\"RESOURCE_EXHAUSTED\"", "finish_reason=\"none\""}), 0);
  EXPECT_GT(scrape.value("quantserve_kv_cache_blocks_total", {"model=\"gpt2\""}), 0);
  // fp32: every class is there, exact.
  EXPECT_EQ(scrape.value("quantserve_quantization_relative_error",
                         {"model=\"gpt2\"", "tensor_class=\"attention\"", "stat=\"max\""}), 0);
  // The CPU stores the cache in fp16 by default and commits it as it is written: after generating, some of the
  // budget is committed, never more than all of it.
  const double kv_capacity = scrape.value("quantserve_kv_cache_capacity_bytes", {"model=\"gpt2\"", "dtype=\"fp16\""});
  const double kv_committed = scrape.value("quantserve_kv_cache_committed_bytes", {"model=\"gpt2\"", "dtype=\"fp16\""});
  EXPECT_GT(kv_capacity, 0);
  EXPECT_GT(kv_committed, 0);
  EXPECT_LE(kv_committed, kv_capacity);
  EXPECT_GE(scrape.value("quantserve_kv_cache_used_bytes", {"model=\"gpt2\"", "dtype=\"fp16\""}), 0);
  EXPECT_GT(scrape.value("quantserve_model_weight_bytes", {"model=\"gpt2\"", "precision=\"fp32\""}), 0);
  EXPECT_GT(scrape.value("quantserve_device_memory_total_bytes", {"device=\"cpu\""}), 0);
  EXPECT_GT(scrape.value("process_resident_memory_bytes"), 0);
  EXPECT_GE(requests_with_status(scrape, "INVALID_ARGUMENT"), 0);
}

// A server whose engine steps are slowed down (hidden --step-delay-ms), batch 1 and a queue of 1, so that
// cancellation, deadlines and the queue limit can be observed on a tiny model.
class SlowServeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = start_server({"--step-delay-ms", "20", "--max-batch-size", "1", "--max-queued", "1"}).release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    if (!server_) GTEST_SKIP() << "server did not start";
    stub_ = stub_for(*server_);
    // Each test starts from an idle server.
    ASSERT_TRUE(wait_metrics(server_->metrics_port, [](const qs::test::Scrape& s) {
      return s.value("quantserve_kv_cache_blocks_used", {"model=\"gpt2\""}) == 0 &&
             s.value("quantserve_requests_running", {"model=\"gpt2\""}) == 0;
    }, 30));
  }
  static ServerProcess* server_;
  std::unique_ptr<v1::Inference::Stub> stub_;
};
ServerProcess* SlowServeTest::server_ = nullptr;

TEST_F(SlowServeTest, ClientCancelFreesKvBlocks) {
  qs::test::Scrape before = qs::test::parse_metrics(qs::test::http_get(server_->metrics_port, "/metrics"));
  grpc::ClientContext context;
  deadline_in(context, 60);
  auto reader = stub_->GenerateStream(&context, greedy("cancel me", 100));
  v1::GenerateResponse chunk;
  int got = 0;
  while (got < 3 && reader->Read(&chunk)) got += chunk.token_ids_size();
  ASSERT_GE(got, 3);
  qs::test::Scrape during = qs::test::parse_metrics(qs::test::http_get(server_->metrics_port, "/metrics"));
  EXPECT_GT(during.value("quantserve_kv_cache_blocks_used", {"model=\"gpt2\""}), 0);
  context.TryCancel();
  while (reader->Read(&chunk)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  qs::test::Scrape after;
  EXPECT_TRUE(wait_metrics(server_->metrics_port, [&](const qs::test::Scrape& s) {
    return s.value("quantserve_kv_cache_blocks_used", {"model=\"gpt2\""}) == 0 &&
           requests_with_status(s, "CANCELLED") > requests_with_status(before, "CANCELLED");
  }, 5, &after)) << "KV blocks used: " << after.value("quantserve_kv_cache_blocks_used", {"model=\"gpt2\""});
  // Well before the 100 tokens (2 s at 20 ms a step) would have finished.
  EXPECT_LT(after.value("quantserve_generated_tokens_total", {"model=\"gpt2\""}) -
                before.value("quantserve_generated_tokens_total", {"model=\"gpt2\""}),
            100);
}

TEST_F(SlowServeTest, DeadlineFreesKvBlocks) {
  qs::test::Scrape before = qs::test::parse_metrics(qs::test::http_get(server_->metrics_port, "/metrics"));
  v1::GenerateResponse r;
  grpc::Status status = generate(*stub_, greedy("too slow", 100), &r, 0.3);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  qs::test::Scrape after;
  EXPECT_TRUE(wait_metrics(server_->metrics_port, [&](const qs::test::Scrape& s) {
    return s.value("quantserve_kv_cache_blocks_used", {"model=\"gpt2\""}) == 0 &&
           requests_with_status(s, "DEADLINE_EXCEEDED") > requests_with_status(before, "DEADLINE_EXCEEDED");
  }, 5, &after)) << "KV blocks used: " << after.value("quantserve_kv_cache_blocks_used", {"model=\"gpt2\""})
                 << ", DEADLINE_EXCEEDED count " << requests_with_status(after, "DEADLINE_EXCEEDED");
}

TEST_F(SlowServeTest, QueueFullIsResourceExhausted) {
  // A runs (batch of 1), B waits (queue of 1), C is refused at once.
  grpc::ClientContext ca, cb;
  deadline_in(ca, 60);
  deadline_in(cb, 60);
  auto a = stub_->GenerateStream(&ca, greedy("first", 100));
  v1::GenerateResponse chunk;
  ASSERT_TRUE(a->Read(&chunk));
  auto b = stub_->GenerateStream(&cb, greedy("second", 100));
  qs::test::Scrape scrape;
  ASSERT_TRUE(wait_metrics(server_->metrics_port, [](const qs::test::Scrape& s) {
    return s.value("quantserve_requests_waiting", {"model=\"gpt2\""}) >= 1;
  }, 5, &scrape)) << "running " << scrape.value("quantserve_requests_running", {"model=\"gpt2\""}) << ", waiting "
                  << scrape.value("quantserve_requests_waiting", {"model=\"gpt2\""}) << "\n" << server_->log();
  const auto t0 = Clock::now();
  v1::GenerateResponse r;
  grpc::Status status = generate(*stub_, greedy("third", 4), &r, 10);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 1.0);
  ca.TryCancel();
  cb.TryCancel();
  while (a->Read(&chunk)) {
  }
  while (b->Read(&chunk)) {
  }
  a->Finish();
  b->Finish();
}

TEST(DrainTest, SigtermFinishesInFlightThenExitsZero) {
  auto server = start_server({"--step-delay-ms", "20", "--drain-grace-seconds", "20"});
  ASSERT_TRUE(server);
  auto stub = stub_for(*server);
  grpc::ClientContext context;
  deadline_in(context, 60);
  auto reader = stub->GenerateStream(&context, greedy("drain me", 60));
  v1::GenerateResponse chunk;
  int tokens = 0;
  ASSERT_TRUE(reader->Read(&chunk));
  tokens += chunk.token_ids_size();

  std::atomic<int> exit_code{-2};
  std::thread waiter([&] { exit_code = server->signal_and_wait(SIGTERM, 30); });
  // While draining: health says NOT_SERVING and new work is refused with UNAVAILABLE.
  auto health = grpc::health::v1::Health::NewStub(grpc::CreateChannel(server->address, grpc::InsecureChannelCredentials()));
  bool not_serving = false;
  for (int i = 0; i < 100 && !not_serving; ++i) {
    grpc::ClientContext hc;
    deadline_in(hc, 1);
    grpc::health::v1::HealthCheckResponse hr;
    if (health->Check(&hc, {}, &hr).ok() && hr.status() == grpc::health::v1::HealthCheckResponse::NOT_SERVING) {
      not_serving = true;
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  EXPECT_TRUE(not_serving);
  v1::GenerateResponse refused;
  EXPECT_EQ(generate(*stub, greedy("late", 4), &refused, 5).error_code(), grpc::StatusCode::UNAVAILABLE);

  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  while (reader->Read(&chunk)) {
    tokens += chunk.token_ids_size();
    if (chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) finish = chunk.finish_reason();
  }
  grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(tokens, 60);
  EXPECT_EQ(finish, v1::FINISH_REASON_LENGTH);
  waiter.join();
  EXPECT_EQ(exit_code.load(), 0) << server->log();
}

TEST(DrainTest, GracePeriodCancelsWhatIsLeft) {
  auto server = start_server({"--step-delay-ms", "20", "--drain-grace-seconds", "0.5"});
  ASSERT_TRUE(server);
  auto stub = stub_for(*server);
  grpc::ClientContext context;
  deadline_in(context, 60);
  auto reader = stub->GenerateStream(&context, greedy("too long to drain", 100));
  v1::GenerateResponse chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  const auto t0 = Clock::now();
  std::atomic<int> exit_code{-2};
  std::thread waiter([&] { exit_code = server->signal_and_wait(SIGTERM, 20); });
  while (reader->Read(&chunk)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
  waiter.join();
  EXPECT_EQ(exit_code.load(), 0) << server->log();
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 1.9) << server->log();
}

}  // namespace

// Start-up with bad KV-cache flags: quantserve exits non-zero at once with a sentence about the flag.
namespace {
struct RunResult {
  int exit_code = -1;
  std::string output;
};
RunResult run_quantserve(const std::string& args) {
  RunResult r;
  const std::string command = std::string(QS_QUANTSERVE_BIN) + " serve --model gpt2=" + kFixture +
                              " --device cpu --threads 1 --listen 127.0.0.1:0 --metrics-listen '' --http-listen '' " + args + " 2>&1";
  std::FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) r.output.append(buf, n);
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}
}  // namespace

TEST(KvCacheFlags, BadValuesFailAtStartUp) {
  const struct {
    const char* args;
    const char* message;
  } cases[] = {
      {"--kv-cache-bytes 1000", "fewer than one sequence of the maximum context"},
      {"--kv-cache-bytes=-5", "--kv-cache-bytes must be >= 0"},
      {"--kv-cache-bytes 12parsecs", "unknown unit"},
      {"--kv-cache-dtype q4", "--kv-cache-dtype 'q4' is not one of: fp32, fp16, bf16, int8"},
      {"--kv-cache-dtype INT8x", "--kv-cache-dtype 'INT8x' is not one of"},
      {"--kv-cache-bytes 64MiB --kv-cache-tokens 1024", "not both"},
  };
  for (const auto& c : cases) {
    const RunResult r = run_quantserve(c.args);
    EXPECT_NE(r.exit_code, 0) << c.args << ":\n" << r.output;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << c.args << ": expected '" << c.message << "' in:\n"
                                                           << r.output;
  }
}

// A budget in bytes sizes the cache: 64 MiB for the GPT-2 fixture in each stored dtype, reported as the capacity
// under that dtype's label.
TEST(KvCacheFlags, ByteBudgetAndDtypeReachTheMetrics) {
  for (const std::string dtype : {"fp32", "int8"}) {
    auto server = start_server({"--kv-cache-bytes", "64MiB", "--kv-cache-dtype", dtype});
    ASSERT_TRUE(server) << dtype;
    const std::string label = "dtype=\"" + dtype + "\"";
    qs::test::Scrape scrape;
    ASSERT_TRUE(wait_metrics(server->metrics_port, [&](const qs::test::Scrape& s) {
      return s.value("quantserve_kv_cache_capacity_bytes", {"model=\"gpt2\"", label}) > 0;
    }, 10, &scrape)) << dtype << ": " << server->log();
    const double capacity = scrape.value("quantserve_kv_cache_capacity_bytes", {"model=\"gpt2\"", label});
    EXPECT_LE(capacity, 64.0 * (1 << 20)) << dtype;
    EXPECT_GT(capacity, 63.0 * (1 << 20)) << dtype;   // whole blocks of the budget
    EXPECT_EQ(scrape.value("quantserve_kv_cache_committed_bytes", {"model=\"gpt2\"", label}), 0) << dtype;   // idle
    // GetModel says the same: the dtype, the capacity, and a token's bytes (int8: HD bytes and a 4-byte scale per
    // head, for K and for V, over every layer).
    grpc::ClientContext context;
    deadline_in(context, 10);
    v1::ModelInfo info;
    ASSERT_TRUE(stub_for(*server)->GetModel(&context, {}, &info).ok()) << dtype;
    EXPECT_EQ(info.limits().kv_cache_dtype(), dtype);
    EXPECT_EQ(double(info.limits().kv_cache_bytes()), capacity) << dtype;
    const int64_t head_dim = info.hidden_size() / info.num_heads();
    const int64_t head_bytes = dtype == "int8" ? head_dim + 4 : 4 * head_dim;
    EXPECT_EQ(info.limits().kv_cache_bytes_per_token(), 2 * info.num_layers() * info.num_kv_heads() * head_bytes)
        << dtype;
  }
}

// Prefix caching through the server: on by default, the same greedy ids as with it off, the metrics (there from
// start-up) count queried and hit tokens, GetModel says whether it is on, and the flag's env var and bad values.
namespace {
std::vector<int32_t> fixture_tokens(int32_t from, int n) {
  std::vector<int32_t> v;
  for (int i = 0; i < n; ++i) v.push_back((from + i * 37) % 997 + 2);
  return v;
}
v1::GenerateRequest greedy_ids(const std::vector<int32_t>& ids, int max_new_tokens) {
  v1::GenerateRequest r = greedy("", max_new_tokens);
  for (int32_t id : ids) r.add_prompt_token_ids(id);
  return r;
}
// Two prompts sharing a 40-token beginning (two full blocks of 16), one after the other; their generated ids.
std::vector<std::vector<int32_t>> two_turns(ServerProcess& server) {
  auto stub = stub_for(server);
  std::vector<std::vector<int32_t>> out;
  for (int32_t user : {500, 700}) {
    std::vector<int32_t> prompt = fixture_tokens(3, 40);
    for (int32_t id : fixture_tokens(user, 6)) prompt.push_back(id);
    v1::GenerateResponse r;
    EXPECT_TRUE(generate(*stub, greedy_ids(prompt, 6), &r).ok());
    out.emplace_back(r.token_ids().begin(), r.token_ids().end());
  }
  return out;
}
bool prefix_cache_in_get_model(ServerProcess& server) {
  grpc::ClientContext context;
  deadline_in(context, 10);
  v1::ModelInfo info;
  EXPECT_TRUE(stub_for(server)->GetModel(&context, {}, &info).ok());
  return info.limits().prefix_cache();
}
}  // namespace

TEST(PrefixCache, OnByDefaultSameIdsAsOffAndCounted) {
  auto on = start_server({});
  ASSERT_TRUE(on);
  qs::test::Scrape start = qs::test::parse_metrics(qs::test::http_get(on->metrics_port, "/metrics"));
  EXPECT_EQ(start.value("quantserve_prefix_cache_queried_tokens_total", {"model=\"gpt2\""}), 0);
  EXPECT_EQ(start.value("quantserve_prefix_cache_hit_tokens_total", {"model=\"gpt2\""}), 0);
  EXPECT_EQ(start.value("quantserve_kv_cache_blocks_cached", {"model=\"gpt2\""}), 0);
  EXPECT_TRUE(prefix_cache_in_get_model(*on));
  const auto cached = two_turns(*on);
  qs::test::Scrape after;
  EXPECT_TRUE(wait_metrics(on->metrics_port, [](const qs::test::Scrape& s) {
    return s.value("quantserve_prefix_cache_queried_tokens_total", {"model=\"gpt2\""}) == 92;
  }, 10, &after)) << "queried: " << after.value("quantserve_prefix_cache_queried_tokens_total", {"model=\"gpt2\""});
  EXPECT_EQ(after.value("quantserve_prefix_cache_hit_tokens_total", {"model=\"gpt2\""}), 32);
  EXPECT_GT(after.value("quantserve_kv_cache_blocks_cached", {"model=\"gpt2\""}), 0);

  setenv("QUANTSERVE_PREFIX_CACHE", "off", 1);
  auto off = start_server({});
  unsetenv("QUANTSERVE_PREFIX_CACHE");
  ASSERT_TRUE(off);
  EXPECT_FALSE(prefix_cache_in_get_model(*off));
  EXPECT_EQ(two_turns(*off), cached);
  qs::test::Scrape off_after;
  EXPECT_TRUE(wait_metrics(off->metrics_port, [](const qs::test::Scrape& s) {
    return s.value("quantserve_requests_total", {"model=\"gpt2\"", "status=\"OK\"", "finish_reason=\"length\""}) == 2;
  }, 10, &off_after));
  EXPECT_EQ(off_after.value("quantserve_prefix_cache_hit_tokens_total", {"model=\"gpt2\""}), 0);
  EXPECT_EQ(off_after.value("quantserve_kv_cache_blocks_cached", {"model=\"gpt2\""}), 0);
}

// A model whose KV cache is split into layer groups (the Gemma 3 fixture: sliding-window and global layers) shows
// its sliding layers' ring pool in /metrics beside the global pool: blocks in total from the start, some held
// while a request decodes, none once it is cancelled but some cached; a model with one pool shows 0 for all.
TEST(KvLayerGroups, WindowPoolIsInTheMetrics) {
  auto server = start_server({"--model", "gemma3=" + std::string(QS_SOURCE_DIR) + "/tests/fixtures/models/gemma3",
                              "--step-delay-ms", "20"});
  ASSERT_TRUE(server);
  const qs::test::Scrape idle = qs::test::parse_metrics(qs::test::http_get(server->metrics_port, "/metrics"));
  ASSERT_TRUE(idle.types.count("quantserve_kv_cache_window_blocks_used"));
  EXPECT_EQ(idle.types.at("quantserve_kv_cache_window_blocks_total"), "gauge");
  EXPECT_GT(idle.value("quantserve_kv_cache_window_blocks_total", {"model=\"gemma3\""}), 0);
  EXPECT_EQ(idle.value("quantserve_kv_cache_window_blocks_used", {"model=\"gemma3\""}), 0);
  EXPECT_EQ(idle.value("quantserve_kv_cache_window_blocks_total", {"model=\"gpt2\""}), 0);

  grpc::ClientContext context;
  deadline_in(context, 60);
  // The fixture's context is 128 positions and its window 4: 100 tokens cross the window many times.
  v1::GenerateRequest request = greedy("the window pool", 100);
  request.set_model("gemma3");
  auto reader = stub_for(*server)->GenerateStream(&context, request);
  v1::GenerateResponse chunk;
  int got = 0;
  while (got < 3 && reader->Read(&chunk)) got += chunk.token_ids_size();
  ASSERT_GE(got, 3) << reader->Finish().error_message();
  qs::test::Scrape during;
  EXPECT_TRUE(wait_metrics(server->metrics_port, [](const qs::test::Scrape& s) {
    return s.value("quantserve_kv_cache_window_blocks_used", {"model=\"gemma3\""}) > 0;
  }, 5, &during)) << "no sliding-window block counted while decoding";
  EXPECT_LE(during.value("quantserve_kv_cache_window_blocks_used", {"model=\"gemma3\""}),
            during.value("quantserve_kv_cache_window_blocks_total", {"model=\"gemma3\""}));
  EXPECT_GT(during.value("quantserve_kv_cache_blocks_used", {"model=\"gemma3\""}), 0);
  context.TryCancel();
  while (reader->Read(&chunk)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  qs::test::Scrape after;
  EXPECT_TRUE(wait_metrics(server->metrics_port, [](const qs::test::Scrape& s) {
    return s.value("quantserve_kv_cache_window_blocks_used", {"model=\"gemma3\""}) == 0 &&
           s.value("quantserve_kv_cache_blocks_used", {"model=\"gemma3\""}) == 0;
  }, 5, &after)) << "window blocks used: " << after.value("quantserve_kv_cache_window_blocks_used", {"model=\"gemma3\""});
  // The prefix cache is on: the full sliding blocks a request computed stay cached for a prompt that begins the
  // same, and the same request again finds them.
  v1::GenerateRequest whole = greedy("", 40);
  whole.clear_prompt();
  for (int id = 5; id < 25; ++id) whole.add_prompt_token_ids(id);   // a whole first block of 16 and more
  whole.set_model("gemma3");
  v1::GenerateResponse first, again;
  ASSERT_TRUE(generate(*stub_for(*server), whole, &first).ok());
  qs::test::Scrape done;
  EXPECT_TRUE(wait_metrics(server->metrics_port, [](const qs::test::Scrape& s) {
    return s.value("quantserve_kv_cache_window_blocks_cached", {"model=\"gemma3\""}) > 0;
  }, 5, &done)) << "no sliding block cached after a request of 60 tokens";
  EXPECT_EQ(done.value("quantserve_kv_cache_window_blocks_cached", {"model=\"gpt2\""}), 0);
  const double hits = done.value("quantserve_prefix_cache_hit_tokens_total", {"model=\"gemma3\""});
  ASSERT_TRUE(generate(*stub_for(*server), whole, &again).ok());
  EXPECT_EQ(again.text(), first.text());
  EXPECT_TRUE(wait_metrics(server->metrics_port, [&](const qs::test::Scrape& s) {
    return s.value("quantserve_prefix_cache_hit_tokens_total", {"model=\"gemma3\""}) == hits + 16;
  }, 5, &done)) << "the same prompt again did not find its first block";
}

TEST(PrefixCache, BadFlagValueFailsAtStartUp) {
  const RunResult r = run_quantserve("--prefix-cache maybe");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("--prefix-cache"), std::string::npos) << r.output;
}

namespace {
// A token file with one full-scope token, for the servers below.
std::string write_token_file() {
  const std::string path = ::testing::TempDir() + "quantserve-reflection-tokens-" + std::to_string(getpid());
  std::ofstream(path) << "reflection-test-token-0123456789\n";
  return path;
}
}  // namespace

TEST(Reflection, OffByDefaultWithTokensOnWhenAsked) {
  const std::string tokens = write_token_file();
  auto with_tokens = start_server({"--auth-token-file", tokens});
  ASSERT_TRUE(with_tokens);
  std::vector<std::string> names;
  EXPECT_EQ(reflection_services(with_tokens->address, &names).error_code(), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_TRUE(names.empty());

  auto asked = start_server({"--auth-token-file", tokens, "--reflection", "on"});
  ASSERT_TRUE(asked);
  names.clear();
  EXPECT_TRUE(reflection_services(asked->address, &names).ok());
  EXPECT_NE(std::find(names.begin(), names.end(), "quantserve.v1.Inference"), names.end());
  EXPECT_NE(asked->log().find("reflection answers without a token"), std::string::npos) << asked->log();
}

TEST(Reflection, OffWhenAskedWithoutTokens) {
  auto off = start_server({"--reflection", "off"});
  ASSERT_TRUE(off);
  std::vector<std::string> names;
  EXPECT_EQ(reflection_services(off->address, &names).error_code(), grpc::StatusCode::UNIMPLEMENTED);
  const RunResult bad = run_quantserve("--reflection maybe");
  EXPECT_NE(bad.exit_code, 0) << bad.output;
  EXPECT_NE(bad.output.find("--reflection"), std::string::npos) << bad.output;
}

// Tokenize runs on a thread of its own: it answers while the engine thread sleeps 20 s between two decode steps
// (before, it queued behind them on the engine thread and could not finish within the 15 s deadline).
TEST(TokenizeOffTheEngineThread, AnswersWhileAGenerationIsBetweenSteps) {
  auto server = start_server({"--step-delay-ms", "20000"});
  ASSERT_TRUE(server);
  auto stub = stub_for(*server);
  grpc::ClientContext stream_context;
  deadline_in(stream_context, 120);
  auto reader = stub->GenerateStream(&stream_context, greedy("keep the engine busy", 50));
  v1::GenerateResponse chunk;
  ASSERT_TRUE(reader->Read(&chunk));   // a step has run; the engine thread now sleeps before the next
  grpc::ClientContext context;
  deadline_in(context, 15);
  v1::TokenizeRequest request;
  request.set_text("Hello world");
  v1::TokenizeResponse tokens;
  grpc::Status status = stub->Tokenize(&context, request, &tokens);
  EXPECT_TRUE(status.ok()) << int(status.error_code()) << ": " << status.error_message();
  EXPECT_GT(tokens.token_ids_size(), 0);
  EXPECT_EQ(tokens.token_ids_size(), tokens.tokens_size());
  stream_context.TryCancel();
  while (reader->Read(&chunk)) {
  }
  reader->Finish();
}
