// What every moelab model is to the trainer and the tools: a torch::nn::Module whose forward
// returns task outputs plus the MoE side channel (aux loss, per-layer routing statistics), and
// which can state its own size and cost.
#pragma once

#include <torch/nn/module.h>

#include <vector>

#include "moelab/nn/moe_layer.h"

namespace moelab::models {

struct ModelOutput {
  at::Tensor logits;                        // (B, classes) or the task's output
  at::Tensor aux_loss;                      // () sum of every MoE layer's weighted aux loss
  std::vector<nn::MoEOutput> moe_layers;    // one per MoE layer, in depth order
};

struct ModelCost {
  int64_t parameters_total = 0;
  int64_t parameters_active = 0;  // used for one sample: shared parts + k experts per MoE layer
  int64_t flops_per_sample = 0;   // 2 x multiply-adds of the linear maps, forward only
};

class Model : public torch::nn::Module {
 public:
  virtual ModelOutput forward(const at::Tensor& input) = 0;
  virtual ModelCost cost() const = 0;
};

}  // namespace moelab::models
