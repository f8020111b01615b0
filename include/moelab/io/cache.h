// Where moelab keeps what it derives from a user's files so the next run need not derive it
// again (token files, molecular fingerprints), and the key it files them under. A cache entry is
// only ever a copy: deleting the cache directory costs time, never data.
#pragma once

#include <cstdint>
#include <string>

namespace moelab::io {

/// `configured` when not empty; else $XDG_CACHE_HOME/moelab/KIND, ~/.cache/moelab/KIND, or
/// /tmp/moelab-KIND when neither variable is set.
std::string cache_directory(const std::string& kind, const std::string& configured = "");

/// FNV-1a, 64 bits: cache keys need no cryptographic strength, only stability across runs and
/// machines. Each add() ends with a separator, so ("ab", "c") and ("a", "bc") differ.
struct Fnv64 {
  uint64_t h = 1469598103934665603ULL;
  void add(const std::string& s) {
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ULL;
    h = (h ^ 0xFF) * 1099511628211ULL;
  }
  /// 16 lower-case hex digits.
  std::string hex() const;
};

}  // namespace moelab::io
