#include "moelab/run/run_config.h"

#include <c10/util/Exception.h>
#include <torch/utils.h>

#include <fmt/format.h>

#include <algorithm>
#include <functional>

#include "moelab/config/config.h"
#include "moelab/data/registry.h"
#include "moelab/models/registry.h"
#include "moelab/util/errors.h"
#include "moelab/util/runtime.h"

namespace moelab::run {

namespace {

const std::vector<std::string> kSections{"model", "data", "task", "train", "parallel", "federated"};

// A model or data section without its `name`, which selects the entry rather than setting an
// option.
YAML::Node options_section(const YAML::Node& section) {
  YAML::Node options = config::clone(section);
  if (options.IsMap()) options.remove("name");
  return options;
}

// The `name` of a section of the user's tree, or `fallback`.
std::string section_name(const YAML::Node& user, const std::string& section,
                         const std::string& fallback) {
  if (user[section] && !user[section].IsMap()) {
    throw ConfigError(section + ": expected a section of keys, got a value");
  }
  if (!user[section] || !user[section]["name"]) return fallback;
  if (!user[section]["name"].IsScalar()) throw ConfigError(section + ".name: expected a name");
  return user[section]["name"].as<std::string>();
}

}  // namespace

YAML::Node resolve_run_config(const std::vector<std::string>& files,
                              const std::vector<std::string>& overrides) {
  YAML::Node resolved;
  try {
    resolved =
        resolve_run_config(config::resolve(YAML::Node(YAML::NodeType::Map), files, overrides));
  } catch (const ConfigError& e) {
    throw config::with_origin(e, files, overrides);
  }
  check_overrides_take_effect(resolved, overrides);
  return resolved;
}

// Only overrides: a config file (or a dumped config, which lists every key) may hold both
// limits, and its max_steps was never a request to stop early.
void check_overrides_take_effect(const YAML::Node& resolved,
                                 const std::vector<std::string>& overrides) {
  const int64_t epochs = train_options(resolved).epochs();
  if (epochs == 0) return;
  for (const auto& assignment : overrides) {
    if (assignment.substr(0, assignment.find('=')) != "train.max_steps") continue;
    throw ConfigError(assignment + ": has no effect while train.epochs is " +
                      std::to_string(epochs) +
                      " (the run trains for its epochs); give train.epochs=0 as well to train "
                      "for a number of steps, or change train.epochs");
  }
}

YAML::Node resolve_run_config(const YAML::Node& user) {
  for (const auto& item : user) {
    const std::string key = item.first.as<std::string>();
    if (std::find(kSections.begin(), kSections.end(), key) == kSections.end()) {
      config::throw_unknown_key("", key, kSections);
    }
  }
  const models::ModelEntry& entry = models::find_model(section_name(user, "model", kDefaultModel));
  const data::DataEntry& data_entry = data::find_data(section_name(user, "data", kDefaultData));
  const std::string task_name = section_name(user, "task", data_entry.task);
  train::make_task(task_name);  // a ConfigError naming the registered tasks if unknown

  YAML::Node resolved(YAML::NodeType::Map);
  resolved["model"] = YAML::Node(YAML::NodeType::Map);
  resolved["model"]["name"] = entry.name;
  YAML::Node model = resolved["model"];
  config::merge(model, entry.defaults());
  resolved["data"] = YAML::Node(YAML::NodeType::Map);
  resolved["data"]["name"] = data_entry.name;
  YAML::Node data = resolved["data"];
  config::merge(data, data_entry.defaults());
  resolved["task"] = YAML::Node(YAML::NodeType::Map);
  resolved["task"]["name"] = task_name;
  resolved["train"] = train::to_yaml(train::TrainOptions());
  resolved["parallel"] = dist::to_yaml(dist::ParallelOptions());
  resolved["federated"] = train::to_yaml(train::FederatedOptions());
  config::merge(resolved, user);

  for (const auto& item : resolved["task"]) {
    const std::string key = item.first.as<std::string>();
    if (key != "name") config::throw_unknown_key("task", key, {"name"});
  }
  entry.validate(options_section(resolved["model"]), "model");
  data_entry.validate(options_section(resolved["data"]), "data");
  train_options(resolved);
  parallel_options(resolved);
  federated_options(resolved);
  return resolved;
}

data::Splits load_data(const YAML::Node& resolved) {
  const data::DataEntry& entry = data::find_data(resolved["data"]["name"].as<std::string>());
  data::Splits splits = entry.load(options_section(resolved["data"]), "data");
  const train::TrainOptions train = train_options(resolved);
  data::split_validation(splits, train.val_fraction(), train.seed());
  return splits;
}

std::shared_ptr<train::Task> make_task(const YAML::Node& resolved) {
  return train::make_task(resolved["task"]["name"].as<std::string>());
}

train::FederatedOptions federated_options(const YAML::Node& resolved) {
  train::FederatedOptions options;
  if (resolved["federated"]) train::from_yaml(resolved["federated"], options, "federated");
  train::validate(options, "federated");
  return options;
}

dist::ParallelOptions parallel_options(const YAML::Node& resolved) {
  dist::ParallelOptions options;
  if (resolved["parallel"]) dist::from_yaml(resolved["parallel"], options, "parallel");
  dist::validate(options, "parallel");
  return options;
}

train::TrainOptions train_options(const YAML::Node& resolved) {
  train::TrainOptions options;
  train::from_yaml(resolved["train"], options, "train");
  train::validate(options);
  return options;
}

namespace {

// "model.moe.num_experts=1000000, model.moe.d_ff=128, ..." - the largest numbers of a section,
// the keys that make a model big.
std::string largest_keys(const YAML::Node& node, const std::string& where) {
  std::vector<std::pair<double, std::string>> found;
  std::function<void(const YAML::Node&, const std::string&)> walk = [&](const YAML::Node& n,
                                                                         const std::string& key) {
    if (n.IsMap()) {
      for (const auto& item : n) walk(item.second, key + "." + item.first.as<std::string>());
    } else if (n.IsScalar()) {
      try {
        const double value = n.as<double>();
        if (value >= 2) found.emplace_back(value, key + "=" + n.Scalar());
      } catch (const YAML::Exception&) {
      }
    }
  };
  walk(node, where);
  std::sort(found.rbegin(), found.rend());
  std::string out;
  for (size_t i = 0; i < found.size() && i < 4; ++i) out += (i ? ", " : "") + found[i].second;
  return out;
}

}  // namespace

std::shared_ptr<models::Model> build_model(const YAML::Node& resolved) {
  const std::string name = resolved["model"]["name"].as<std::string>();
  const models::ModelEntry& entry = models::find_model(name);
  const uint64_t memory = physical_memory_bytes();
  if (entry.estimate_parameters && memory > 0) {
    // Weights, gradients and AdamW's two moments: 16 bytes per float32 parameter; one batch's
    // activations and their gradients: 8 bytes per float kept for backward.
    const YAML::Node section = options_section(resolved["model"]);
    const double parameters = entry.estimate_parameters(section);
    const YAML::Node batch_node = resolved["train"] ? resolved["train"]["batch_size"] : YAML::Node();
    const double batch = batch_node && batch_node.IsScalar() ? batch_node.as<double>() : 0.0;
    const double activations = entry.estimate_activations ? entry.estimate_activations(section) : 0.0;
    const double parameter_bytes = 16 * parameters, activation_bytes = 8 * activations * batch;
    if (parameter_bytes + activation_bytes > static_cast<double>(memory)) {
      std::string largest = largest_keys(section, "model");
      if (activation_bytes > parameter_bytes) {
        largest = "train.batch_size=" + batch_node.Scalar() + (largest.empty() ? "" : ", ") + largest;
      }
      throw ConfigError(fmt::format(
          "model: {:.3g} parameters need about {:.1f} GB for weights, gradients and optimizer "
          "state, and one batch of {:.0f} about {:.1f} GB of activations; this machine has "
          "{:.1f} GB (largest settings: {})",
          parameters, parameter_bytes / 1e9, batch, activation_bytes / 1e9,
          static_cast<double>(memory) / 1e9, largest));
    }
  }
  try {
    return entry.build(options_section(resolved["model"]), "model");
  } catch (const c10::Error& e) {
    // The options parsed but their combination is invalid (top_k above num_experts, ...).
    throw ConfigError(std::string("model: ") + e.what_without_backtrace());
  }
}

namespace {

// The model's sizes against the data's, before any step: a mismatch found here names both keys
// instead of failing inside the first forward pass. Models state their sizes under the common
// keys (num_classes, input_dim, in_channels, image_size); a model without them is not checked.
void check_model_fits_data(const YAML::Node& resolved, const data::Splits& splits,
                           const train::Task& task) {
  const YAML::Node model = resolved["model"];
  auto model_size = [&](const char* key) {
    return model[key] && model[key].IsScalar() ? model[key].as<int64_t>() : int64_t{-1};
  };
  const int64_t classes = static_cast<int64_t>(splits.class_names.size());
  if (task.name() == "classification" && classes > 0 && model_size("num_classes") >= 0 &&
      model_size("num_classes") != classes) {
    throw ConfigError("model.num_classes (" + std::to_string(model_size("num_classes")) +
                      ") does not match the " + std::to_string(classes) + " classes of data." +
                      resolved["data"]["name"].as<std::string>() +
                      " (HINT: set model.num_classes to the data's)");
  }
  if (splits.tokenizer && model_size("vocab_size") >= 0 &&
      model_size("vocab_size") != splits.tokenizer->vocab_size()) {
    throw ConfigError("model.vocab_size (" + std::to_string(model_size("vocab_size")) +
                      ") does not match the " + std::to_string(splits.tokenizer->vocab_size()) +
                      " tokens of data." + resolved["data"]["name"].as<std::string>() +
                      "'s tokenizer (HINT: model.vocab_size: 0 takes the tokenizer's)");
  }
  for (const auto& [key, value] : splits.sizes) {
    if (model_size(key.c_str()) >= 0 && model_size(key.c_str()) != value) {
      throw ConfigError("model." + key + " (" + std::to_string(model_size(key.c_str())) +
                        ") does not match the data's " + std::to_string(value) + " (data." +
                        resolved["data"]["name"].as<std::string>() + "; HINT: model." + key +
                        ": 0 takes the data's)");
    }
  }
  const YAML::Node data_section = resolved["data"];
  if (data_section["block_length"] && model_size("max_length") >= 0 &&
      data_section["block_length"].as<int64_t>() > model_size("max_length")) {
    throw ConfigError("data.block_length (" + data_section["block_length"].Scalar() +
                      ") is longer than model.max_length (" + std::to_string(model_size("max_length")) + ")");
  }
  if (data::size_of(splits.train) == 0) return;
  const at::Tensor inputs = splits.train->range(0, 1).get(data::kInputs);
  if (!inputs.defined()) return;
  auto mismatch = [&](const char* key, int64_t expected, const std::string& what) {
    throw ConfigError("model." + std::string(key) + " (" + std::to_string(model_size(key)) +
                      ") does not match the data's " + std::to_string(expected) + " " + what +
                      " (data." + resolved["data"]["name"].as<std::string>() + ")");
  };
  const at::Tensor targets = splits.train->range(0, 1).get(data::kTargets);
  if (task.name() == "regression" && targets.defined() && targets.dim() == 2 &&
      model_size("num_classes") >= 0 && model_size("num_classes") != targets.size(1)) {
    mismatch("num_classes", targets.size(1), "regression targets per sample (the model's outputs)");
  }
  if (inputs.dim() == 2 && model_size("input_dim") >= 0 && model_size("input_dim") != inputs.size(1)) {
    mismatch("input_dim", inputs.size(1), "features per sample");
  }
  if (inputs.dim() == 3 && model_size("input_dim") >= 0 && model_size("input_dim") != inputs.size(2)) {
    mismatch("input_dim", inputs.size(2), "features per position");
  }
  if (inputs.dim() == 4) {
    if (model_size("in_channels") >= 0 && model_size("in_channels") != inputs.size(1)) {
      mismatch("in_channels", inputs.size(1), "image channels");
    }
    if (model_size("image_size") >= 0 && model_size("image_size") != inputs.size(2)) {
      mismatch("image_size", inputs.size(2), "pixel image side");
    }
  }
}

// A model option the data may size (0 = the data's): the tokenizer's vocabulary, or a size the
// data set states (Splits::sizes).
void fill_sizes_from_data(YAML::Node& resolved, const data::Splits& splits) {
  YAML::Node model = resolved["model"];
  auto is_zero = [&](const std::string& key) {
    return model[key] && model[key].IsScalar() && model[key].as<int64_t>() == 0;
  };
  if (splits.tokenizer && is_zero("vocab_size")) model["vocab_size"] = splits.tokenizer->vocab_size();
  for (const auto& [key, value] : splits.sizes) {
    if (is_zero(key)) model[key] = value;
  }
}

bool sized_by_data(const YAML::Node& resolved) {
  for (const char* key : {"vocab_size", "num_genes", "num_cell_lines", "input_dim"}) {
    const YAML::Node value = resolved["model"][key];
    if (value && value.IsScalar() && value.as<int64_t>() == 0) return true;
  }
  return false;
}

}  // namespace

YAML::Node with_sizes_from_data(const YAML::Node& resolved) {
  if (!sized_by_data(resolved)) return resolved;
  YAML::Node filled = config::clone(resolved);
  fill_sizes_from_data(filled, load_data(resolved));
  return filled;
}

train::RunParts assemble_run(const YAML::Node& resolved) {
  train::RunParts parts;
  parts.config = config::clone(resolved);
  parts.options = train_options(resolved);
  // The data first: a language model's vocabulary is its tokenizer's (model.vocab_size 0). The
  // generator is seeded after loading, so the model's initial weights do not depend on it.
  parts.data = load_data(resolved);
  fill_sizes_from_data(parts.config, parts.data);
  torch::manual_seed(parts.options.seed());
  parts.model = build_model(parts.config);
  parts.task = make_task(parts.config);
  check_model_fits_data(parts.config, parts.data, *parts.task);
  return parts;
}

}  // namespace moelab::run
