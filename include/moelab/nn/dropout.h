// Dropout whose mask costs a few nanoseconds per element. LibTorch's CPU dropout draws each mask
// element through bernoulli_ from the locked global generator (no MKL in Debian's build): on the
// CheMoE experts' (B x G, 256) activations that was half of a training step (measured
// 2026-11-27: 175 of 335 ms). Here the global generator gives one 64-bit seed per call (so
// checkpoints, which save that generator, still resume exactly); element i's bits are a hash of
// (seed, i), the same for any thread count, and the loop vectorises. The output is written in one pass and the mask is never stored: backward draws it
// again from the seed (as fused GPU dropout kernels do with Philox).
//
// Same semantics as at::dropout: in training, each element is zeroed with probability p and
// the rest scaled by 1 / (1 - p); differentiable (the gradient is the mask); identity otherwise.
#pragma once

#include <ATen/ATen.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

namespace moelab::nn {

/// x (any shape, float32/float64/bfloat16) -> x * mask / (1 - p) in training; x itself when not
/// training or p == 0. p in [0, 1).
at::Tensor dropout(const at::Tensor& x, double p, bool training);

/// The mask alone, (numel) of {0, 1 / (1 - p)} in `dtype`, from `seed` (tests; dropout uses it).
at::Tensor dropout_mask(int64_t numel, double p, uint64_t seed, at::ScalarType dtype);

/// nn::dropout as a module, in place of torch::nn::Dropout (no parameters: swapping one for the
/// other leaves checkpoints unchanged).
class DropoutImpl : public torch::nn::Cloneable<DropoutImpl> {
 public:
  explicit DropoutImpl(double p = 0.5);
  void reset() override {}
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x) { return nn::dropout(x, p, is_training()); }
  double p;
};
TORCH_MODULE(Dropout);

}  // namespace moelab::nn
