// Bearer-token authentication for both front doors (gRPC and the OpenAI-compatible HTTP API).
//
// Tokens come from a file (--auth-token-file; in Kubernetes a mounted Secret): one token per line, optionally
// followed by its scope, `all` (the default: everything) or `read` (ListModels, GetModel, Tokenize and
// GET /v1/models, not generation); blank lines and lines starting with '#' are skipped. Several tokens may be valid
// at once, so one can be rotated in before the old one is removed. The file is read again when it changes (a
// Secret update swaps it), checked every two seconds. Tokens are compared in constant time and never logged.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace qs::server {

enum class AuthScope { kRead, kAll };

enum class AuthResult {
  kAllowed,
  kMissing,      // no credentials: UNAUTHENTICATED / 401
  kInvalid,      // not a known token: UNAUTHENTICATED / 401
  kForbidden,    // a known token whose scope does not cover the call: PERMISSION_DENIED / 403
};

class TokenAuth {
 public:
  // Reads `path` (throws qs::Error kInvalidArgument if it cannot be read or holds no token) and watches it.
  explicit TokenAuth(const std::string& path);
  ~TokenAuth();
  TokenAuth(const TokenAuth&) = delete;
  TokenAuth& operator=(const TokenAuth&) = delete;

  // `authorization` is the header / metadata value, "Bearer TOKEN".
  AuthResult check(const std::string& authorization, AuthScope needed) const;
  size_t tokens() const;

 private:
  struct Token {
    std::string secret;
    AuthScope scope;
  };
  using Table = std::vector<Token>;
  static std::shared_ptr<const Table> read(const std::string& path);
  void watch();

  std::string path_;
  mutable std::mutex mutex_;   // guards table_ (the pointer) and the watcher's wake-up
  std::shared_ptr<const Table> table_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread watcher_;
};

// What a refusal says, for both doors (no token is ever echoed).
const char* auth_message(AuthResult result);

}  // namespace qs::server
