#include "moelab/config/config.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include "moelab/config/fields.h"
#include "moelab/util/errors.h"

namespace moelab::config {

YAML::Node clone(const YAML::Node& node) { return YAML::Clone(node); }

namespace {

// Every mapping key must be a plain scalar and appear once: yaml-cpp would otherwise merge a
// repeated `train:` section silently or fail later on a complex key without naming the file.
void check_keys(const YAML::Node& node, const std::string& path, const std::string& where) {
  if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) {
      check_keys(node[i], path, where + "[" + std::to_string(i) + "]");
    }
    return;
  }
  if (!node.IsMap()) return;
  std::set<std::string> seen;
  for (const auto& item : node) {
    const YAML::Mark mark = item.first.Mark();
    const std::string at = path + ":" + std::to_string(mark.line + 1) + ":" +
                           std::to_string(mark.column + 1) + ": ";
    if (!item.first.IsScalar()) {
      throw ConfigError(at + "a key under '" + (where.empty() ? "(top level)" : where) +
                        "' is a list or mapping; keys must be plain names");
    }
    const std::string key = item.first.Scalar();
    const std::string full = where.empty() ? key : where + "." + key;
    if (!seen.insert(key).second) throw ConfigError(at + full + ": appears twice");
    check_keys(item.second, path, full);
  }
}

}  // namespace

YAML::Node load_file(const std::string& path) {
  if (std::filesystem::is_directory(path)) {
    throw ConfigError(path + ": is a directory, not a config file");
  }
  std::ifstream in(path);
  if (!in) throw ConfigError(path + ": cannot open config file (missing or unreadable)");
  YAML::Node node;
  try {
    node = YAML::Load(in);
  } catch (const YAML::Exception& e) {
    throw ConfigError(path + ":" + std::to_string(e.mark.line + 1) + ":" +
                      std::to_string(e.mark.column + 1) + ": invalid YAML: " + e.msg);
  }
  if (node.IsNull()) return YAML::Node(YAML::NodeType::Map);
  if (!node.IsMap()) throw ConfigError(path + ": the top level must be a mapping of keys");
  check_keys(node, path, "");
  return node;
}

void merge(YAML::Node& base, const YAML::Node& overlay) {
  if (!overlay.IsMap() || !base.IsMap()) {
    base = clone(overlay);
    return;
  }
  for (const auto& item : overlay) {
    const std::string key = item.first.as<std::string>();
    if (base[key] && base[key].IsMap() && item.second.IsMap()) {
      YAML::Node child = base[key];
      merge(child, item.second);
    } else {
      base[key] = clone(item.second);
    }
  }
}

void apply_override(YAML::Node& root, const std::string& assignment) {
  const auto equals = assignment.find('=');
  if (equals == std::string::npos || equals == 0) {
    throw ConfigError("override '" + assignment + "' must look like key.sub=value");
  }
  const std::string key = assignment.substr(0, equals);
  YAML::Node value;
  try {
    value = YAML::Load(assignment.substr(equals + 1));
  } catch (const YAML::Exception& e) {
    throw ConfigError("override '" + assignment + "': value is not valid YAML: " + e.msg);
  }
  std::vector<std::string> parts;
  for (size_t start = 0;;) {
    const size_t dot = key.find('.', start);
    parts.push_back(key.substr(start, dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  if (std::any_of(parts.begin(), parts.end(), [](const auto& p) { return p.empty(); })) {
    throw ConfigError("override '" + assignment + "': key '" + key + "' has an empty part");
  }
  // yaml-cpp's operator[] on a non-const node creates children; keep explicit handles.
  std::vector<YAML::Node> chain{root};
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node child = chain.back()[parts[i]];
    if (child && !child.IsMap() && !child.IsNull()) {
      throw ConfigError("override '" + assignment + "': '" + parts[i] +
                        "' holds a value, not a section");
    }
    if (!child || child.IsNull()) {
      chain.back()[parts[i]] = YAML::Node(YAML::NodeType::Map);
      child = chain.back()[parts[i]];
    }
    chain.push_back(child);
  }
  chain.back()[parts.back()] = value;
}

YAML::Node resolve(const YAML::Node& defaults, const std::vector<std::string>& files,
                   const std::vector<std::string>& overrides) {
  YAML::Node resolved = clone(defaults);
  for (const auto& path : files) merge(resolved, load_file(path));
  for (const auto& assignment : overrides) apply_override(resolved, assignment);
  return resolved;
}

ConfigError with_origin(const ConfigError& error, const std::vector<std::string>& files,
                        const std::vector<std::string>& overrides) {
  const std::string message = error.what();
  const std::string key = message.substr(0, message.find_first_of(": ("));
  if (key.empty() || key.find('/') != std::string::npos) return error;  // names a file already
  for (auto it = overrides.rbegin(); it != overrides.rend(); ++it) {
    const std::string set = it->substr(0, it->find('='));
    if (key == set || key.rfind(set + ".", 0) == 0) return error;  // the user typed it
    // An error named by its section alone ("model: Router: num_experts (-1) ...") may come from
    // an override inside it: the line where a file opens the section would mislead.
    if (set.rfind(key + ".", 0) == 0) return error;
  }
  for (auto it = files.rbegin(); it != files.rend(); ++it) {
    YAML::Node root;
    try {
      root = YAML::LoadFile(*it);
    } catch (const YAML::Exception&) {
      continue;
    }
    YAML::Node node = root;
    bool found = true;
    for (size_t start = 0; found;) {
      const size_t dot = key.find('.', start);
      const std::string part = key.substr(start, dot - start);
      const YAML::Node& parent = node;  // const: looking a key up must not create it
      found = parent.IsMap() && static_cast<bool>(parent[part]);
      if (found) node.reset(parent[part]);
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
    if (found) return ConfigError(*it + ":" + std::to_string(node.Mark().line + 1) + ": " + message);
  }
  return error;
}

namespace {
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = above;
    }
  }
  return row[b.size()];
}
}  // namespace

