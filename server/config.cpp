// Parsing and checking of the serve options that are not plain numbers.
#include "server/config.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <set>

#include "engine/kv_cache.h"

#include "kernels/error.h"

#ifndef QS_SOURCE_DIR
#define QS_SOURCE_DIR "."
#endif

namespace qs::server {

namespace fs = std::filesystem;

std::string model_name_from_path(const std::string& path) {
  fs::path p(path);
  while (!p.empty() && p.filename().empty()) p = p.parent_path();   // "dir/" -> "dir"
  if (fs::is_directory(p)) return p.filename().string();
  std::string stem = p.stem().string();
  return stem.empty() ? path : stem;
}

ModelSpec parse_model_spec(const std::string& arg) {
  auto eq = arg.find('=');
  // A path may itself contain '=', so only treat the prefix as a name when it looks like one.
  if (eq != std::string::npos && eq > 0 && arg.find('/') > eq) {
    return ModelSpec{arg.substr(0, eq), arg.substr(eq + 1)};
  }
  return ModelSpec{model_name_from_path(arg), arg};
}

std::string default_model_path() {
  const std::string rel = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  for (const fs::path& base : {fs::current_path(), fs::path(QS_SOURCE_DIR)}) {
    fs::path candidate = base / rel;
    std::error_code ec;
    if (fs::is_regular_file(candidate, ec) && fs::file_size(candidate, ec) > 0) return candidate.string();
  }
  QS_FAIL(ErrorCode::kNotFound, "no --model given and the default model ", rel, " is not in ",
          fs::current_path().string(), " nor in ", QS_SOURCE_DIR,
          "; run scripts/setup.sh to fetch it, or pass --model PATH");
}

void validate(const ServeOptions& o) {
  QS_CHECK(!o.models.empty(), ErrorCode::kInvalidArgument, "no model to serve");
  std::set<std::string> names;
  for (const auto& m : o.models) {
    QS_CHECK(!m.name.empty(), ErrorCode::kInvalidArgument, "--model '", m.path, "' has an empty name");
    QS_CHECK(names.insert(m.name).second, ErrorCode::kInvalidArgument, "--model: the name '", m.name,
             "' is used twice; give each model its own with --model NAME=PATH");
  }
  const auto& l = o.limits;
  QS_CHECK(l.max_batch_size > 0, ErrorCode::kInvalidArgument, "--max-batch-size must be > 0, got ", l.max_batch_size);
  QS_CHECK(l.max_batch_tokens > 0, ErrorCode::kInvalidArgument, "--max-batch-tokens must be > 0, got ",
           l.max_batch_tokens);
  QS_CHECK(l.max_prompt_tokens > 0, ErrorCode::kInvalidArgument, "--max-prompt-tokens must be > 0, got ",
           l.max_prompt_tokens);
  QS_CHECK(l.max_new_tokens > 0, ErrorCode::kInvalidArgument, "--max-new-tokens must be > 0, got ", l.max_new_tokens);
  QS_CHECK(l.max_message_bytes >= 1024, ErrorCode::kInvalidArgument, "--max-message-bytes must be >= 1024, got ",
           l.max_message_bytes);
  QS_CHECK(l.kv_cache_tokens >= 0, ErrorCode::kInvalidArgument, "--kv-cache-tokens must be >= 0, got ",
           l.kv_cache_tokens);
  QS_CHECK(l.kv_cache_bytes >= 0, ErrorCode::kInvalidArgument, "--kv-cache-bytes must be >= 0, got ",
           l.kv_cache_bytes);
  QS_CHECK(l.kv_cache_tokens == 0 || l.kv_cache_bytes == 0, ErrorCode::kInvalidArgument,
           "give --kv-cache-bytes or --kv-cache-tokens, not both");
  QS_CHECK(l.kv_cache_dtype.empty() || parse_kv_cache_dtype(l.kv_cache_dtype).has_value(),
           ErrorCode::kInvalidArgument, "--kv-cache-dtype '", l.kv_cache_dtype.substr(0, 32),
           "' is not one of: ", kKvCacheDtypeNames);
  QS_CHECK(l.max_queued > 0, ErrorCode::kInvalidArgument,
           "--max-queued must be > 0 (0 would refuse every request), got ", l.max_queued);
  QS_CHECK(o.reflection == "auto" || o.reflection == "on" || o.reflection == "off", ErrorCode::kInvalidArgument,
           "--reflection must be auto, on or off");
  QS_CHECK(l.max_tokenize_queued > 0 && l.max_tokenize_queued <= 1000000, ErrorCode::kInvalidArgument,
           "--max-tokenize-queued must be in [1, 1000000], got ", l.max_tokenize_queued);
  QS_CHECK(l.max_message_bytes <= (int64_t(1) << 30), ErrorCode::kInvalidArgument,
           "--max-message-bytes must be <= 1 GiB, got ", l.max_message_bytes);
  QS_CHECK(o.http_request_timeout_seconds > 0 && o.http_request_timeout_seconds <= 3600,
           ErrorCode::kInvalidArgument, "--http-request-timeout must be in (0, 3600] seconds");
  QS_CHECK(o.http_max_connections >= 1 && o.http_max_connections <= 1000000, ErrorCode::kInvalidArgument,
           "--http-max-connections must be in [1, 1000000], got ", o.http_max_connections);
  QS_CHECK(o.tls_cert.empty() == o.tls_key.empty(), ErrorCode::kInvalidArgument,
           "--tls-cert and --tls-key go together");
  QS_CHECK(o.tls_client_ca.empty() || !o.tls_cert.empty(), ErrorCode::kInvalidArgument,
           "--tls-client-ca needs --tls-cert and --tls-key");
  for (const std::string* file : {&o.tls_cert, &o.tls_key, &o.tls_client_ca}) {
    QS_CHECK(file->empty() || fs::is_regular_file(*file), ErrorCode::kInvalidArgument, "TLS file '",
             file->substr(0, 200), "' does not exist or is not a file");
  }
  QS_CHECK(o.engine_stall_seconds > 0, ErrorCode::kInvalidArgument, "--engine-stall-seconds must be > 0");
  QS_CHECK(o.drain_grace_seconds >= 0, ErrorCode::kInvalidArgument, "--drain-grace-seconds must be >= 0");
  QS_CHECK(o.threads >= 0, ErrorCode::kInvalidArgument, "--threads must be >= 0");
}

int64_t parse_byte_size(const std::string& text, const std::string& flag) {
  const std::string shown = text.substr(0, 40);
  const char* begin = text.c_str();
  char* end = nullptr;
  errno = 0;
  const double number = std::strtod(begin, &end);
  QS_CHECK(end != begin && errno == 0 && std::isfinite(number), ErrorCode::kInvalidArgument, flag, " '", shown,
           "' is not a size: write bytes, or a number with KiB, MiB, GiB (or K, M, G), kB, MB, GB");
  QS_CHECK(number >= 0 && text[0] != '-', ErrorCode::kInvalidArgument, flag,
           " must be >= 0, got '", shown, "'");
  const std::string unit(end);
  double scale = 0;
  if (unit.empty() || unit == "B") scale = 1;
  else if (unit == "K" || unit == "KiB") scale = 1024.0;
  else if (unit == "M" || unit == "MiB") scale = 1024.0 * 1024;
  else if (unit == "G" || unit == "GiB") scale = 1024.0 * 1024 * 1024;
  else if (unit == "T" || unit == "TiB") scale = 1024.0 * 1024 * 1024 * 1024;
  else if (unit == "kB" || unit == "KB") scale = 1e3;
  else if (unit == "MB") scale = 1e6;
  else if (unit == "GB") scale = 1e9;
  else if (unit == "TB") scale = 1e12;
  QS_CHECK(scale > 0, ErrorCode::kInvalidArgument, flag, " '", shown, "': unknown unit '", unit.substr(0, 8),
           "' (use KiB, MiB, GiB, K, M, G, kB, MB or GB)");
  const double bytes = number * scale;
  QS_CHECK(bytes < 9.0e18, ErrorCode::kInvalidArgument, flag, " '", shown, "' is too large");
  return int64_t(bytes);
}

}  // namespace qs::server
