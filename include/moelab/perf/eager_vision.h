// The vision study's models as a user would write them in eager LibTorch, without moelab: the
// reference `moelab bench train --eager-reference` measures vision_moe and cnn runs against.
// Same sizes and maths: the CNN expert (conv3x3-ReLU-maxpool stages, a hidden layer), the tiny
// CNN router, softmax top-k routing (renormalised or not), Switch's load-balancing loss, AdamW;
// written as Hugging Face's Mixtral routes: for each expert, the images that chose it,
// index_select, the expert, scaled by the gate, index_add. torch::nn modules, autograd
// everywhere, LibTorch's own max_pool2d and relu.
#pragma once

#include <cstdint>

namespace moelab::perf {

struct EagerVisionOptions {
  int64_t in_channels = 1;
  int64_t image_size = 28;
  int64_t num_classes = 10;
  /// The CNN: stage s has round(width * width_multiplier * 2^s) channels; hidden units
  /// round(hidden * width_multiplier) (0: none).
  int64_t width = 16;
  int64_t depth = 2;
  int64_t hidden = 64;
  double width_multiplier = 1.0;
  int64_t num_experts = 4;  // 0: the dense CNN alone
  int64_t top_k = 1;
  bool normalize_weights = false;
  int64_t router_width = 8;
  double load_balance = 0.0;
  double lr = 2e-3;
  double weight_decay = 1e-4;
  int64_t batch_size = 128;
  uint64_t seed = 0;
};

/// Milliseconds per training step over `steps` AdamW steps (after `warmup`) on one batch of
/// random images.
double eager_vision_train_ms_per_step(const EagerVisionOptions& options, int64_t steps, int64_t warmup);

}  // namespace moelab::perf
