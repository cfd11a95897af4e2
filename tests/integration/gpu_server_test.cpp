// Generation through the real server on the GPU: `quantserve serve --device cuda` on a fixture model must give
// transformers' greedy continuation in fp32, and well-formed generations in the quantized precisions.
// Label gpu; skips itself where there is no NVIDIA device or quantserve was built without CUDA.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <thread>
#include <nlohmann/json.hpp>

#include <grpcpp/grpcpp.h>

#include "quantserve/v1/inference.grpc.pb.h"
#include "server_process.h"

namespace v1 = quantserve::v1;
using qs::test::ServerProcess;

namespace {

const std::string kFixture = std::string(QS_SOURCE_DIR) + "/tests/fixtures/models/gpt2";

bool nvidia_device_present() { return access("/dev/nvidia0", F_OK) == 0 || access("/dev/nvidiactl", F_OK) == 0; }

struct Greedy {
  std::vector<int32_t> prompt, expected;
};

std::vector<Greedy> read_greedy() {
  std::ifstream in(kFixture + "/reference.json");
  const auto j = nlohmann::json::parse(in);
  std::vector<Greedy> out;
  for (const auto& g : j.at("greedy")) {
    out.push_back({g.at("prompt_ids").get<std::vector<int32_t>>(), g.at("new_ids").get<std::vector<int32_t>>()});
  }
  return out;
}

// Greedy generation of `max_new_tokens` tokens after `prompt` (ignoring EOS), with a 60 s deadline.
grpc::Status generate_greedy(v1::Inference::Stub& stub, const std::vector<int32_t>& prompt, int32_t max_new_tokens,
                             v1::GenerateResponse* response) {
  v1::GenerateRequest request;
  for (int32_t id : prompt) request.add_prompt_token_ids(id);
  request.set_max_new_tokens(max_new_tokens);
  request.set_temperature(0);
  request.set_ignore_eos(true);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  return stub.Generate(&context, request, response);
}

class GpuServe : public ::testing::TestWithParam<std::string> {};

TEST_P(GpuServe, GreedyGenerationOnCuda) {
  if (!nvidia_device_present()) GTEST_SKIP() << "no NVIDIA device on this machine";
  ServerProcess server({"--model", "gpt2=" + kFixture, "--device", "cuda", "--precision", GetParam()});
  if (!server.start()) {
    if (server.log().find("built without CUDA") != std::string::npos) GTEST_SKIP() << "quantserve built without CUDA";
    FAIL() << "quantserve --device cuda did not become healthy; its log:\n" << server.log();
  }
  auto stub = v1::Inference::NewStub(grpc::CreateChannel(server.address, grpc::InsecureChannelCredentials()));
  for (const Greedy& g : read_greedy()) {
    v1::GenerateResponse response;
    const grpc::Status status = generate_greedy(*stub, g.prompt, int32_t(g.expected.size()), &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    const std::vector<int32_t> got(response.token_ids().begin(), response.token_ids().end());
    ASSERT_EQ(got.size(), g.expected.size());
    EXPECT_EQ(response.finish_reason(), v1::FINISH_REASON_LENGTH);
    // fp32 on the GPU must reproduce transformers' greedy tokens (the fixtures' top-1 margins are >= 0.1).
    if (GetParam() == "fp32") {
      EXPECT_EQ(got, g.expected);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Precisions, GpuServe, ::testing::Values("fp32", "fp16", "int8", "int8-weight-only"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (auto& c : name) c = c == '-' ? '_' : c;
                           return name;
                         });

// Prefix caching on the GPU: prompts sharing a 40-token beginning give the same greedy ids with the cache on and
// off (the second prompt's first two blocks come from the cache), in fp32 and in int8 (decode through graphs).
class GpuPrefixCache : public ::testing::TestWithParam<std::string> {};

TEST_P(GpuPrefixCache, SameIdsOnAndOff) {
  if (!nvidia_device_present()) GTEST_SKIP() << "no NVIDIA device on this machine";
  std::vector<std::vector<int32_t>> ids[2];
  for (int on = 0; on < 2; ++on) {
    ServerProcess server({"--model", "gpt2=" + kFixture, "--device", "cuda", "--precision", GetParam(),
                          "--prefix-cache", on ? "on" : "off"});
    if (!server.start()) {
      if (server.log().find("built without CUDA") != std::string::npos) GTEST_SKIP() << "quantserve built without CUDA";
      FAIL() << "quantserve --device cuda did not become healthy; its log:\n" << server.log();
    }
    auto stub = v1::Inference::NewStub(grpc::CreateChannel(server.address, grpc::InsecureChannelCredentials()));
    for (int user = 0; user < 3; ++user) {
      std::vector<int32_t> prompt;
      for (int i = 0; i < 40; ++i) prompt.push_back((11 + i * 37) % 997 + 2);
      for (int i = 0; i < 5 + user; ++i) prompt.push_back((300 * user + i * 53) % 997 + 2);
      v1::GenerateResponse response;
      const grpc::Status status = generate_greedy(*stub, prompt, 12, &response);
      ASSERT_TRUE(status.ok()) << status.error_message();
      ids[on].emplace_back(response.token_ids().begin(), response.token_ids().end());
    }
    // The counters advance after the step that finished the last request: poll briefly.
    const double expected_hits = on ? 64 : 0;
    double hits = -1;
    for (int i = 0; i < 100 && hits != expected_hits; ++i) {
      if (i > 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      hits = qs::test::parse_metrics(qs::test::http_get(server.metrics_port, "/metrics"))
                 .value("quantserve_prefix_cache_hit_tokens_total", {"model=\"gpt2\""});
    }
    EXPECT_EQ(hits, expected_hits);
  }
  EXPECT_EQ(ids[1], ids[0]);
}

INSTANTIATE_TEST_SUITE_P(Precisions, GpuPrefixCache, ::testing::Values("fp32", "int8"),
                         [](const auto& info) { return info.param; });

}  // namespace
