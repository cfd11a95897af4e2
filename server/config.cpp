// Parsing and checking of the serve options that are not plain numbers.
#include "server/config.h"

#include <filesystem>
#include <set>

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
  QS_CHECK(l.max_queued >= 0, ErrorCode::kInvalidArgument, "--max-queued must be >= 0, got ", l.max_queued);
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
  QS_CHECK(o.drain_grace_seconds >= 0, ErrorCode::kInvalidArgument, "--drain-grace-seconds must be >= 0");
  QS_CHECK(o.threads >= 0, ErrorCode::kInvalidArgument, "--threads must be >= 0");
}

}  // namespace qs::server
