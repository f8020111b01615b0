#include "moelab/nn/aux_losses.h"

namespace moelab::nn {

namespace {
at::Tensor zero_like_scalar(const at::Tensor& t) { return at::zeros({}, t.options()); }
}  // namespace

at::Tensor load_balance_loss(const at::Tensor& probs, const at::Tensor& assignment_counts) {
  TORCH_CHECK(probs.dim() == 2, "load_balance_loss: probs must be (N, E), got ", probs.sizes());
  const int64_t num_experts = probs.size(1);
  TORCH_CHECK(assignment_counts.numel() == num_experts, "load_balance_loss: counts has ",
              assignment_counts.numel(), " entries for ", num_experts, " experts");
  if (probs.size(0) == 0) return zero_like_scalar(probs);
  at::Tensor counts = assignment_counts.to(probs.options());
  at::Tensor fraction = counts / counts.sum().clamp_min(1);
  return num_experts * (fraction * probs.mean(0)).sum();
}

at::Tensor cv_squared(const at::Tensor& values) {
  if (values.numel() <= 1) return at::zeros({}, values.options());
  return values.var() / (values.mean().pow(2) + 1e-10);
}

at::Tensor importance_load_loss(const at::Tensor& importance, const at::Tensor& load) {
  return cv_squared(importance) + cv_squared(load.to(importance.options()));
}

at::Tensor usage_mse_loss(const at::Tensor& probs) {
  TORCH_CHECK(probs.dim() == 2, "usage_mse_loss: probs must be (N, E), got ", probs.sizes());
  if (probs.size(0) == 0) return zero_like_scalar(probs);
  return (probs.mean(0) - 1.0 / static_cast<double>(probs.size(1))).pow(2).mean();
}

at::Tensor routing_entropy(const at::Tensor& probs) {
  TORCH_CHECK(probs.dim() == 2, "routing_entropy: probs must be (N, E), got ", probs.sizes());
  if (probs.size(0) == 0) return zero_like_scalar(probs);
  // 0 log 0 = 0; the clamp keeps the gradient finite at p = 0.
  return -(probs * probs.clamp_min(1e-20).log()).sum(-1).mean();
}

at::Tensor router_z_loss(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2, "router_z_loss: logits must be (N, E), got ", logits.sizes());
  if (logits.size(0) == 0) return zero_like_scalar(logits);
  return at::logsumexp(logits, -1).pow(2).mean();
}

at::Tensor distribution_entropy(const at::Tensor& weights) {
  at::Tensor w = weights.to(at::kDouble);
  const double total = w.sum().item<double>();
  if (total <= 0) return at::zeros({}, w.options());
  at::Tensor p = w / total;
  return -(p * p.clamp_min(1e-300).log()).sum();
}

}  // namespace moelab::nn
