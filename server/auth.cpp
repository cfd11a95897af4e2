// Bearer tokens from a watched file (see auth.h).
#include "server/auth.h"

#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "kernels/error.h"

namespace qs::server {

namespace {

// Equal in time that depends only on the lengths, never on where the first difference is.
bool constant_time_equal(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? a[i] : 0, y = i < b.size() ? b[i] : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

struct FileStamp {
  timespec modified{};
  ino_t inode = 0;
  off_t size = -1;
  bool operator==(const FileStamp& o) const {
    return modified.tv_sec == o.modified.tv_sec && modified.tv_nsec == o.modified.tv_nsec && inode == o.inode &&
           size == o.size;
  }
};

FileStamp stamp_of(const std::string& path) {
  FileStamp s;
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {   // stat follows the symlinks a mounted Secret swaps
    s.modified = st.st_mtim;
    s.inode = st.st_ino;
    s.size = st.st_size;
  }
  return s;
}

}  // namespace

const char* auth_message(AuthResult result) {
  switch (result) {
    case AuthResult::kMissing: return "authentication required: send 'authorization: Bearer <token>'";
    case AuthResult::kInvalid: return "the bearer token is not valid";
    case AuthResult::kForbidden: return "this token's scope is read-only: it may not generate";
    default: return "";
  }
}

std::shared_ptr<const TokenAuth::Table> TokenAuth::read(const std::string& path) {
  std::ifstream in(path);
  QS_CHECK(in.good(), ErrorCode::kInvalidArgument, "--auth-token-file ", path, ": cannot read it");
  auto table = std::make_shared<Table>();
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    std::istringstream words(line);
    std::string secret, scope, extra;
    if (!(words >> secret) || secret[0] == '#') continue;
    words >> scope >> extra;
    QS_CHECK(extra.empty() && (scope.empty() || scope == "all" || scope == "read"), ErrorCode::kInvalidArgument,
             "--auth-token-file ", path, " line ", number, ": write TOKEN, TOKEN all or TOKEN read");
    QS_CHECK(secret.size() >= 16, ErrorCode::kInvalidArgument, "--auth-token-file ", path, " line ", number,
             ": a token must have at least 16 characters");
    table->push_back({secret, scope == "read" ? AuthScope::kRead : AuthScope::kAll});
  }
  QS_CHECK(!table->empty(), ErrorCode::kInvalidArgument, "--auth-token-file ", path, " holds no token");
  return table;
}

TokenAuth::TokenAuth(const std::string& path) : path_(path), table_(read(path)) {
  watcher_ = std::thread([this] { watch(); });
}

TokenAuth::~TokenAuth() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  watcher_.join();
}

void TokenAuth::watch() {
  FileStamp last = stamp_of(path_);
  std::unique_lock<std::mutex> lock(mutex_);
  while (!wake_.wait_for(lock, std::chrono::seconds(2), [this] { return stop_; })) {
    const FileStamp now = stamp_of(path_);
    if (now == last) continue;
    last = now;
    lock.unlock();
    std::shared_ptr<const Table> table;
    try {
      table = read(path_);
    } catch (const Error& e) {   // a half-written or emptied file: keep the tokens we have
      std::fprintf(stderr, "quantserve: auth: keeping the current tokens: %s\n", e.what());
    }
    lock.lock();
    if (table) {
      table_ = table;
      std::fprintf(stderr, "quantserve: auth: reloaded %zu token(s) from %s\n", table->size(), path_.c_str());
    }
  }
}

AuthResult TokenAuth::check(const std::string& authorization, AuthScope needed) const {
  const std::string prefix = "Bearer ";
  if (authorization.empty()) return AuthResult::kMissing;
  if (authorization.size() <= prefix.size() || authorization.compare(0, prefix.size(), prefix) != 0) {
    return AuthResult::kInvalid;
  }
  const std::string secret = authorization.substr(prefix.size());
  std::shared_ptr<const Table> table;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    table = table_;
  }
  const Token* match = nullptr;
  for (const Token& t : *table) {   // every token compared, so the time says nothing about which matched
    if (constant_time_equal(secret, t.secret)) match = &t;
  }
  if (!match) return AuthResult::kInvalid;
  if (needed == AuthScope::kAll && match->scope != AuthScope::kAll) return AuthResult::kForbidden;
  return AuthResult::kAllowed;
}

size_t TokenAuth::tokens() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return table_->size();
}

}  // namespace qs::server
