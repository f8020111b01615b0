// Auxiliary routing losses as plain functions of the router's outputs. Each returns a 0-d tensor,
// differentiable where the paper's loss is, and 0 for an empty batch.
//
// Legend: N tokens, E experts, k experts per token.
#pragma once

#include <ATen/ATen.h>
#include <torch/arg.h>

namespace moelab::nn {

/// Weights of the auxiliary losses added to the MoE layer's aux_loss; 0 turns a term off (it is
/// still reported, without gradient).
struct AuxLossOptions {
  /// Switch/GShard load balance, E * sum_i f_i * P_i. Typical 1e-2. Default 0.
  TORCH_ARG(double, load_balance) = 0.0;
  /// Shazeer's CV^2(importance) + CV^2(load). Typical 1e-2. Default 0.
  TORCH_ARG(double, importance_load) = 0.0;
  /// CheMoE's mean squared error of expert usage against uniform. Default 0.
  TORCH_ARG(double, usage_mse) = 0.0;
  /// Mean per-token routing entropy. Positive sharpens routing, negative spreads it. Default 0.
  TORCH_ARG(double, entropy) = 0.0;
  /// ST-MoE router z-loss, mean logsumexp(logits)^2. Typical 1e-3. Default 0.
  TORCH_ARG(double, z_loss) = 0.0;
};

/// Switch Transformer / GShard: E * sum_i f_i * P_i, where f_i is the fraction of the N * k
/// assignments that chose expert i (before capacity) and P_i the mean router probability of i.
/// Equals 1 for perfectly uniform routing. probs: (N, E); assignment_counts: (E).
at::Tensor load_balance_loss(const at::Tensor& probs, const at::Tensor& assignment_counts);

/// Squared coefficient of variation, var / mean^2 with the unbiased variance (as Shazeer et al.
/// 2017's code); 0 for fewer than two entries.
at::Tensor cv_squared(const at::Tensor& values);

/// Shazeer et al. 2017: CV^2 of importance (sum over tokens of each expert's combine weight) plus
/// CV^2 of load (tokens per expert, or the smooth noisy estimate). Both (E).
at::Tensor importance_load_loss(const at::Tensor& importance, const at::Tensor& load);

/// CheMoE: mean over experts of (mean_t probs[t, i] - 1/E)^2. probs: (N, E).
at::Tensor usage_mse_loss(const at::Tensor& probs);

/// Mean over tokens of -sum_i p log p (nats). probs: (N, E). The loss adds +weight * this, so a
/// positive weight rewards confident routing and a negative one rewards spreading.
at::Tensor routing_entropy(const at::Tensor& probs);

/// ST-MoE (Zoph et al. 2022): mean over tokens of logsumexp(logits)^2. logits: (N, E).
at::Tensor router_z_loss(const at::Tensor& logits);

/// Entropy (nats) of a distribution given as non-negative weights that need not sum to 1.
at::Tensor distribution_entropy(const at::Tensor& weights);

}  // namespace moelab::nn
