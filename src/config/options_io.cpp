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
  v.field("score_function", o.score_function());
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

template <typename V>
void visit(V& v, models::ConvNetOptions& o) {
  v.field("in_channels", o.in_channels());
  v.field("image_size", o.image_size());
  v.field("num_classes", o.num_classes());
  v.field("width", o.width());
  v.field("depth", o.depth());
  v.field("hidden", o.hidden());
  v.field("width_multiplier", o.width_multiplier());
}

template <typename V>
void visit(V& v, models::VisionMoEOptions& o) {
  // The image and class sizes are the model's; the expert group holds the CNN's shape.
  v.field("in_channels", o.expert().in_channels());
  v.field("image_size", o.expert().image_size());
  v.field("num_classes", o.expert().num_classes());
  v.field("num_experts", o.num_experts());
  v.field("router_width", o.router_width());
  v.group("expert", [&](V& sub) {
    sub.field("width", o.expert().width());
    sub.field("depth", o.expert().depth());
    sub.field("hidden", o.expert().hidden());
  });
  v.group("router", [&](V& sub) { visit(sub, o.router()); });
  v.group("aux", [&](V& sub) { visit(sub, o.aux()); });
  v.group("dispatch", [&](V& sub) { visit(sub, o.dispatch()); });
}

template <typename V>
void visit(V& v, models::ResNet18Options& o) {
  v.field("in_channels", o.in_channels());
  v.field("image_size", o.image_size());
  v.field("num_classes", o.num_classes());
  v.field("width", o.width());
}

template <typename V>
void visit(V& v, train::OptimizerOptions& o) {
  v.field("name", o.name());
  v.field("lr", o.lr());
  v.field("weight_decay", o.weight_decay());
  v.field("momentum", o.momentum());
  v.field("nesterov", o.nesterov());
  v.field("beta1", o.beta1());
  v.field("beta2", o.beta2());
  v.field("eps", o.eps());
}

template <typename V>
void visit(V& v, train::ScheduleOptions& o) {
  v.field("kind", o.kind());
  v.field("warmup_steps", o.warmup_steps());
  v.field("step_size", o.step_size());
  v.field("gamma", o.gamma());
  v.field("min_lr_ratio", o.min_lr_ratio());
}

template <typename V>
void visit(V& v, train::MonitorOptions& o) {
  v.field("metric", o.metric());
  v.field("mode", o.mode());
  v.field("min_delta", o.min_delta());
  v.field("patience", o.patience());
  v.field("keep_best", o.keep_best());
}

template <typename V>
void visit(V& v, train::TrainOptions& o) {
  v.field("max_steps", o.max_steps());
  v.field("epochs", o.epochs());
  v.field("batch_size", o.batch_size());
  v.field("grad_accumulation", o.grad_accumulation());
  v.field("clip_grad_norm", o.clip_grad_norm());
  v.field("val_fraction", o.val_fraction());
  v.field("log_every", o.log_every());
  v.field("eval_every", o.eval_every());
  v.field("eval_each_epoch", o.eval_each_epoch());
  v.field("checkpoint_every", o.checkpoint_every());
  v.field("checkpoint_every_minutes", o.checkpoint_every_minutes());
  v.field("keep_last", o.keep_last());
  v.field("max_time", o.max_time());
  v.field("precision", o.precision());
  v.field("seed", o.seed());
  v.field("max_nonfinite_steps", o.max_nonfinite_steps());
  v.group("optimizer", [&](V& sub) { visit(sub, o.optimizer()); });
  v.group("schedule", [&](V& sub) { visit(sub, o.schedule()); });
  v.group("monitor", [&](V& sub) { visit(sub, o.monitor()); });
}

template <typename V>
void visit(V& v, data::SyntheticMixtureOptions& o) {
  v.field("num_samples", o.num_samples());
  v.field("input_dim", o.input_dim());
  v.field("num_classes", o.num_classes());
  v.field("num_clusters", o.num_clusters());
  v.field("center_scale", o.center_scale());
  v.field("cluster_std", o.cluster_std());
  v.field("seed", o.seed());
}

template <typename V>
void visit(V& v, data::ImageDataOptions& o) {
  v.field("root", o.root());
  v.field("train_limit", o.train_limit());
  v.field("test_limit", o.test_limit());
  v.field("normalize", o.normalize());
  v.field("augment", o.augment());
  v.field("labels", o.labels());
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
struct Codec<nn::ScoreFunction>
    : EnumCodec<nn::ScoreFunction, nn::parse_score_function, nn::to_string> {};
template <>
struct Codec<nn::DropPolicy> : EnumCodec<nn::DropPolicy, nn::parse_drop_policy, nn::to_string> {};

template <>
struct Codec<train::ScheduleKind> {
  static YAML::Node encode(const train::ScheduleKind& value) {
    return YAML::Node(train::to_string(value));
  }
  static train::ScheduleKind decode(const YAML::Node& node) {
    return train::parse_schedule_kind(node.as<std::string>());
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
YAML::Node to_yaml(const train::TrainOptions& options) { return write_options(options); }
void from_yaml(const YAML::Node& node, train::TrainOptions& options, const std::string& where) {
  read_options(node, options, where);
}
YAML::Node to_yaml(const data::SyntheticMixtureOptions& options) { return write_options(options); }
void from_yaml(const YAML::Node& node, data::SyntheticMixtureOptions& options,
               const std::string& where) {
  read_options(node, options, where);
}

YAML::Node to_yaml(const data::ImageDataOptions& options) { return write_options(options); }
void from_yaml(const YAML::Node& node, data::ImageDataOptions& options, const std::string& where) {
  read_options(node, options, where);
}

YAML::Node to_yaml(const models::ConvNetOptions& options) { return write_options(options); }
void from_yaml(const YAML::Node& node, models::ConvNetOptions& options, const std::string& where) {
  read_options(node, options, where);
}
YAML::Node to_yaml(const models::VisionMoEOptions& options) { return write_options(options); }
void from_yaml(const YAML::Node& node, models::VisionMoEOptions& options, const std::string& where) {
  read_options(node, options, where);
}
YAML::Node to_yaml(const models::ResNet18Options& options) { return write_options(options); }
void from_yaml(const YAML::Node& node, models::ResNet18Options& options, const std::string& where) {
  read_options(node, options, where);
}

}  // namespace moelab::config
