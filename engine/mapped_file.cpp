// mmap-backed read-only file views; the mapping lives as long as the last shared_ptr to it.
#include "engine/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
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
#ifdef QUANTSERVE_FUZZ_EXACT_BOUNDS
  // Fuzz builds (tests/fuzz): a copy in a heap block of exactly the file's size, so ASan reports a read even one
  // byte past the end; a mapping is page-granular and would hand back zeros up to the page's end unnoticed.
  if (file->size_ > 0) {
    auto* copy = static_cast<uint8_t*>(std::malloc(file->size_));
    const ssize_t got = copy != nullptr ? ::pread(fd, copy, file->size_, 0) : -1;
    ::close(fd);
    if (got != ssize_t(file->size_)) std::free(copy);
    QS_CHECK(got == ssize_t(file->size_), ErrorCode::kInvalidModel, path, ": cannot read it whole");
    file->data_ = copy;
  } else {
    ::close(fd);
  }
  return file;
#endif
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
#ifdef QUANTSERVE_FUZZ_EXACT_BOUNDS
  std::free(const_cast<uint8_t*>(data_));
#else
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
#endif
}

}  // namespace qs
