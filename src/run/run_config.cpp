#include "moelab/run/run_config.h"

#include <c10/util/Exception.h>
#include <torch/utils.h>

#include <algorithm>

#include "moelab/config/config.h"
#include "moelab/data/registry.h"
#include "moelab/models/registry.h"
#include "moelab/util/errors.h"

namespace moelab::run {

namespace {

const std::vector<std::string> kSections{"model", "data", "task", "train"};

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
  return resolve_run_config(config::resolve(YAML::Node(YAML::NodeType::Map), files, overrides));
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
  config::merge(resolved, user);

  for (const auto& item : resolved["task"]) {
    const std::string key = item.first.as<std::string>();
    if (key != "name") config::throw_unknown_key("task", key, {"name"});
  }
  entry.validate(options_section(resolved["model"]), "model");
  data_entry.validate(options_section(resolved["data"]), "data");
  train_options(resolved);
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

train::TrainOptions train_options(const YAML::Node& resolved) {
  train::TrainOptions options;
  train::from_yaml(resolved["train"], options, "train");
  train::validate(options);
  return options;
}

std::shared_ptr<models::Model> build_model(const YAML::Node& resolved) {
  const std::string name = resolved["model"]["name"].as<std::string>();
  try {
    return models::find_model(name).build(options_section(resolved["model"]), "model");
  } catch (const c10::Error& e) {
    // The options parsed but their combination is invalid (top_k above num_experts, ...).
    throw ConfigError(std::string("model: ") + e.what_without_backtrace());
  }
}

train::RunParts assemble_run(const YAML::Node& resolved) {
  train::RunParts parts;
  parts.config = resolved;
  parts.options = train_options(resolved);
  torch::manual_seed(parts.options.seed());
  parts.model = build_model(resolved);
  parts.data = load_data(resolved);
  parts.task = make_task(resolved);
  return parts;
}

}  // namespace moelab::run
