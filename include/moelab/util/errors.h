// Typed errors for what a user controls: configuration and options (ConfigError), files that
// cannot be read or are malformed (DataError), checkpoints that are incomplete, corrupt or do
// not fit the model (CheckpointError). The command-line tool maps them to exit codes:
// ConfigError -> 1 (usage/config), anything else -> 2 (runtime).
#pragma once

#include <stdexcept>
#include <string>

namespace moelab {

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class DataError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class CheckpointError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A file could not be written (full disk, I/O error, read-only file system); names the path and
/// the cause. Exit code 2.
class IoError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Training cannot go on (e.g. too many non-finite steps in a row).
class TrainingError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace moelab
