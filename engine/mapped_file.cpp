// mmap-backed read-only file views; the mapping lives as long as the last shared_ptr to it.
#include "engine/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "kernels/error.h"

namespace qs {

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    QS_CHECK(err != ENOENT && err != ENOTDIR, ErrorCode::kNotFound, path, ": no such file");
    QS_FAIL(ErrorCode::kInvalidModel, path, ": cannot read it (", std::strerror(err), ")");
  }
  QS_CHECK(S_ISREG(st.st_mode), ErrorCode::kInvalidModel, path, ": is not a regular file");
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  QS_CHECK(fd >= 0, ErrorCode::kInvalidModel, path, ": cannot open it (", std::strerror(errno), ")");
  std::shared_ptr<MappedFile> file(new MappedFile());
  file->path_ = path;
  file->size_ = size_t(st.st_size);
  if (file->size_ > 0) {
    void* p = ::mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    const int err = errno;
    ::close(fd);
    QS_CHECK(p != MAP_FAILED, ErrorCode::kInvalidModel, path, ": cannot memory-map it (", std::strerror(err), ")");
    file->data_ = static_cast<const uint8_t*>(p);
  } else {
    ::close(fd);
  }
  return file;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

}  // namespace qs
