// The models moelab can build by name, registered in one explicit function (registry.cpp), not by
// static initialisers. A config's `model:` section names the model and sets its options.
#pragma once

#include <yaml-cpp/yaml.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "moelab/models/model.h"

namespace moelab::models {

struct ModelEntry {
  std::string name;
  std::string description;
  /// The model section with every option at its default (without `name`).
  std::function<YAML::Node()> defaults;
  /// Checks a model section (without `name`): ConfigError for unknown keys or wrong types.
  std::function<void(const YAML::Node& section, const std::string& where)> validate;
  /// Builds the model from a validated section.
  std::function<std::shared_ptr<Model>(const YAML::Node& section, const std::string& where)> build;
};

/// Every registered model, in registration order.
const std::vector<ModelEntry>& model_registry();

/// The entry called `name`; ConfigError naming the valid ones (and the nearest) otherwise.
const ModelEntry& find_model(const std::string& name);

}  // namespace moelab::models
