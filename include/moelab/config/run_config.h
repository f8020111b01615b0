// The whole configuration of a moelab run, resolved with the documented precedence:
//   built-in defaults < config files (in the order given; later wins) < key=value overrides.
// The defaults are those of the model the files name (model.name, default mlp_moe), so the
// resolved tree lists every key with its value, which is what --dump-config prints.
//
// Top-level sections: model (name + the model's options), data (name + the data set's options;
// synthetic_mixture for now), train (the trainer's options). Any other top-level key is rejected.
#pragma once

#include <yaml-cpp/yaml.h>

#include <memory>
#include <string>
#include <vector>

#include "moelab/data/synthetic_mixture.h"
#include "moelab/models/model.h"
#include "moelab/train/trainer.h"

namespace moelab::config {

inline constexpr const char* kDefaultModel = "mlp_moe";

/// Resolves and validates; ConfigError names the file, key or value that is wrong.
YAML::Node resolve_run_config(const std::vector<std::string>& files,
                              const std::vector<std::string>& overrides);

/// Builds the model a resolved config describes.
std::shared_ptr<models::Model> build_model(const YAML::Node& resolved);

/// The data and train sections of a resolved config as Options.
data::SyntheticMixtureOptions data_options(const YAML::Node& resolved);
train::TrainOptions train_options(const YAML::Node& resolved);

}  // namespace moelab::config
