// Options structs <-> YAML. Each Options struct lists its fields once (a visit function in the
// .cpp); the writer turns that list into YAML with the struct's defaults, the reader applies the
// keys a config gives. Config keys are the Options field names, so a key documented in an Options
// header is the key in a file and on the command line.
#pragma once

#include <yaml-cpp/yaml.h>

#include <string>

#include "moelab/data/images.h"
#include "moelab/data/synthetic_mixture.h"
#include "moelab/models/mlp_moe.h"
#include "moelab/models/vision.h"
#include "moelab/train/trainer.h"
#include "moelab/nn/moe_layer.h"

namespace moelab::config {

/// Every field of `options` (its defaults, for a default-constructed one), as a YAML mapping:
/// d_model, d_ff, num_experts, router.*, experts.*, dispatch.*, aux.*, shared experts.
YAML::Node to_yaml(const nn::MoELayerOptions& options);

/// Applies the keys present in `node` to `options`. `where` is the section's full key ("model.moe")
/// used in messages. Throws ConfigError for an unknown key (suggesting the nearest valid one), a
/// value of the wrong type (naming the expected type) or an invalid enum name.
void from_yaml(const YAML::Node& node, nn::MoELayerOptions& options, const std::string& where);

/// The same for the MoE MLP classifier: input_dim, num_classes, num_layers, moe.*.
YAML::Node to_yaml(const models::MLPMoEOptions& options);
void from_yaml(const YAML::Node& node, models::MLPMoEOptions& options, const std::string& where);

/// The trainer: max_steps, batch_size, ..., optimizer.*, schedule.*.
YAML::Node to_yaml(const train::TrainOptions& options);
void from_yaml(const YAML::Node& node, train::TrainOptions& options, const std::string& where);

/// The synthetic mixture data set (its `name` key is the caller's business).
YAML::Node to_yaml(const data::SyntheticMixtureOptions& options);
void from_yaml(const YAML::Node& node, data::SyntheticMixtureOptions& options,
               const std::string& where);

/// Image data sets (fashion_mnist, mnist, cifar10, cifar100).
YAML::Node to_yaml(const data::ImageDataOptions& options);
void from_yaml(const YAML::Node& node, data::ImageDataOptions& options, const std::string& where);

/// Vision models: the dense CNN (`cnn`), the MoE of CNN experts (`vision_moe`), `resnet18`.
YAML::Node to_yaml(const models::ConvNetOptions& options);
void from_yaml(const YAML::Node& node, models::ConvNetOptions& options, const std::string& where);
YAML::Node to_yaml(const models::VisionMoEOptions& options);
void from_yaml(const YAML::Node& node, models::VisionMoEOptions& options, const std::string& where);
YAML::Node to_yaml(const models::ResNet18Options& options);
void from_yaml(const YAML::Node& node, models::ResNet18Options& options, const std::string& where);

}  // namespace moelab::config
