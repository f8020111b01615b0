#include "moelab/config/options_io.h"

#include <functional>
#include <set>
#include <vector>

#include "moelab/config/config.h"
#include "moelab/util/errors.h"

namespace moelab::config {

namespace {

// ---- one field list per Options struct ---------------------------------------------------

template <typename V>
void visit(V& v, nn::RouterOptions& o) {
  v.field("kind", o.kind());
  v.field("top_k", o.top_k());
  v.field("temperature", o.temperature());
  v.field("normalize_weights", o.normalize_weights());
  v.field("jitter_eps", o.jitter_eps());
  v.field("bias_update_rate", o.bias_update_rate());
  v.field("num_groups", o.num_groups());
  v.field("topk_groups", o.topk_groups());
  v.field("capacity_factor", o.capacity_factor());
  v.field("seed", o.seed());
}

template <typename V>
void visit(V& v, nn::FFNExpertsOptions& o) {
  v.field("activation", o.activation());
  v.field("bias", o.bias());
}

template <typename V>
void visit(V& v, nn::DispatchOptions& o) {
  v.field("dropless", o.dropless());
  v.field("capacity_factor", o.capacity_factor());
  v.field("drop_policy", o.drop_policy());
}

template <typename V>
void visit(V& v, nn::AuxLossOptions& o) {
  v.field("load_balance", o.load_balance());
  v.field("importance_load", o.importance_load());
  v.field("usage_mse", o.usage_mse());
  v.field("entropy", o.entropy());
  v.field("z_loss", o.z_loss());
}

template <typename V>
void visit(V& v, nn::MoELayerOptions& o) {
  // The sizes live in the router and expert options; the config states each once.
  int64_t d_model = o.d_model(), d_ff = o.experts().d_ff(), num_experts = o.num_experts();
  v.field("d_model", d_model);
  v.field("d_ff", d_ff);
  v.field("num_experts", num_experts);
  o.router().d_model(d_model).num_experts(num_experts);
  o.experts().d_model(d_model).d_ff(d_ff).num_experts(num_experts);
  v.group("router", [&](V& sub) { visit(sub, o.router()); });
  v.group("experts", [&](V& sub) { visit(sub, o.experts()); });
  v.group("dispatch", [&](V& sub) { visit(sub, o.dispatch()); });
  v.group("aux", [&](V& sub) { visit(sub, o.aux()); });
  v.field("num_shared_experts", o.num_shared_experts());
  v.field("shared_d_ff", o.shared_d_ff());
  v.field("shared_gate", o.shared_gate());
}

template <typename V>
void visit(V& v, models::MLPMoEOptions& o) {
  v.field("input_dim", o.input_dim());
  v.field("num_classes", o.num_classes());
  v.field("num_layers", o.num_layers());
  v.group("moe", [&](V& sub) { visit(sub, o.moe()); });
}

// ---- value encoding ------------------------------------------------------------------------

template <typename T>
struct Codec {
  static YAML::Node encode(const T& value) { return YAML::Node(value); }
  static T decode(const YAML::Node& node) { return node.as<T>(); }
};

template <typename Enum, Enum (*Parse)(const std::string&), std::string (*Print)(Enum)>
struct EnumCodec {
  static YAML::Node encode(const Enum& value) { return YAML::Node(Print(value)); }
  static Enum decode(const YAML::Node& node) {
    try {
      return Parse(node.as<std::string>());
    } catch (const c10::Error& e) {
      throw ConfigError(e.what_without_backtrace());
    }
  }
};
template <>
struct Codec<nn::RouterKind>
    : EnumCodec<nn::RouterKind, nn::parse_router_kind, nn::to_string> {};
template <>
struct Codec<nn::Activation> : EnumCodec<nn::Activation, nn::parse_activation, nn::to_string> {};
template <>
struct Codec<nn::DropPolicy> : EnumCodec<nn::DropPolicy, nn::parse_drop_policy, nn::to_string> {};

template <typename T>
const char* type_name() {
  if constexpr (std::is_same_v<T, bool>) return "a boolean (true/false)";
  if constexpr (std::is_integral_v<T> && std::is_unsigned_v<T>) return "a non-negative integer";
  if constexpr (std::is_integral_v<T>) return "an integer";
  if constexpr (std::is_floating_point_v<T>) return "a number";
  return "a name";
}

// ---- visitors ------------------------------------------------------------------------------

class Writer {
 public:
  YAML::Node node{YAML::NodeType::Map};
  template <typename T>
  void field(const char* name, T& value) {
    node[name] = Codec<T>::encode(value);
  }
  void group(const char* name, const std::function<void(Writer&)>& fill) {
    Writer sub;
    fill(sub);
    node[name] = sub.node;
  }
};

class Reader {
 public:
  Reader(YAML::Node node, std::string where) : node_(std::move(node)), where_(std::move(where)) {
    if (node_ && !node_.IsMap() && !node_.IsNull()) {
      throw ConfigError(where_ + ": expected a section of keys, got a value");
    }
  }

  template <typename T>
  void field(const char* name, T& value) {
    names_.push_back(name);
    const YAML::Node child = node_[name];
    if (!child || child.IsNull()) return;
    const std::string key = where_ + "." + name;
    if (!child.IsScalar()) {
      throw ConfigError(key + ": expected " + type_name<T>() + ", got a list or section");
    }
    try {
      value = Codec<T>::decode(child);
    } catch (const YAML::BadConversion&) {
      throw ConfigError(key + ": expected " + type_name<T>() + ", got '" +
                        child.as<std::string>() + "'");
    } catch (const ConfigError& e) {
      throw ConfigError(key + ": " + e.what());
    }
  }

  void group(const char* name, const std::function<void(Reader&)>& read) {
    names_.push_back(name);
    const YAML::Node child = node_[name];
    if (!child || child.IsNull()) return;
    Reader sub(child, where_ + "." + name);
    read(sub);
    sub.reject_unknown();
  }

  void reject_unknown() const {
    if (!node_ || !node_.IsMap()) return;
    const std::set<std::string> known(names_.begin(), names_.end());
    for (const auto& item : node_) {
      const std::string key = item.first.as<std::string>();
      if (known.count(key)) continue;
      std::string message = where_ + "." + key + ": unknown key";
      const std::string suggestion = nearest(key, names_);
      if (!suggestion.empty()) message += "; did you mean '" + where_ + "." + suggestion + "'?";
      throw ConfigError(message);
    }
  }

 private:
  YAML::Node node_;
  std::string where_;
  std::vector<std::string> names_;
};


template <typename Options>
YAML::Node write_options(Options options) {  // by value: the visit functions take references
  Writer writer;
  visit(writer, options);
  return writer.node;
}

template <typename Options>
void read_options(const YAML::Node& node, Options& options, const std::string& where) {
  Reader reader(node, where);
  visit(reader, options);
  reader.reject_unknown();
}

}  // namespace

YAML::Node to_yaml(const nn::MoELayerOptions& options) { return write_options(options); }
void from_yaml(const YAML::Node& node, nn::MoELayerOptions& options, const std::string& where) {
  read_options(node, options, where);
}
YAML::Node to_yaml(const models::MLPMoEOptions& options) { return write_options(options); }
void from_yaml(const YAML::Node& node, models::MLPMoEOptions& options, const std::string& where) {
  read_options(node, options, where);
}

}  // namespace moelab::config
