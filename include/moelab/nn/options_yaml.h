// The nn Options structs <-> YAML config sections (the field lists live in
// src/nn/options_yaml.cpp, beside no other module's). Keys are the Options field names.
#pragma once

#include <string>

#include "moelab/config/fields.h"
#include "moelab/nn/moe_layer.h"
#include "moelab/nn/norm.h"
#include "moelab/nn/positional_encoding.h"

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

namespace moelab::config {
// The Transformer models' enums, by the names their configs use.
template <>
struct EnumNames<nn::PositionKind> {
  static nn::PositionKind parse(const std::string& s) { return nn::parse_position_kind(s); }
  static std::string print(nn::PositionKind v) { return nn::to_string(v); }
};
template <>
struct EnumNames<nn::NormKind> {
  static nn::NormKind parse(const std::string& s) { return nn::parse_norm_kind(s); }
  static std::string print(nn::NormKind v) { return nn::to_string(v); }
};
}  // namespace moelab::config
