#include "moelab/models/model.h"

#include <torch/torch.h>

namespace moelab::models {

void copy_state(const torch::nn::Module& from, torch::nn::Module& to) {
  torch::NoGradGuard no_grad;
  auto target_parameters = to.named_parameters();
  for (const auto& item : from.named_parameters()) {
    target_parameters[item.key()].copy_(item.value());
    target_parameters[item.key()].set_requires_grad(item.value().requires_grad());
  }
  auto target_buffers = to.named_buffers();
  for (const auto& item : from.named_buffers()) target_buffers[item.key()].copy_(item.value());
  to.train(from.is_training());
}

}  // namespace moelab::models
