// Writing files so that a full disk, an I/O error or a kill never leaves a half-written file
// where a whole one was: every write, fsync and close is checked, and a failure throws an
// IoError naming the path and the cause (strerror: "No space left on device", ...). Nothing here
// throws from a destructor.
#pragma once

#include <cerrno>
#include <cstdint>
#include <functional>
#include <string>

#include "moelab/util/errors.h"

namespace moelab::io {

/// A file open for writing; `write` and `finish` throw IoError on any failure. Destroying an
/// unfinished file closes it without checking (the caller is already handling an error).
class CheckedFile {
 public:
  enum class Mode { kTruncate, kAppend };
  /// Creates or truncates `path` (or opens it to append, creating it if missing).
  explicit CheckedFile(std::string path, Mode mode = Mode::kTruncate);
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

/// Creates (or truncates) `path` with `bytes`, checked and fsynced, in place: for files inside a
/// directory that is itself renamed into place once whole (a checkpoint).
void write_file(const std::string& path, const std::string& bytes);

/// `write` fills PATH.tmp, which is then fsynced and renamed to `path`: `path` holds the old
/// content or the new, never a mix. IoError naming the path and the cause; the temporary file is
/// removed.
void write_file_atomic(const std::string& path, const std::function<void(CheckedFile&)>& write);
void write_file_atomic(const std::string& path, const std::string& bytes);

/// The whole content of `path`; DataError "PATH: cannot open: CAUSE" if it cannot be read.
std::string read_file(const std::string& path);

/// fsync of a directory (after a rename in it), checked.
void sync_directory(const std::string& path);

/// fsync of a file already written and closed (by a writer that is not a CheckedFile), checked.
void sync_file(const std::string& path);

/// rename(2), checked: IoError naming both paths and the cause.
void rename_path(const std::string& from, const std::string& to);

// ---- fault injection ----------------------------------------------------------------------
// Every checked operation above (create, write, fsync, close, rename) is counted. A test (or the
// tool, through the environment variable MOELAB_INJECT_FAULT) can make the N-th operation from
// now fail with an errno, as a full disk or a bad sector would, or end the process with SIGKILL
// there, as a kill or a power cut would. A write that faults first writes half its bytes.

struct Fault {
  enum class Kind { kFail, kKill };
  Kind kind = Kind::kFail;
  /// 1-based index of the operation, counted from the call to inject_fault.
  int64_t at = 1;
  /// The errno a kFail operation reports.
  int error = ENOSPC;
};

/// Arms `fault` and restarts the count.
void inject_fault(const Fault& fault);
/// Disarms any fault and restarts the count.
void clear_fault();
/// Checked operations since the last inject_fault/clear_fault (or since the process started).
int64_t operations_counted();
/// Arms the fault MOELAB_INJECT_FAULT describes, if it is set: "kill@N", "enospc@N" or "eio@N".
/// ConfigError on any other value.
void inject_fault_from_environment();

}  // namespace moelab::io
