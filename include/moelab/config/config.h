// Configuration files: YAML documents stacked in order (later wins), then `key.sub=value`
// overrides, resolved over the defaults. Defaults are never written here: they come from the
// Options structs themselves (see options_io.h), so each default exists exactly once.
// Every failure is a ConfigError naming the file, line or key, with a suggestion where one helps.
#pragma once

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include <string>
#include <vector>

#include "moelab/util/errors.h"

namespace moelab::config {

/// Reads one YAML file; its top level must be a mapping. ConfigError on a missing file or bad
/// YAML (with line and column).
YAML::Node load_file(const std::string& path);

/// Deep merge: mappings merge key by key, anything else in `overlay` replaces what `base` has.
void merge(YAML::Node& base, const YAML::Node& overlay);

/// Applies "a.b.c=value"; the value is parsed as YAML ("2" is a number, "[1, 2]" a list,
/// "null" null). Intermediate mappings are created. ConfigError if malformed.
void apply_override(YAML::Node& root, const std::string& assignment);

/// defaults < files (in order) < overrides. The result is a fresh tree; `defaults` is unchanged.
YAML::Node resolve(const YAML::Node& defaults, const std::vector<std::string>& files,
                   const std::vector<std::string>& overrides);

/// `error` with "FILE:LINE: " in front when the key its message starts with ("train.lr: ...")
/// was set by one of `files` (the last one that sets it, unless an override does): a type or
/// range error found after the merge then still names where the value was written.
ConfigError with_origin(const ConfigError& error, const std::vector<std::string>& files,
                        const std::vector<std::string>& overrides);

/// The candidate closest to `key` by edit distance, or "" if none is reasonably close.
std::string nearest(const std::string& key, const std::vector<std::string>& candidates);

/// "WHERE.KEY: unknown key; did you mean 'WHERE.NEAREST'?" (`where` may be empty: a top-level
/// key), listing `known` when nothing is near. The one message for every unknown config key.
[[noreturn]] void throw_unknown_key(const std::string& where, const std::string& key,
                                    const std::vector<std::string>& known);

/// Throws the ConfigError find_by_name describes.
[[noreturn]] void throw_unknown_name(const std::string& key, const std::string& kind,
                                     const std::string& name, const std::vector<std::string>& names);

/// The entry of a by-name registry whose `name` is `name`; otherwise a ConfigError
/// "KEY: unknown KIND 'NAME'; did you mean 'X'? (registered: a b c)".
template <typename Entry>
const Entry& find_by_name(const std::vector<Entry>& entries, const std::string& name,
                          const std::string& key, const std::string& kind) {
  std::vector<std::string> names;
  for (const auto& entry : entries) {
    if (entry.name == name) return entry;
    names.push_back(entry.name);
  }
  throw_unknown_name(key, kind, name, names);
}

/// Deep copy (yaml-cpp nodes otherwise share structure).
YAML::Node clone(const YAML::Node& node);

/// The same tree as JSON. YAML scalars are untyped: true/false become booleans, integers and
/// numbers become numbers, null/~ null, anything else a string.
nlohmann::json to_json(const YAML::Node& node);

}  // namespace moelab::config
