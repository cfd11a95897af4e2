// Why an interceptor: gRPC's callback handlers (grpcpp/impl/codegen/server_callback_handlers.h, 1.51) drop the
// deserialization status and finish the call with UNIMPLEMENTED and an empty message, in a header template the
// generated code instantiates. Our handlers never return UNIMPLEMENTED, so on our methods that status at send
// time can only be that one; it is rewritten just before it goes out (PRE_SEND_STATUS).
#include "server/undecodable_request.h"

#include <cstdio>
#include <string>
#include <unordered_map>
#include <utility>

#include <google/protobuf/descriptor.h>

namespace qs::server {

namespace {

const std::string kServicePrefix = "/quantserve.v1.Inference/";

class UndecodableRequestInterceptor final : public grpc::experimental::Interceptor {
 public:
  UndecodableRequestInterceptor(const std::string& request_type, Metrics& metrics)
      : request_type_(request_type), metrics_(metrics) {}

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
  const std::string& request_type_;   // the factory's, which outlives every call
  Metrics& metrics_;
};

class UndecodableRequestFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  // Each of our methods' path ("/quantserve.v1.Inference/Generate") and input type
  // ("quantserve.v1.GenerateRequest"), looked up once here rather than in the descriptor pool on every call.
  explicit UndecodableRequestFactory(Metrics& metrics) : metrics_(metrics) {
    const google::protobuf::ServiceDescriptor* service =
        google::protobuf::DescriptorPool::generated_pool()->FindServiceByName("quantserve.v1.Inference");
    for (int i = 0; service && i < service->method_count(); ++i) {
      const google::protobuf::MethodDescriptor* method = service->method(i);
      input_types_.emplace(kServicePrefix + method->name(), method->input_type()->full_name());
    }
  }

  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    if (!info->method()) return nullptr;
    auto it = input_types_.find(info->method());
    // Not one of ours: gRPC answers UNIMPLEMENTED for unknown methods itself.
    if (it == input_types_.end()) return nullptr;
    return new UndecodableRequestInterceptor(it->second, metrics_);
  }

 private:
  Metrics& metrics_;
  std::unordered_map<std::string, std::string> input_types_;
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> make_undecodable_request_interceptor(
    Metrics& metrics) {
  return std::make_unique<UndecodableRequestFactory>(metrics);
}

}  // namespace qs::server
