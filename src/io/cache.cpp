#include "moelab/io/cache.h"

#include <cstdio>
#include <cstdlib>

namespace moelab::io {

std::string cache_directory(const std::string& kind, const std::string& configured) {
  if (!configured.empty()) return configured;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) {
    return std::string(xdg) + "/moelab/" + kind;
  }
  if (const char* home = std::getenv("HOME"); home && *home) {
    return std::string(home) + "/.cache/moelab/" + kind;
  }
  return "/tmp/moelab-" + kind;
}

std::string Fnv64::hex() const {
  char text[17];
  std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(h));
  return text;
}

}  // namespace moelab::io
