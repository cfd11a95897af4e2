// For fuzz targets whose reader takes a path: the input written to a file in this process's own temp directory.
#pragma once
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

namespace qs::fuzz {

// One directory per process, so parallel fuzzers (-jobs, -fork) never read each other's inputs; a reader that
// looks for sibling files (tokenizer_config.json next to tokenizer.json) finds only what the target wrote.
inline const std::filesystem::path& input_dir() {
  static const std::filesystem::path dir = [] {
    auto d = std::filesystem::temp_directory_path() / ("quantserve-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

// Writes `size` bytes to input_dir()/name and returns the path.
inline std::string write_input_file(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = (input_dir() / name).string();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), std::streamsize(size));
  return path;
}

}  // namespace qs::fuzz
