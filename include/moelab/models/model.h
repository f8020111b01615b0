// What every moelab model is to the trainer and the tools: a torch::nn::Module whose forward
// takes a batch of named tensors and returns task outputs plus the MoE side channel (aux loss
// terms, per-layer routing statistics), which can state its own size and cost, and which can be
// deep-copied (a federated client or a data-parallel rank trains its own copy).
#pragma once

#include <torch/nn/module.h>

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

#include "moelab/data/batch.h"
#include "moelab/nn/moe_layer.h"

namespace moelab::models {

/// A weighted loss term a model adds of its own (besides its MoE layers' terms).
struct ModelAuxTerm {
  std::string name;
  at::Tensor value;  // () unweighted
  double weight = 0;
};

struct ModelOutput {
  at::Tensor outputs;                      // (B, classes) logits, (B, outputs) predictions, ...
  at::Tensor aux_loss;                     // () every weighted aux term summed (layers + model)
  std::vector<nn::MoEOutput> moe_layers;   // one per MoE layer, in depth order
  std::vector<ModelAuxTerm> model_terms;   // the model's own terms, logged by name
  /// A language model given targets leaves `outputs` (logits) undefined and hands the task its
  /// final hidden states (B, L, D) and output projection (V, D) instead, for the fused
  /// projection + cross-entropy (nn/linear_cross_entropy.h).
  at::Tensor hidden, output_weight;
};

struct ModelCost {
  int64_t parameters_total = 0;
  int64_t parameters_active = 0;  // used for one sample: shared parts + k experts per MoE layer
  int64_t flops_per_sample = 0;   // 2 x multiply-adds of the linear maps, forward only
};

class Model : public torch::nn::Module {
 public:
  /// Reads what it needs from `batch` (at least data::kInputs); a padding mask and token ids,
  /// when the batch has them, reach every MoE layer.
  virtual ModelOutput forward(const data::Batch& batch) = 0;
  virtual ModelCost cost() const = 0;
  /// An independent copy: same structure, options, parameter and buffer values and mode; no
  /// storage is shared, so training the copy leaves this model unchanged.
  virtual std::shared_ptr<Model> deep_copy() const = 0;

  /// Sizes the options leave to rounding or derivation (e.g. channels after a width
  /// multiplier), by name, for exports: a user rebuilding the model needs no guess. Default none.
  virtual nlohmann::json resolved_sizes() const { return nlohmann::json::object(); }

  /// forward() on a batch holding only `inputs`.
  ModelOutput forward_inputs(const at::Tensor& inputs) {
    return forward(data::Batch({{data::kInputs, inputs}}));
  }
};

/// Copies every parameter's and buffer's values from `from` into `to` (same names and shapes)
/// and the training mode.
void copy_state(const torch::nn::Module& from, torch::nn::Module& to);

/// The deep_copy every model built from its `options` member shares: Derived(options) with the
/// state copied over.
template <typename Derived>
class ModelBase : public Model {
 public:
  std::shared_ptr<Model> deep_copy() const override {
    auto copy = std::make_shared<Derived>(static_cast<const Derived&>(*this).options);
    copy_state(*this, *copy);
    return copy;
  }
};

}  // namespace moelab::models
