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
// A name or path from a request, safe to echo in a message or a log line: at most `limit` bytes (then "..."), control
// characters as '?' (a newline in a model name must not forge a log line).
std::string printable(const std::string& text, size_t limit = 64);

}  // namespace qs::server
