#include "moelab/models/registry.h"

#include <yaml-cpp/yaml.h>

#include "moelab/config/config.h"
#include "moelab/config/fields.h"
#include "moelab/models/mlp_moe.h"
#include "moelab/models/vision.h"
#include "moelab/util/errors.h"

namespace moelab::models {

namespace {

using config::parse_options;

template <typename Options, typename Impl>
ModelEntry add_model(const std::string& name, const std::string& description) {
  return {name,
          description,
          [] { return to_yaml(Options()); },
          [](const YAML::Node& section, const std::string& where) {
            parse_options<Options>(section, where);
          },
          [](const YAML::Node& section, const std::string& where) -> std::shared_ptr<Model> {
            return std::make_shared<Impl>(parse_options<Options>(section, where));
          },
          {}};
}

std::vector<ModelEntry> register_models() {
  std::vector<ModelEntry> entries;
  entries.push_back(add_model<MLPMoEOptions, MLPMoEImpl>(
      "mlp_moe", "MoE MLP for vector data (pre-norm residual MoE blocks); classes or outputs"));
  entries.push_back(add_model<VisionMoEOptions, VisionMoEImpl>(
      "vision_moe", "MoE of small CNN experts with a tiny CNN router; hard top-1 or top-k"));
  entries.back().dense_baseline = [](const YAML::Node& section, MatchTarget target) {
    YAML::Node model = to_yaml(dense_baseline(parse_options<VisionMoEOptions>(section, "model"), target));
    model["name"] = "cnn";
    return model;
  };
  entries.push_back(add_model<ConvNetOptions, DenseCNNImpl>(
      "cnn", "dense CNN baseline (the expert's structure with a width multiplier)"));
  entries.push_back(add_model<ResNet18Options, ResNet18Impl>(
      "resnet18", "ResNet-18, CIFAR form (3x3 stem, no max-pool)"));
  return entries;
}

}  // namespace

const std::vector<ModelEntry>& model_registry() {
  static const std::vector<ModelEntry> entries = register_models();
  return entries;
}

const ModelEntry& find_model(const std::string& name) {
  return config::find_by_name(model_registry(), name, "model.name", "model");
}

}  // namespace moelab::models
