#include "moelab/models/registry.h"

#include "moelab/config/config.h"
#include "moelab/config/options_io.h"
#include "moelab/models/mlp_moe.h"
#include "moelab/models/vision.h"
#include "moelab/util/errors.h"

namespace moelab::models {

namespace {

template <typename Options>
Options parse(const YAML::Node& section, const std::string& where) {
  Options options;
  config::from_yaml(section, options, where);
  return options;
}

template <typename Options, typename Impl>
ModelEntry add_model(const std::string& name, const std::string& description) {
  return {name, description, [] { return config::to_yaml(Options()); },
          [](const YAML::Node& section, const std::string& where) {
            parse<Options>(section, where);
          },
          [](const YAML::Node& section, const std::string& where) -> std::shared_ptr<Model> {
            return std::make_shared<Impl>(parse<Options>(section, where));
          }};
}

std::vector<ModelEntry> register_models() {
  std::vector<ModelEntry> entries;
  entries.push_back(
      {"mlp_moe", "MoE MLP classifier for vector data (pre-norm residual MoE blocks)",
       [] { return config::to_yaml(MLPMoEOptions()); },
       [](const YAML::Node& section, const std::string& where) {
         parse<MLPMoEOptions>(section, where);
       },
       [](const YAML::Node& section, const std::string& where) -> std::shared_ptr<Model> {
         return std::make_shared<MLPMoEImpl>(parse<MLPMoEOptions>(section, where));
       }});
  entries.push_back(add_model<VisionMoEOptions, VisionMoEImpl>(
      "vision_moe", "MoE of small CNN experts with a tiny CNN router; hard top-1 or top-k"));
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
