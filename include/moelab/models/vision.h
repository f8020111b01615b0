// Image classifiers: a small CNN (the expert, and with a width multiplier the dense baseline), a
// tiny CNN router, the MoE of CNN experts with hard top-1 (or top-k) conditional computation,
// and a CIFAR ResNet-18.
//
// VisionMoE routes whole images: the router scores each image, the MoE layer's sorted dispatch
// hands each expert only the images routed to it (an expert with none is not called), and the
// expert logits are recombined in batch order, weighted by the gate value. With top-1 and
// unnormalised weights the output is p_e(x) * expert_e(x), so the router learns through the gate
// value. Routing statistics, aux losses (router.aux: entropy penalty, CV load balancing, ...)
// and capacity come from the MoE layer.
//
// FLOPs are 2 x multiply-adds of convolutions and linear maps, forward, per image; pooling and
// activations are not counted.
#pragma once

#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

#include "moelab/models/model.h"
#include "moelab/models/registry.h"
#include "moelab/nn/moe_layer.h"

namespace YAML {
class Node;
}

namespace moelab::models {

struct ConvNetOptions {
  /// Image channels, height = width, classes.
  TORCH_ARG(int64_t, in_channels) = 1;
  TORCH_ARG(int64_t, image_size) = 28;
  TORCH_ARG(int64_t, num_classes) = 10;
  /// Channels of the first conv-ReLU-pool stage; each further stage doubles them. Default 16.
  TORCH_ARG(int64_t, width) = 16;
  /// conv3x3-ReLU-maxpool2 stages, >= 1. Default 2.
  TORCH_ARG(int64_t, depth) = 2;
  /// Units of the hidden fully connected layer; 0 = the classifier follows the convolutions.
  /// Default 64.
  TORCH_ARG(int64_t, hidden) = 64;
  /// Scales every stage's channels and the hidden units (rounded, >= 1). Default 1.
  TORCH_ARG(double, width_multiplier) = 1.0;
};

/// Channels of stage `s` and hidden units after the multiplier.
int64_t stage_channels(const ConvNetOptions& options, int64_t stage);
int64_t hidden_units(const ConvNetOptions& options);

/// {"stage_channels": [...], "hidden_units": n}: the widths a ConvNet is built with.
nlohmann::json convnet_sizes(const ConvNetOptions& options);

/// Exact parameter count and forward FLOPs per image of a ConvNet.
int64_t convnet_parameters(const ConvNetOptions& options);
int64_t convnet_flops(const ConvNetOptions& options);
/// Floats a ConvNet keeps per image for its backward pass (a size estimate, not exact), in
/// double so that absurd sizes do not overflow.
double convnet_activations(const ConvNetOptions& options);

/// conv-ReLU-pool stack, then (hidden fc + ReLU) and the classifier. Takes (n, C, H, W) or the
/// same images flattened to (n, C*H*W) (as the MoE layer passes them).
class ConvNetImpl : public torch::nn::Cloneable<ConvNetImpl> {
 public:
  explicit ConvNetImpl(ConvNetOptions options);
  void reset() override;
  at::Tensor forward(const at::Tensor& images);

  ConvNetOptions options;
  torch::nn::Sequential features{nullptr};
  torch::nn::Sequential classifier{nullptr};
};
TORCH_MODULE(ConvNet);

/// The router's score network: two stride-2 conv3x3-ReLU layers (width, 2 x width channels),
/// global average pooling and a linear map to E logits.
class RouterCNNImpl : public torch::nn::Cloneable<RouterCNNImpl> {
 public:
  RouterCNNImpl(int64_t in_channels, int64_t image_size, int64_t width, int64_t num_experts);
  void reset() override;
  at::Tensor forward(const at::Tensor& images);
  int64_t flops() const;

