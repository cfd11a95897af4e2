// Errors for every layer: a small code enum plus a sentence; the server maps codes to gRPC statuses in one place.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace qs {

enum class ErrorCode {
  kInvalidArgument,    // the caller's input is wrong (bad request, bad flag)
  kNotFound,           // unknown model, missing file
  kInvalidModel,       // a model file is corrupt, truncated or inconsistent
  kUnsupported,        // valid, but not something this build/device can do
  kResourceExhausted,  // queue, batch, KV cache or memory full
  kCancelled,
  kDeadlineExceeded,
  kUnavailable,        // shutting down
  kInternal,           // a bug
};

const char* error_code_name(ErrorCode code);

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

// Concatenates anything streamable: str("tensor '", name, "' has ", n, " dims").
template <typename... Args>
std::string str(Args&&... args) {
  std::ostringstream out;
  (out << ... << std::forward<Args>(args));
  return out.str();
}

[[noreturn]] void throw_error(ErrorCode code, const std::string& message, const char* file, int line);

}  // namespace qs

// QS_CHECK(cond, code, parts...): throws qs::Error(code, str(parts...)) recording file and line.
#define QS_CHECK(cond, code, ...)                                                   \
  do {                                                                              \
    if (!(cond)) ::qs::throw_error((code), ::qs::str(__VA_ARGS__), __FILE__, __LINE__); \
  } while (0)
#define QS_FAIL(code, ...) ::qs::throw_error((code), ::qs::str(__VA_ARGS__), __FILE__, __LINE__)
