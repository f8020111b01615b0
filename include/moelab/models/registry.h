// The models moelab can build by name, registered in one explicit function (registry.cpp), not by
// static initialisers. A config's `model:` section names the model and sets its options. Adding
// a model: its file pair (Options with to_yaml/from_yaml beside them, the Impl) and one
// add_model line in registry.cpp.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "moelab/models/model.h"

namespace YAML {
class Node;
}

namespace moelab::models {

/// What a dense baseline of an MoE model is matched to: the MoE's active FLOPs per sample, or
/// its total parameters.
enum class MatchTarget { kFlops, kParameters };

struct ModelEntry {
  std::string name;
  std::string description;
  /// The model section with every option at its default (without `name`).
  std::function<YAML::Node()> defaults;
  /// Checks a model section (without `name`): ConfigError for unknown keys or wrong types.
  std::function<void(const YAML::Node& section, const std::string& where)> validate;
  /// Builds the model from a validated section.
  std::function<std::shared_ptr<Model>(const YAML::Node& section, const std::string& where)> build;
  /// The parameter count a section would build, computed from the options alone (nothing is
  /// allocated), so a size that cannot fit is refused before it is built. Empty: not known.
  std::function<double(const YAML::Node& section)> estimate_parameters;
  /// Floats the forward pass keeps per sample for backward (activations), estimated the same way.
  std::function<double(const YAML::Node& section)> estimate_activations;
  /// For MoE models that have one: the model section (with `name`) of the dense baseline matched
  /// to this model's cost. Empty for models without a baseline.
  std::function<YAML::Node(const YAML::Node& section, MatchTarget target)> dense_baseline;
};

/// Every registered model, in registration order.
const std::vector<ModelEntry>& model_registry();

/// The entry called `name`; ConfigError naming the valid ones (and the nearest) otherwise.
const ModelEntry& find_model(const std::string& name);

}  // namespace moelab::models