  int64_t in_channels, image_size, width, num_experts;
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::Linear score{nullptr};
};
TORCH_MODULE(RouterCNN);

struct VisionMoEOptions {
  /// The expert CNN (in_channels, image_size, num_classes are the model's).
  TORCH_ARG(ConvNetOptions, expert);
  /// Experts, >= 1. Default 4.
  TORCH_ARG(int64_t, num_experts) = 4;
  /// Channels of the router's first conv. Default 8.
  TORCH_ARG(int64_t, router_width) = 8;
  /// Routing: kind, top_k (1 = hard top-1), temperature, normalize_weights (false: the gate
  /// value scales the expert's logits, which is how a top-1 router learns), jitter.
  TORCH_ARG(nn::RouterOptions, router) = nn::RouterOptions(1, 4).top_k(1).normalize_weights(false);
  TORCH_ARG(nn::AuxLossOptions, aux);
  TORCH_ARG(nn::DispatchOptions, dispatch);
};

class VisionMoEImpl : public ModelBase<VisionMoEImpl> {
 public:
  explicit VisionMoEImpl(VisionMoEOptions options);
  /// inputs: (B, C, H, W) images -> outputs (B, classes).
  ModelOutput forward(const data::Batch& batch) override;
  ModelCost cost() const override;
  /// The expert CNN's stage channels and hidden units.
  nlohmann::json resolved_sizes() const override;

  /// Rows each expert ran on in the last forward.
  const std::vector<int64_t>& last_rows_per_expert() const;

  VisionMoEOptions options;
  nn::MoELayer moe{nullptr};
  RouterCNN router_network{nullptr};
  std::vector<ConvNet> experts;
};

/// The dense baseline: one ConvNet (its width_multiplier set for iso-FLOPs or iso-params).
class DenseCNNImpl : public ModelBase<DenseCNNImpl> {
 public:
  explicit DenseCNNImpl(ConvNetOptions options);
  ModelOutput forward(const data::Batch& batch) override;
  ModelCost cost() const override;
  /// Stage channels and hidden units after the width multiplier.
  nlohmann::json resolved_sizes() const override;

  ConvNetOptions options;
  ConvNet net{nullptr};
};

YAML::Node to_yaml(const ConvNetOptions& options);
void from_yaml(const YAML::Node& node, ConvNetOptions& options, const std::string& where);
YAML::Node to_yaml(const VisionMoEOptions& options);
void from_yaml(const YAML::Node& node, VisionMoEOptions& options, const std::string& where);

/// The width multiplier whose ConvNet's FLOPs or parameters come closest to `target`, all else
/// as in `base` (channels are whole numbers, so the match is as close as rounding allows).
double match_width_multiplier(const ConvNetOptions& base, MatchTarget what, int64_t target);

/// The dense CNN baseline of a VisionMoE: its expert's CNN, widened until its FLOPs per image
/// (kFlops: the MoE's active FLOPs) or parameters (kParameters: the MoE's total) match.
ConvNetOptions dense_baseline(const VisionMoEOptions& moe, MatchTarget what);

struct ResNet18Options {
  TORCH_ARG(int64_t, in_channels) = 3;
  TORCH_ARG(int64_t, image_size) = 32;
  TORCH_ARG(int64_t, num_classes) = 10;
  /// Channels of the first stage (64 in the paper); stages double it. Default 64.
  TORCH_ARG(int64_t, width) = 64;
};

/// Parameters and floats kept per image for backward, estimated from the options alone.
double resnet18_parameters(const ResNet18Options& options);
double resnet18_activations(const ResNet18Options& options);

YAML::Node to_yaml(const ResNet18Options& options);
void from_yaml(const YAML::Node& node, ResNet18Options& options, const std::string& where);

/// ResNet-18 in its CIFAR form: 3x3 stem without max-pooling, four stages of two basic blocks
/// (batch norm, projection shortcuts where the shape changes), global pooling, linear head.
class ResNet18Impl : public ModelBase<ResNet18Impl> {
 public:
  explicit ResNet18Impl(ResNet18Options options);
  ModelOutput forward(const data::Batch& batch) override;
  ModelCost cost() const override;

  ResNet18Options options;
  torch::nn::Sequential body{nullptr};
  torch::nn::Linear head{nullptr};
};

}  // namespace moelab::models
