// A read-only, private memory mapping of a whole file: the storage tensors from safetensors and GGUF point into.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace qs {

class MappedFile {
 public:
  // Maps `path` read-only (MAP_PRIVATE). Throws qs::Error: kNotFound when it does not exist, kInvalidModel
  // when it cannot be opened or mapped (a directory, no permission). An empty file maps to size 0.
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace qs
