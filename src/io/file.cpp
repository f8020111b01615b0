#include "moelab/io/file.h"

#include <sstream>

#include <fstream>

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace moelab::io {

namespace {
[[noreturn]] void throw_io_error(const std::string& path, const std::string& what) {
  throw IoError(path + ": " + what + ": " + std::strerror(errno));
}

std::atomic<int64_t> operations{0};
std::atomic<int64_t> fault_at{0};  // 0: no fault armed
std::atomic<int> fault_error{0};   // 0: kill
std::atomic<bool> fault_kills{false};

// Counts one operation; returns the errno it must fail with (0: go ahead). A kill fault ends
// the process here, after `before_kill` (a write's first half).
template <typename BeforeKill>
int count_operation(BeforeKill before_kill) {
  const int64_t index = ++operations;
  if (index != fault_at.load()) return 0;
  if (fault_kills.load()) {
    before_kill();
    ::raise(SIGKILL);
  }
  return fault_error.load();
}
int count_operation() {
  return count_operation([] {});
}

// Fails the way the system call would have: errno set, then the usual IoError.
[[noreturn]] void throw_injected(int error, const std::string& path, const std::string& what) {
  errno = error;
  throw_io_error(path, what);
}
}  // namespace

void inject_fault(const Fault& fault) {
  fault_at = 0;
  operations = 0;
  fault_kills = fault.kind == Fault::Kind::kKill;
  fault_error = fault.error;
  fault_at = fault.at;
}

void clear_fault() {
  fault_at = 0;
  operations = 0;
}

int64_t operations_counted() { return operations.load(); }

void inject_fault_from_environment() {
  const char* value = std::getenv("MOELAB_INJECT_FAULT");
  if (value == nullptr || *value == '\0') return;
  const std::string text(value);
  const auto at = text.find('@');
  const std::string kind = text.substr(0, at);
  char* end = nullptr;
  const long long index = at == std::string::npos ? 0 : std::strtoll(text.c_str() + at + 1, &end, 10);
  if (index < 1 || end == nullptr || *end != '\0' ||
      (kind != "kill" && kind != "enospc" && kind != "eio")) {
    throw ConfigError("MOELAB_INJECT_FAULT='" + text +
                      "': expected kill@N, enospc@N or eio@N with N >= 1");
  }
  Fault fault;
  fault.kind = kind == "kill" ? Fault::Kind::kKill : Fault::Kind::kFail;
  fault.error = kind == "eio" ? EIO : ENOSPC;
  fault.at = index;
  inject_fault(fault);
}

CheckedFile::CheckedFile(std::string path, Mode mode) : path_(std::move(path)) {
  if (const int error = count_operation()) throw_injected(error, path_, "cannot create");
  const int flags = mode == Mode::kAppend ? O_APPEND : O_TRUNC;
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | flags | O_CLOEXEC, 0644);
  if (fd_ < 0) throw_io_error(path_, "cannot create");
}

CheckedFile::~CheckedFile() {
  if (fd_ >= 0) ::close(fd_);
}

void CheckedFile::write(const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  const auto write_half = [&] { [[maybe_unused]] const auto n = ::write(fd_, p, size / 2); };
  if (const int error = count_operation(write_half)) {
    write_half();
    throw_injected(error, path_, "write failed");
  }
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
  if (const int error = count_operation()) throw_injected(error, path_, "fsync failed");
  if (::fsync(fd_) != 0 && errno != EINVAL) throw_io_error(path_, "fsync failed");  // EINVAL: /dev/full & co
  const int fd = fd_;
  fd_ = -1;
  if (const int error = count_operation()) {
    ::close(fd);
    throw_injected(error, path_, "close failed");
  }
  if (::close(fd) != 0) throw_io_error(path_, "close failed");
}

void write_file(const std::string& path, const std::string& bytes) {
  CheckedFile file(path);
  file.write(bytes);
  file.finish();
}

void write_file_atomic(const std::string& path, const std::function<void(CheckedFile&)>& write) {
  const std::string temporary = path + ".tmp";
  try {
    CheckedFile file(temporary);
    write(file);
    file.finish();
    rename_path(temporary, path);
  } catch (...) {
    ::unlink(temporary.c_str());
    throw;
  }
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  write_file_atomic(path, [&](CheckedFile& file) { file.write(bytes); });
}

void rename_path(const std::string& from, const std::string& to) {
  if (const int error = count_operation()) {
    throw_injected(error, to, "cannot move " + from + " into place");
  }
  if (std::rename(from.c_str(), to.c_str()) != 0) {
    throw_io_error(to, "cannot move " + from + " into place");
  }
}

namespace {
// fsync of what `path` names, opened read-only with `flags` (O_DIRECTORY for a directory).
void sync_path(const std::string& path, int flags, const char* what) {
  if (const int error = count_operation()) throw_injected(error, path, "fsync failed");
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | flags);
  if (fd < 0) throw_io_error(path, std::string("cannot open ") + what + " to fsync");
  const int rc = ::fsync(fd);
  const int saved = errno;
  ::close(fd);
  errno = saved;
  if (rc != 0) throw_io_error(path, "fsync failed");
}
}  // namespace

void sync_file(const std::string& path) { sync_path(path, 0, "file"); }

void sync_directory(const std::string& path) { sync_path(path, O_DIRECTORY, "directory"); }

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError(path + ": cannot open: " + std::strerror(errno));
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

}  // namespace moelab::io
