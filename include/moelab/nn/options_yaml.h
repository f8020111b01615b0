// The nn Options structs <-> YAML config sections (the field lists live in
// src/nn/options_yaml.cpp, beside no other module's). Keys are the Options field names.
#pragma once

#include <string>

#include "moelab/nn/moe_layer.h"

namespace YAML {
class Node;
}

namespace moelab::nn {

YAML::Node to_yaml(const RouterOptions& options);
void from_yaml(const YAML::Node& node, RouterOptions& options, const std::string& where);
YAML::Node to_yaml(const FFNExpertsOptions& options);
void from_yaml(const YAML::Node& node, FFNExpertsOptions& options, const std::string& where);
YAML::Node to_yaml(const DispatchOptions& options);
void from_yaml(const YAML::Node& node, DispatchOptions& options, const std::string& where);
YAML::Node to_yaml(const AuxLossOptions& options);
void from_yaml(const YAML::Node& node, AuxLossOptions& options, const std::string& where);
/// d_model, d_ff, num_experts, router.*, experts.*, dispatch.*, aux.*, shared experts.
YAML::Node to_yaml(const MoELayerOptions& options);
void from_yaml(const YAML::Node& node, MoELayerOptions& options, const std::string& where);

}  // namespace moelab::nn
