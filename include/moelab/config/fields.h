// The machinery that maps an Options struct onto a YAML section, field by field. Each module
// lists its own Options' fields once, beside the struct, in a `visit` function:
//
//   template <typename V> void visit(V& v, RouterOptions& o) {
//     v.field("top_k", o.top_k());              // a scalar (number, bool, string, enum)
//     v.nested("aux", o.aux());                 // a struct with its own to_yaml/from_yaml
//     v.group("expert", [&](V& g) { ... });     // an inline sub-section
//     v.list("groups", o.groups());             // a list of sections (structs as for nested)
//   }
//   YAML::Node to_yaml(const RouterOptions& o) { return config::write_options(o); }
//   void from_yaml(const YAML::Node& n, RouterOptions& o, const std::string& where) {
//     config::read_options(n, o, where);
//   }
//
// The writer turns the list into YAML with the struct's values (its defaults, for a default
// constructed one); the reader applies the keys a config gives, checks types and rejects
// unknown keys with the nearest valid one. Enums map through EnumNames<E> (a module
// specialises it next to its visit functions).
#pragma once

#include <yaml-cpp/yaml.h>

#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "moelab/config/config.h"
#include "moelab/util/errors.h"

namespace moelab::config {

/// Specialise with `static E parse(const std::string&)` and `static std::string print(E)`.
template <typename E>
struct EnumNames;

/// The shortest decimal text that reads back as exactly `value` ("0.9", not
/// "0.90000000000000002"); ".inf", "-.inf" and ".nan" as YAML writes them.
std::string shortest_text(double value);

template <typename T>
struct Codec {
  static YAML::Node encode(const T& value) {
    if constexpr (std::is_enum_v<T>) {
      return YAML::Node(EnumNames<T>::print(value));
    } else if constexpr (std::is_floating_point_v<T>) {
      return YAML::Node(shortest_text(static_cast<double>(value)));
    } else {
      return YAML::Node(value);
    }
  }
  static T decode(const YAML::Node& node) {
    if constexpr (std::is_enum_v<T>) {
      return EnumNames<T>::parse(node.as<std::string>());
    } else {
      return node.as<T>();
    }
  }
};

template <typename T>
const char* type_name() {
  if constexpr (std::is_same_v<T, bool>) return "a boolean (true/false)";
  if constexpr (std::is_integral_v<T> && std::is_unsigned_v<T>) return "a non-negative integer";
  if constexpr (std::is_integral_v<T>) return "an integer";
  if constexpr (std::is_floating_point_v<T>) return "a number";
  return "a name";
}

/// Decodes one scalar of a section; ConfigError naming `key` and the expected type.
template <typename T>
T decode_scalar(const YAML::Node& node, const std::string& key) {
  if (!node.IsScalar()) {
    throw ConfigError(key + ": expected " + type_name<T>() + ", got a list or section");
  }
  try {
    return Codec<T>::decode(node);
  } catch (const YAML::BadConversion&) {
    throw ConfigError(key + ": expected " + type_name<T>() + ", got '" + node.as<std::string>() +
                      "'");
  } catch (const ConfigError& e) {
    throw ConfigError(key + ": " + e.what());
  } catch (const std::exception& e) {  // an enum parser's TORCH_CHECK
    std::string what = e.what();
    throw ConfigError(key + ": " + what.substr(0, what.find('\n')));
  }
}

class FieldWriter {
 public:
  YAML::Node node{YAML::NodeType::Map};

  template <typename T>
  void field(const char* name, T& value) {
    node[name] = Codec<T>::encode(value);
  }
  template <typename Options>
  void nested(const char* name, Options& options) {
    node[name] = to_yaml(options);  // the struct's module defines it (found by ADL)
  }
  template <typename Options>
  void list(const char* name, std::vector<Options>& items) {
    YAML::Node sequence(YAML::NodeType::Sequence);
    for (const auto& item : items) sequence.push_back(to_yaml(item));
    node[name] = sequence;
  }
  void group(const char* name, const std::function<void(FieldWriter&)>& fill) {
    FieldWriter sub;
    fill(sub);
    node[name] = sub.node;
  }
};

class FieldReader {
 public:
  FieldReader(YAML::Node node, std::string where);

  template <typename T>
  void field(const char* name, T& value) {
    names_.push_back(name);
    const YAML::Node child = node_[name];
    if (!child || child.IsNull()) return;
    value = decode_scalar<T>(child, where_ + "." + name);
  }
  template <typename Options>
  void nested(const char* name, Options& options) {
    names_.push_back(name);
    const YAML::Node child = node_[name];
    if (!child || child.IsNull()) return;
    from_yaml(child, options, where_ + "." + name);  // found by ADL
  }
  /// A list of sections, each read into one Options (WHERE.NAME[i] in messages).
  template <typename Options>
  void list(const char* name, std::vector<Options>& items) {
    names_.push_back(name);
    const YAML::Node child = node_[name];
    if (!child || child.IsNull()) return;
    const std::string key = where_ + "." + name;
    if (!child.IsSequence()) throw ConfigError(key + ": expected a list of sections");
    items.clear();
    for (size_t i = 0; i < child.size(); ++i) {
      items.emplace_back();
      from_yaml(child[i], items.back(), key + "[" + std::to_string(i) + "]");
    }
  }
  void group(const char* name, const std::function<void(FieldReader&)>& read);

  /// ConfigError for the first key of the section that no field claimed.
  void reject_unknown() const;

 private:
  YAML::Node node_;
  std::string where_;
  std::vector<std::string> names_;
};

/// Every field of `options` as a YAML mapping (by value: visit functions take references).
template <typename Options>
YAML::Node write_options(Options options) {
  FieldWriter writer;
  visit(writer, options);
  return writer.node;
}

/// Applies the keys present in `node` to `options`; `where` is the section's full key
/// ("model.moe") for messages.
template <typename Options>
void read_options(const YAML::Node& node, Options& options, const std::string& where) {
  FieldReader reader(node, where);
  visit(reader, options);
  reader.reject_unknown();
}

/// A config section read into Options, starting from `options` (the defaults unless given):
/// what every registry's build, load and validate do with their section.
template <typename Options>
Options parse_options(const YAML::Node& section, const std::string& where,
                      Options options = Options()) {
  from_yaml(section, options, where);  // the struct's module defines it (found by ADL)
  return options;
}

}  // namespace moelab::config

/// Defines the to_yaml / from_yaml pair of an Options struct whose `visit` precedes it; use in
/// the struct's own namespace.
#define MOELAB_DEFINE_OPTIONS_YAML(Options)                                                    \
  YAML::Node to_yaml(const Options& options) { return ::moelab::config::write_options(options); } \
  void from_yaml(const YAML::Node& node, Options& options, const std::string& where) {        \
    ::moelab::config::read_options(node, options, where);                                     \
  }
