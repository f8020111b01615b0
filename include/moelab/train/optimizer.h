// The optimiser a run trains with: AdamW or SGD over the model's trainable parameters, split
// into parameter groups by name pattern, each with its own learning rate and weight decay.
//
//   train.optimizer.groups:
//     - {match: "*.bias", weight_decay: 0}          # fnmatch patterns on parameter names
//     - {match: "*router*", lr: 1.0e-4}
//     - {match: "embed*", frozen: true}             # excluded and reported, not trained
//
// A parameter joins the first group whose pattern matches its name, else the default group
// (the optimizer's own lr and weight_decay). Parameters that do not require a gradient (frozen
// by a model, e.g. a LoRA base) are never handed to the optimiser. The schedule scales every
// group's rate alike (learning_rate_at with the group's rate as its base).
#pragma once

#include <torch/arg.h>
#include <torch/nn/module.h>

#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "moelab/train/schedule.h"

namespace torch::optim {
class Optimizer;
}
namespace YAML {
class Node;
}

namespace moelab::train {

struct ParamGroupOptions {
  /// fnmatch pattern on the parameter's full name ("moe0.router.*", "*.bias"). Required.
  TORCH_ARG(std::string, match) = "";
  /// Learning rate of the group; < 0 = the optimizer's lr. Default -1.
  TORCH_ARG(double, lr) = -1.0;
  /// Weight decay of the group; < 0 = the optimizer's weight_decay. Default -1.
  TORCH_ARG(double, weight_decay) = -1.0;
  /// Freeze the matched parameters (requires_grad off; not trained). Default false.
  TORCH_ARG(bool, frozen) = false;
};

struct OptimizerOptions {
  /// adamw (decoupled weight decay) or sgd. Default adamw.
  TORCH_ARG(std::string, name) = "adamw";
  /// Base learning rate, > 0. Default 1e-3.
  TORCH_ARG(double, lr) = 1e-3;
  /// Weight decay (decoupled for adamw), >= 0. Default 0.
  TORCH_ARG(double, weight_decay) = 0.0;
  /// sgd momentum, >= 0. Default 0.9.
  TORCH_ARG(double, momentum) = 0.9;
  /// sgd Nesterov momentum. Default false.
  TORCH_ARG(bool, nesterov) = false;
  /// adamw betas and epsilon, betas in [0, 1), eps > 0. Defaults 0.9, 0.999, 1e-8.
  TORCH_ARG(double, beta1) = 0.9;
  TORCH_ARG(double, beta2) = 0.999;
  TORCH_ARG(double, eps) = 1e-8;
  /// Parameter groups by name pattern (see above). Default none: one group.
  TORCH_ARG(std::vector<ParamGroupOptions>, groups);
};

YAML::Node to_yaml(const ParamGroupOptions& options);
void from_yaml(const YAML::Node& node, ParamGroupOptions& options, const std::string& where);
YAML::Node to_yaml(const OptimizerOptions& options);
void from_yaml(const YAML::Node& node, OptimizerOptions& options, const std::string& where);

/// ConfigError naming `where`.KEY for the first option out of range.
void validate(const OptimizerOptions& options, const std::string& where);

struct ParamGroupReport {
  std::string match;  // "" for the default group
  double lr = 0, weight_decay = 0;
  std::vector<std::string> parameters;
  int64_t scalars = 0;
};

struct OptimizerSetup {
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  /// The groups handed to the optimiser, in its order (empty groups are left out).
  std::vector<ParamGroupReport> groups;
  /// Parameters left out because they are frozen.
  std::vector<std::string> frozen;
  int64_t frozen_scalars = 0;

  /// Sets every group's rate for optimiser step `step`.
  void set_learning_rate(int64_t step, int64_t total_steps, const ScheduleOptions& schedule);
  /// One line per group and one for the frozen parameters.
  std::string describe() const;
};

/// Freezes what the groups say, then builds the optimiser over `model`'s trainable parameters.
/// ConfigError if nothing is left to train. AdamW is LibTorch's torch::optim::AdamW (its state,
/// checkpoints and options) with the update of each float32 parameter fused into one pass over
/// its four arrays (LibTorch 1.13's makes nine passes; 31 ms of a 590 ms language-model step).
OptimizerSetup build_optimizer(torch::nn::Module& model, const OptimizerOptions& options);

/// A parameter's key in an optimiser's state: its TensorImpl's address as text in LibTorch 1.x,
/// the address itself from 2.0.
template <typename States>
typename States::key_type optimizer_state_key(const States&, const at::Tensor& param) {
  if constexpr (std::is_same_v<typename States::key_type, std::string>) {
    return c10::str(param.unsafeGetTensorImpl());
  } else {
    return param.unsafeGetTensorImpl();
  }
}

}  // namespace moelab::train
