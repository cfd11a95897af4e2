// The one place engine errors become gRPC statuses, and gRPC codes become the names metrics use.
#pragma once
#include <grpcpp/support/status.h>

#include "kernels/error.h"

namespace qs::server {

grpc::StatusCode to_grpc_code(ErrorCode code);
// The status for an engine error; kInternal messages carry the request id so a user can quote it.
grpc::Status to_grpc_status(const Error& error, const std::string& request_id);
// "OK", "INVALID_ARGUMENT", ... (the label values of quantserve_requests_total{status}).
const char* grpc_code_name(grpc::StatusCode code);

}  // namespace qs::server
