#include "moelab/config/run_config.h"

#include <c10/util/Exception.h>

#include <algorithm>

#include "moelab/config/config.h"
#include "moelab/config/options_io.h"
#include "moelab/data/registry.h"
#include "moelab/models/registry.h"
#include "moelab/util/errors.h"

namespace moelab::config {

namespace {

const std::vector<std::string> kSections{"model", "data", "train"};
constexpr const char* kDefaultData = "synthetic_mixture";

// A model or data section without its `name`, which selects the entry rather than setting an
// option.
YAML::Node options_section(const YAML::Node& section) {
  YAML::Node options = clone(section);
  if (options.IsMap()) options.remove("name");
  return options;
}

}  // namespace

YAML::Node resolve_run_config(const std::vector<std::string>& files,
                              const std::vector<std::string>& overrides) {
  return resolve_run_config(resolve(YAML::Node(YAML::NodeType::Map), files, overrides));
}

YAML::Node resolve_run_config(const YAML::Node& user) {
  for (const auto& item : user) {
    const std::string key = item.first.as<std::string>();
    if (std::find(kSections.begin(), kSections.end(), key) != kSections.end()) continue;
    std::string message = key + ": unknown top-level key";
    const std::string suggestion = nearest(key, kSections);
    if (!suggestion.empty()) message += "; did you mean '" + suggestion + "'?";
    throw ConfigError(message + " (sections: model, data, train)");
  }
  if (user["model"] && !user["model"].IsMap()) {
    throw ConfigError("model: expected a section of keys, got a value");
  }
  std::string name = kDefaultModel;
  if (user["model"] && user["model"]["name"]) {
    if (!user["model"]["name"].IsScalar()) throw ConfigError("model.name: expected a model name");
    name = user["model"]["name"].as<std::string>();
  }
  const models::ModelEntry& entry = models::find_model(name);

  for (const char* section : {"data", "train"}) {
    if (user[section] && !user[section].IsMap()) {
      throw ConfigError(std::string(section) + ": expected a section of keys, got a value");
    }
  }
  std::string data_name = kDefaultData;
  if (user["data"] && user["data"]["name"]) {
    if (!user["data"]["name"].IsScalar()) throw ConfigError("data.name: expected a data set name");
    data_name = user["data"]["name"].as<std::string>();
  }
  const data::DataEntry& data_entry = data::find_data(data_name);

  YAML::Node resolved(YAML::NodeType::Map);
  resolved["model"] = YAML::Node(YAML::NodeType::Map);
  resolved["model"]["name"] = name;
  YAML::Node model = resolved["model"];
  merge(model, entry.defaults());
  resolved["data"] = YAML::Node(YAML::NodeType::Map);
  resolved["data"]["name"] = data_name;
  YAML::Node data = resolved["data"];
  merge(data, data_entry.defaults());
  resolved["train"] = to_yaml(train::TrainOptions());
  merge(resolved, user);

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

train::TrainOptions train_options(const YAML::Node& resolved) {
  train::TrainOptions options;
  from_yaml(resolved["train"], options, "train");
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

}  // namespace moelab::config
