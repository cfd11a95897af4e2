// Helpers shared by the loader tests: fixture paths, temporary copies to corrupt, and error expectations.
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/model_file.h"
#include "kernels/error.h"

namespace qs::loader_test {

namespace fs = std::filesystem;

inline std::string fixture(const std::string& rel) { return std::string(QS_SOURCE_DIR) + "/tests/fixtures/loader/" + rel; }

inline nlohmann::json expected() {
  std::ifstream in(fixture("expected.json"));
  return nlohmann::json::parse(in);
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

// A fresh directory under the system temp dir, removed with everything in it at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "qs_loader_XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }
  // Copies a fixture (file or directory) into this directory; returns the copy's path.
  std::string copy_fixture(const std::string& rel, const std::string& as = "") const {
    const std::string dst = *this / (as.empty() ? fs::path(rel).filename().string() : as);
    fs::copy(fixture(rel), dst, fs::copy_options::recursive);
    return dst;
  }

 private:
  std::string path_;
};

// Runs `fn`, expects a qs::Error with `code` whose message contains every one of `parts`.
inline void expect_error(const std::function<void()>& fn, ErrorCode code, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "expected a qs::Error (" << error_code_name(code) << "), nothing was thrown";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << "got " << error_code_name(e.code()) << ": " << e.what();
    for (const std::string& p : parts) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << "message lacks '" << p << "': " << e.what();
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected a qs::Error, got std::exception: " << e.what();
  }
}

inline void expect_open_error(const std::string& path, ErrorCode code, std::initializer_list<std::string> parts) {
  expect_error([&] { ModelFile::open(path); }, code, parts);
}

// Byte surgery on a copied GGUF file.
template <typename T>
inline void poke(std::string& bytes, size_t at, T value) {
  ASSERT_LE(at + sizeof(T), bytes.size());
  std::memcpy(bytes.data() + at, &value, sizeof(T));
}
inline size_t find_string(const std::string& bytes, const std::string& s) {
  const size_t at = bytes.find(s);
  EXPECT_NE(at, std::string::npos) << s;
  return at;
}
// Where the fields after a tensor's name start: n_dims (u32), dims (i64 each), type (u32), offset (u64).
inline size_t tensor_info_at(const std::string& bytes, const std::string& name) {
  // The name is preceded by its u64 length; search for length + name to skip metadata mentions.
  std::string key(8, '\0');
  const uint64_t len = name.size();
  std::memcpy(key.data(), &len, 8);
  return find_string(bytes, key + name) + 8 + name.size();
}

inline std::vector<int64_t> shape_of(const nlohmann::json& j) { return j.get<std::vector<int64_t>>(); }

}  // namespace qs::loader_test
