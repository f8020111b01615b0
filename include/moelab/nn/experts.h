// Experts: the computation applied to each expert's contiguous slice of the dispatched rows.
//
// Legend: S dispatched rows (sorted by expert), D model width, F expert hidden width, E experts.
//
// FFNExperts stacks the weights of E feed-forward experts, per expert in torch::nn::Linear's
// (out, in) layout: w_in (E, P * F, D) and w_out (E, D, F), P = 2 for gated experts, whose rows
// [0, F) are the gate projection W1 and rows [F, 2F) the up projection W3 (fused as in HF's
// gate_up_proj: one GEMM per expert instead of two, and one for the input gradient). They run
// through one autograd function whose backward is written by hand: per-expert GEMMs into
// preallocated buffers, elementwise work in one pass over all rows, nothing at all for an expert
// with no rows.
// ModuleExperts runs any torch::nn modules as experts, each only on its own rows.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <vector>

#include "moelab/nn/activation.h"

namespace moelab::nn {

struct FFNExpertsOptions {
  FFNExpertsOptions(int64_t d_model, int64_t d_ff, int64_t num_experts)
      : d_model_(d_model), d_ff_(d_ff), num_experts_(num_experts) {}
  /// Input and output width D, >= 1.
  TORCH_ARG(int64_t, d_model);
  /// Hidden width F of each expert, >= 1.
  TORCH_ARG(int64_t, d_ff);
  /// Number of experts E, >= 1.
  TORCH_ARG(int64_t, num_experts);
  /// Non-linearity; SwiGLU adds w3. Default SwiGLU.
  TORCH_ARG(Activation, activation) = Activation::kSwiGLU;
  /// Per-expert biases b_in, b_out. Default off.
  TORCH_ARG(bool, bias) = false;
};

/// y = grouped FFN over rows sorted by expert; counts[e] rows belong to expert e.
/// x: (S, D); w_in: (E, P * F, D); w_out: (E, D, F); b_in: (E, P * F) and b_out: (E, D), both or
/// neither (undefined). Returns (S, D). Differentiable in x and every weight.
at::Tensor grouped_ffn(const at::Tensor& x, const std::vector<int64_t>& counts,
                       const at::Tensor& w_in, const at::Tensor& w_out, const at::Tensor& b_in,
                       const at::Tensor& b_out, Activation activation);

class FFNExpertsImpl : public torch::nn::Cloneable<FFNExpertsImpl> {
 public:
  FFNExpertsImpl(int64_t d_model, int64_t d_ff, int64_t num_experts)
      : FFNExpertsImpl(FFNExpertsOptions(d_model, d_ff, num_experts)) {}
  explicit FFNExpertsImpl(FFNExpertsOptions options);

  void reset() override;
  /// Each expert as torch::nn::Linear would be: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  /// x: (S, D) rows sorted by expert, counts: (E) rows per expert -> (S, D).
  at::Tensor forward(const at::Tensor& x, const std::vector<int64_t>& counts);

  /// Multiply-adds per row of one expert (for FLOP counts).
  int64_t macs_per_row() const;

  /// Expert e's gate (gated) or only (ungated) input projection W1, (F, D), a view of w_in.
  at::Tensor gate_weight(int64_t expert) const;
  /// Expert e's up projection W3, (F, D), a view of w_in; gated experts only.
  at::Tensor up_weight(int64_t expert) const;

  FFNExpertsOptions options;
  at::Tensor w_in, w_out, b_in, b_out;  // b_* only with bias
};
TORCH_MODULE(FFNExperts);

/// Any modules as experts: expert e maps its rows (n, ...) to (n, ...out). All experts must give
/// the same trailing output shape.
class ModuleExpertsImpl : public torch::nn::Cloneable<ModuleExpertsImpl> {
 public:
  ModuleExpertsImpl() = default;
  explicit ModuleExpertsImpl(std::vector<torch::nn::AnyModule> experts);

  void reset() override;

  /// x: (S, ...) rows sorted by expert, counts: (E) -> (S, ...out). An expert with no rows is
  /// not called (but the first expert sees an empty batch when S = 0, to learn the output shape).
  /// On a CPU with several threads, experts run side by side, one thread each (an expert too
  /// big to share evenly runs on every thread first), forward and backward, unless they hold
  /// dropout and are training (their random numbers would be drawn in another order); the result
  /// does not depend on the order. No double backward through experts run side by side.
  at::Tensor forward(const at::Tensor& x, const std::vector<int64_t>& counts);

  /// Rows each expert was called on in the last forward (tests and analysis).
  const std::vector<int64_t>& last_rows_per_expert() const { return last_rows_; }

  int64_t num_experts() const { return static_cast<int64_t>(experts_.size()); }
  torch::nn::AnyModule& expert(int64_t e) { return experts_.at(e); }

 private:
  at::Tensor forward_in_turn(const at::Tensor& x, const std::vector<int64_t>& counts);
  at::Tensor forward_side_by_side(const at::Tensor& x, const std::vector<int64_t>& counts);

  std::vector<torch::nn::AnyModule> experts_;
  std::vector<int64_t> last_rows_;
  bool draws_random_numbers_ = false;
};
TORCH_MODULE(ModuleExperts);

}  // namespace moelab::nn
