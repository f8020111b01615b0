#include "moelab/config/run_config.h"

#include <c10/util/Exception.h>

#include <algorithm>

#include "moelab/config/config.h"
#include "moelab/config/options_io.h"
#include "moelab/models/registry.h"
#include "moelab/util/errors.h"

namespace moelab::config {

namespace {

const std::vector<std::string> kSections{"model", "data", "train"};
constexpr const char* kDefaultData = "synthetic_mixture";

// The model section without its `name`, which selects the entry rather than setting an option.
YAML::Node model_options_section(const YAML::Node& model) {
  YAML::Node options = clone(model);
  options.remove("name");
  return options;
}

}  // namespace

YAML::Node resolve_run_config(const std::vector<std::string>& files,
                              const std::vector<std::string>& overrides) {
  YAML::Node user = resolve(YAML::Node(YAML::NodeType::Map), files, overrides);
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
  if (user["data"] && user["data"]["name"] &&
      user["data"]["name"].as<std::string>() != kDefaultData) {
    throw ConfigError("data.name: unknown data set '" + user["data"]["name"].as<std::string>() +
                      "' (registered: " + kDefaultData + ")");
  }

  YAML::Node resolved(YAML::NodeType::Map);
  resolved["model"] = YAML::Node(YAML::NodeType::Map);
  resolved["model"]["name"] = name;
  YAML::Node model = resolved["model"];
  merge(model, entry.defaults());
  resolved["data"] = YAML::Node(YAML::NodeType::Map);
  resolved["data"]["name"] = kDefaultData;
  YAML::Node data = resolved["data"];
  merge(data, to_yaml(data::SyntheticMixtureOptions()));
  resolved["train"] = to_yaml(train::TrainOptions());
  merge(resolved, user);

  entry.validate(model_options_section(resolved["model"]), "model");
  data_options(resolved);
  train_options(resolved);
  return resolved;
}

data::SyntheticMixtureOptions data_options(const YAML::Node& resolved) {
  YAML::Node section = clone(resolved["data"]);
  if (section.IsMap()) section.remove("name");
  data::SyntheticMixtureOptions options;
  from_yaml(section, options, "data");
  return options;
}

train::TrainOptions train_options(const YAML::Node& resolved) {
  train::TrainOptions options;
  from_yaml(resolved["train"], options, "train");
  return options;
}

std::shared_ptr<models::Model> build_model(const YAML::Node& resolved) {
  const std::string name = resolved["model"]["name"].as<std::string>();
  try {
    return models::find_model(name).build(model_options_section(resolved["model"]), "model");
  } catch (const c10::Error& e) {
    // The options parsed but their combination is invalid (top_k above num_experts, ...).
    throw ConfigError(std::string("model: ") + e.what_without_backtrace());
  }
}

}  // namespace moelab::config
