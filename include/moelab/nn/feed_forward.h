// The dense position-wise feed-forward block: W2 act(W1 x) or, gated, W2 (silu(W1 x) * W3 x).
// It is the shared expert of the MoE layer, the dense baseline of every study, and the reference
// the MoE fast path is benchmarked against. Plain torch::nn::Linear composition, autograd by ATen.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "moelab/nn/activation.h"

namespace moelab::nn {

struct FeedForwardOptions {
  FeedForwardOptions(int64_t d_model, int64_t d_ff) : d_model_(d_model), d_ff_(d_ff) {}
  /// Width of the input and output, >= 1.
  TORCH_ARG(int64_t, d_model);
  /// Hidden width, >= 1.
  TORCH_ARG(int64_t, d_ff);
  /// Non-linearity; SwiGLU adds the gate projection w3. Default SwiGLU.
  TORCH_ARG(Activation, activation) = Activation::kSwiGLU;
  /// Biases on the projections. Default off (as in Mixtral, LLaMA).
  TORCH_ARG(bool, bias) = false;
};

class FeedForwardImpl : public torch::nn::Cloneable<FeedForwardImpl> {
 public:
  FeedForwardImpl(int64_t d_model, int64_t d_ff)
      : FeedForwardImpl(FeedForwardOptions(d_model, d_ff)) {}
  explicit FeedForwardImpl(FeedForwardOptions options);

  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  /// x: (..., D) -> (..., D).
  at::Tensor forward(const at::Tensor& x);

  FeedForwardOptions options;
  torch::nn::Linear w1{nullptr}, w2{nullptr}, w3{nullptr};  // w3 only when gated
};
TORCH_MODULE(FeedForward);

}  // namespace moelab::nn