std::string nearest(const std::string& key, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_distance = std::max<size_t>(3, key.size() / 2) + 1;
  for (const auto& candidate : candidates) {
    const size_t d = edit_distance(key, candidate);
    if (d < best_distance) {
      best_distance = d;
      best = candidate;
    }
  }
  return best;
}

void throw_unknown_key(const std::string& where, const std::string& key,
                       const std::vector<std::string>& known) {
  const std::string prefix = where.empty() ? "" : where + ".";
  std::string message = prefix + key + ": unknown key";
  const std::string suggestion = nearest(key, known);
  if (!suggestion.empty()) {
    message += "; did you mean '" + prefix + suggestion + "'?";
  } else {
    message += " (valid:";
    for (const auto& k : known) message += " " + k;
    message += ")";
  }
  throw ConfigError(message);
}

std::string shortest_text(double value) {
  if (std::isnan(value)) return ".nan";
  if (std::isinf(value)) return value > 0 ? ".inf" : "-.inf";
  char text[40];
  for (int digits = 1; digits <= 17; ++digits) {
    std::snprintf(text, sizeof(text), "%.*g", digits, value);
    if (std::strtod(text, nullptr) == value) break;
  }
  std::string out = text;
  // "1" would read back as an integer; a float field keeps a float look.
  if (out.find_first_of(".eEn") == std::string::npos) out += ".0";
  return out;
}

FieldReader::FieldReader(YAML::Node node, std::string where)
    : node_(std::move(node)), where_(std::move(where)) {
  if (node_ && !node_.IsMap() && !node_.IsNull()) {
    throw ConfigError(where_ + ": expected a section of keys, got a value");
  }
}

void FieldReader::group(const char* name, const std::function<void(FieldReader&)>& read) {
  names_.push_back(name);
  const YAML::Node child = node_[name];
  if (!child || child.IsNull()) return;
  FieldReader sub(child, where_ + "." + name);
  read(sub);
  sub.reject_unknown();
}

void FieldReader::reject_unknown() const {
  if (!node_ || !node_.IsMap()) return;
  for (const auto& item : node_) {
    const std::string key = item.first.as<std::string>();
    if (std::find(names_.begin(), names_.end(), key) == names_.end()) {
      throw_unknown_key(where_, key, names_);
    }
  }
}

void throw_unknown_name(const std::string& key, const std::string& kind, const std::string& name,
                        const std::vector<std::string>& names) {
  std::string message = key + ": unknown " + kind + " '" + name + "'";
  const std::string suggestion = nearest(name, names);
  if (!suggestion.empty()) message += "; did you mean '" + suggestion + "'?";
  message += " (registered:";
  for (const auto& n : names) message += " " + n;
  throw ConfigError(message + ")");
}

nlohmann::json to_json(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map: {
      nlohmann::json out = nlohmann::json::object();
      for (const auto& item : node) out[item.first.as<std::string>()] = to_json(item.second);
      return out;
    }
    case YAML::NodeType::Sequence: {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& item : node) out.push_back(to_json(item));
      return out;
    }
    case YAML::NodeType::Scalar: {
      const std::string text = node.Scalar();
      if (text == "true") return true;
      if (text == "false") return false;
      if (text == "null" || text == "~") return nullptr;
      if (node.Tag() == "!") return text;  // quoted in the YAML: a string whatever it looks like
      size_t used = 0;
      try {
        const long long integer = std::stoll(text, &used);
        if (used == text.size()) return integer;
        const double number = std::stod(text, &used);
        if (used == text.size()) return number;
      } catch (const std::exception&) {
        // not a number
      }
      return text;
    }
    default:
      return nullptr;
  }
}

}  // namespace moelab::config
