#include "moelab/io/file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace moelab::io {

namespace {
[[noreturn]] void throw_io_error(const std::string& path, const std::string& what) {
  throw IoError(path + ": " + what + ": " + std::strerror(errno));
}
}  // namespace

CheckedFile::CheckedFile(std::string path) : path_(std::move(path)) {
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw_io_error(path_, "cannot create");
}

CheckedFile::~CheckedFile() {
  if (fd_ >= 0) ::close(fd_);
}

void CheckedFile::write(const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd_, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_io_error(path_, "write failed");
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
}

void CheckedFile::finish() {
  if (::fsync(fd_) != 0 && errno != EINVAL) throw_io_error(path_, "fsync failed");  // EINVAL: /dev/full & co
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) throw_io_error(path_, "close failed");
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string temporary = path + ".tmp";
  try {
    CheckedFile file(temporary);
    file.write(bytes);
    file.finish();
  } catch (...) {
    ::unlink(temporary.c_str());
    throw;
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    const int saved = errno;
    ::unlink(temporary.c_str());
    errno = saved;
    throw_io_error(path, "cannot move the written file into place");
  }
}

void sync_directory(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw_io_error(path, "cannot open directory to fsync");
  const int rc = ::fsync(fd);
  const int saved = errno;
  ::close(fd);
  errno = saved;
  if (rc != 0) throw_io_error(path, "fsync failed");
}

}  // namespace moelab::io
