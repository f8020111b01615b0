// Writing files so that a full disk, an I/O error or a kill never leaves a half-written file
// where a whole one was: every write, fsync and close is checked, and a failure throws an
// IoError naming the path and the cause (strerror: "No space left on device", ...). Nothing here
// throws from a destructor.
#pragma once

#include <string>

#include "moelab/util/errors.h"

namespace moelab::io {

/// A file open for writing; `write` and `finish` throw IoError on any failure. Destroying an
/// unfinished file closes it without checking (the caller is already handling an error).
class CheckedFile {
 public:
  /// Creates or truncates `path`.
  explicit CheckedFile(std::string path);
  ~CheckedFile();
  CheckedFile(const CheckedFile&) = delete;
  CheckedFile& operator=(const CheckedFile&) = delete;

  void write(const void* data, size_t size);
  void write(const std::string& bytes) { write(bytes.data(), bytes.size()); }
  /// fsync, then close; both checked.
  void finish();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

/// Writes `bytes` to PATH.tmp, fsyncs, and renames it to `path`: `path` holds the old content or
/// the new, never a mix. IoError naming the path and the cause; the temporary file is removed.
void write_file_atomic(const std::string& path, const std::string& bytes);

/// fsync of a directory (after a rename in it), checked.
void sync_directory(const std::string& path);

}  // namespace moelab::io
