// Error codes' names and the throw helper behind QS_CHECK.
#include "kernels/error.h"

#include <cstdlib>

namespace qs {

const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "invalid argument";
    case ErrorCode::kNotFound: return "not found";
    case ErrorCode::kInvalidModel: return "invalid model";
    case ErrorCode::kUnsupported: return "unsupported";
    case ErrorCode::kResourceExhausted: return "resource exhausted";
    case ErrorCode::kCancelled: return "cancelled";
    case ErrorCode::kDeadlineExceeded: return "deadline exceeded";
    case ErrorCode::kUnavailable: return "unavailable";
    case ErrorCode::kInternal: return "internal";
  }
  return "unknown";
}

void throw_error(ErrorCode code, const std::string& message, const char* file, int line) {
  // Internal errors carry their origin so a bug report points at the code; user-facing ones stay clean.
  if (code == ErrorCode::kInternal || std::getenv("QUANTSERVE_DEBUG_ERRORS")) {
    throw Error(code, str(message, " [", file, ":", line, "]"));
  }
  throw Error(code, message);
}

}  // namespace qs
