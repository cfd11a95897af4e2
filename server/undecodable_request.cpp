// Why an interceptor: gRPC's callback handlers (grpcpp/impl/codegen/server_callback_handlers.h, 1.51) drop the
// deserialization status and finish the call with UNIMPLEMENTED and an empty message, in a header template the
// generated code instantiates. Our handlers never return UNIMPLEMENTED, so on our methods that status at send
// time can only be that one; it is rewritten just before it goes out (PRE_SEND_STATUS).
#include "server/undecodable_request.h"

#include <cstdio>
#include <string>
#include <utility>

#include <google/protobuf/descriptor.h>

namespace qs::server {

namespace {

constexpr const char* kServicePrefix = "/quantserve.v1.Inference/";

class UndecodableRequestInterceptor final : public grpc::experimental::Interceptor {
 public:
  UndecodableRequestInterceptor(std::string request_type, Metrics& metrics)
      : request_type_(std::move(request_type)), metrics_(metrics) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status status = methods->GetSendStatus();
      if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED && status.error_message().empty()) {
        const std::string message = "the request is not a valid " + request_type_ +
                                    " message (its protobuf encoding could not be decoded)";
        metrics_.unknown_model().count_request(Api::kGrpc, grpc::StatusCode::INVALID_ARGUMENT, FinishReason::kNone);
        std::fprintf(stderr, "quantserve: request refused api=grpc status=INVALID_ARGUMENT message=%s\n",
                     message.c_str());
        methods->ModifySendStatus({grpc::StatusCode::INVALID_ARGUMENT, message});
      }
    }
    methods->Proceed();
  }

 private:
  std::string request_type_;
  Metrics& metrics_;
};

class UndecodableRequestFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit UndecodableRequestFactory(Metrics& metrics) : metrics_(metrics) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    const std::string path = info->method() ? info->method() : "";
    if (path.rfind(kServicePrefix, 0) != 0) return nullptr;
    // "/quantserve.v1.Inference/Generate" -> the method's input type, "quantserve.v1.GenerateRequest".
    const std::string method = "quantserve.v1.Inference." + path.substr(std::string(kServicePrefix).size());
    const google::protobuf::MethodDescriptor* descriptor =
        google::protobuf::DescriptorPool::generated_pool()->FindMethodByName(method);
    if (!descriptor) return nullptr;   // not one of ours: gRPC answers UNIMPLEMENTED for unknown methods itself
    return new UndecodableRequestInterceptor(descriptor->input_type()->full_name(), metrics_);
  }

 private:
  Metrics& metrics_;
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> make_undecodable_request_interceptor(
    Metrics& metrics) {
  return std::make_unique<UndecodableRequestFactory>(metrics);
}

}  // namespace qs::server
