// A MoE MLP classifier for vector data: Linear(input, D), then num_layers pre-norm residual MoE
// blocks (x + MoE(LayerNorm(x))), then LayerNorm and Linear(D, classes). The smallest complete
// MoE model: it exercises the trainer and the tools before the vision and language models arrive.
#pragma once

#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include "moelab/models/model.h"

namespace YAML {
class Node;
}

namespace moelab::models {

struct MLPMoEOptions {
  MLPMoEOptions();
  /// Features per sample, >= 1. Default 16.
  TORCH_ARG(int64_t, input_dim) = 16;
  /// Outputs: classes (classification, >= 2) or regression targets (>= 1). Default 4.
  TORCH_ARG(int64_t, num_classes) = 4;
  /// MoE blocks, >= 1. Default 2.
  TORCH_ARG(int64_t, num_layers) = 2;
  /// Every block's MoE layer; its d_model is the MLP's width. Default D=64, F=128, E=4, top-2.
  TORCH_ARG(nn::MoELayerOptions, moe);
};

YAML::Node to_yaml(const MLPMoEOptions& options);
void from_yaml(const YAML::Node& node, MLPMoEOptions& options, const std::string& where);

class MLPMoEImpl : public ModelBase<MLPMoEImpl> {
 public:
  explicit MLPMoEImpl(MLPMoEOptions options);

  /// inputs: (B, input_dim) -> outputs (B, num_classes); padding_mask and token_ids (B), if
  /// present, go to every MoE layer.
  ModelOutput forward(const data::Batch& batch) override;
  ModelCost cost() const override;

  MLPMoEOptions options;
  torch::nn::Linear input{nullptr}, head{nullptr};
  torch::nn::LayerNorm final_norm{nullptr};
  std::vector<torch::nn::LayerNorm> norms;
  std::vector<nn::MoELayer> blocks;
};
TORCH_MODULE(MLPMoE);

}  // namespace moelab::models
