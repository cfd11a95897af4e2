// A gRPC server interceptor that turns the status gRPC gives a request it could not decode (UNIMPLEMENTED with an
// empty message) into INVALID_ARGUMENT naming the message type that was expected.
#pragma once
#include <memory>

#include <grpcpp/support/server_interceptor.h>

#include "server/metrics.h"

namespace qs::server {

// For the quantserve.v1.Inference methods only (health and reflection keep gRPC's own statuses). Each refusal is
// logged and counted like an authentication refusal (model "unknown"). `metrics` outlives the server.
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> make_undecodable_request_interceptor(
    Metrics& metrics);

}  // namespace qs::server
