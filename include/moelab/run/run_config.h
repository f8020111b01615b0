// The whole configuration of a moelab run, resolved with the documented precedence:
//   built-in defaults < config files (in the order given; later wins) < key=value overrides.
// The defaults are those of the model and data set the files name (model.name, default
// mlp_moe; data.name, default synthetic_mixture), so the resolved tree lists every key with its
// value, which is what --dump-config prints.
//
// Top-level sections: model (name + the model's options), data (name + the data set's options;
// see data/registry.h), task (name: the data set's task unless given; see train/task.h), train
// (the trainer's options). Any other top-level key is rejected.
//
// Data flow: config -> run (this file and run.h) -> model + data + task -> train step ->
// checkpoint.
#pragma once

#include <yaml-cpp/yaml.h>

#include <memory>
#include <string>
#include <vector>

#include "moelab/data/dataset.h"
#include "moelab/dist/process_group.h"
#include "moelab/models/model.h"
#include "moelab/train/federated.h"
#include "moelab/train/task.h"
#include "moelab/train/trainer.h"

namespace moelab::run {

inline constexpr const char* kDefaultModel = "mlp_moe";
inline constexpr const char* kDefaultData = "synthetic_mixture";

/// Resolves and validates; ConfigError names the file, key or value that is wrong.
YAML::Node resolve_run_config(const std::vector<std::string>& files,
                              const std::vector<std::string>& overrides);

/// The same for a tree already stacked from files and overrides.
YAML::Node resolve_run_config(const YAML::Node& user);

/// ConfigError when a key=value override would be ignored by the resolved config: today
/// train.max_steps while train.epochs > 0 (the run would train for its epochs instead).
void check_overrides_take_effect(const YAML::Node& resolved,
                                 const std::vector<std::string>& overrides);

/// Builds the model a resolved config describes (ConfigError for invalid combinations).
std::shared_ptr<models::Model> build_model(const YAML::Node& resolved);

/// The data set a resolved config describes, with train.val_fraction of its training part held
/// out for validation (seeded by train.seed).
data::Splits load_data(const YAML::Node& resolved);

/// Sizes a config leaves to its data, filled in (model.vocab_size 0: the tokenizer's). Loads the
/// data only when a size is left to it; `resolved` unchanged otherwise.
YAML::Node with_sizes_from_data(const YAML::Node& resolved);

/// The task a resolved config names.
std::shared_ptr<train::Task> make_task(const YAML::Node& resolved);

/// The train section of a resolved config as Options.
train::TrainOptions train_options(const YAML::Node& resolved);
/// The federated section's options, validated (clients 0: not federated).
train::FederatedOptions federated_options(const YAML::Node& resolved);
/// The parallel section's options, validated (ConfigError naming the key).
dist::ParallelOptions parallel_options(const YAML::Node& resolved);

/// Everything a Trainer needs, from a resolved config: the global generator seeded with
/// train.seed, then the model built, the data loaded, the task made.
train::RunParts assemble_run(const YAML::Node& resolved);

}  // namespace moelab::run
