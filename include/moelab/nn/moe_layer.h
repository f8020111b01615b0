// The Mixture-of-Experts layer: router -> dispatch -> experts -> weighted combine, plus optional
// always-on shared experts, auxiliary losses and routing statistics. Drop-in for a dense FFN:
// (..., D) in, (..., D) out, leading dimensions flattened into N tokens.
//
// Legend: N tokens, D model width, F expert hidden width, E experts, k experts per token.
//
// Shared experts follow DeepSeekMoE (one dense FFN of width num_shared_experts * shared_d_ff
// added to every token's routed output), optionally gated by sigmoid(x w_gate) as in Qwen2-MoE.
// A padding mask removes tokens before routing: they are neither routed nor counted by any loss
// or statistic, and their output is zero.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/common.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <map>
#include <string>
#include <vector>

#include "moelab/nn/aux_losses.h"
#include "moelab/nn/dispatch.h"
#include "moelab/nn/experts.h"
#include "moelab/util/collective.h"
#include "moelab/nn/feed_forward.h"
#include "moelab/nn/router.h"

namespace moelab::nn {

struct MoELayerOptions {
  /// The common case: d_model D, expert width F, E experts; refine through the nested options,
  /// e.g. options.router().top_k(2).
  MoELayerOptions(int64_t d_model, int64_t d_ff, int64_t num_experts)
      : router_(d_model, num_experts), experts_(d_model, d_ff, num_experts) {}
  int64_t d_model() const { return router_.d_model(); }
  int64_t num_experts() const { return router_.num_experts(); }

  /// Routing; its d_model and num_experts must match the experts'.
  TORCH_ARG(RouterOptions, router);
  /// The routed FFN experts (ignored when the layer is built from expert modules).
  TORCH_ARG(FFNExpertsOptions, experts);
  /// Dropless or capacity-limited dispatch. Default dropless.
  TORCH_ARG(DispatchOptions, dispatch);
  /// Auxiliary loss weights. Default all 0.
  TORCH_ARG(AuxLossOptions, aux);
  /// Always-on shared experts, >= 0. Default 0.
  TORCH_ARG(int64_t, num_shared_experts) = 0;
  /// Hidden width of one shared expert; 0 = the routed experts' d_ff. Default 0.
  TORCH_ARG(int64_t, shared_d_ff) = 0;
  /// Scale the shared output by a learned per-token sigmoid gate. Default off.
  TORCH_ARG(bool, shared_gate) = false;
};

/// Unweighted value of every auxiliary term by name (0-d tensors; with gradient where its
/// weight != 0).
using AuxLossTerms = std::map<std::string, at::Tensor>;

/// One auxiliary routing loss: its name (the key of its weight under `aux` in a config, and the
/// name it is logged by), its weight in AuxLossOptions, and how the layer computes it. The layer,
/// the config and the logs all go through aux_term_registry(): a new term is one entry there
/// plus its weight field.
struct AuxTermInfo {
  const char* key;
  double& (*weight)(AuxLossOptions& options);
  at::Tensor (*compute)(const RouterOutput& routing, const DispatchPlan& plan,
                        const at::TensorOptions& options);
  double weight_in(const AuxLossOptions& options) const {
    return weight(const_cast<AuxLossOptions&>(options));
  }
};
const std::vector<AuxTermInfo>& aux_term_registry();

/// What the layer did with one batch, detached from autograd. Per-token fields cover all N input
/// tokens; masked tokens have index -1 and weight 0.
struct RoutingStats {
  int64_t num_tokens = 0;           // tokens routed (not masked)
  at::Tensor tokens_per_expert;     // (E) int64 slots each expert computed
  at::Tensor usage;                 // (E) fraction of computed slots per expert
  at::Tensor gate_mass;             // (E) combine weight per expert, summed, / num_tokens
  at::Tensor token_entropy;         // () mean per-token routing entropy, nats (0 w/o a gate)
  at::Tensor usage_entropy;         // () entropy of `usage`, nats (log E = perfectly even)
  double dropped_fraction = 0.0;    // slots removed by capacity / slots assigned
  at::Tensor indices;               // (N, k) int64 chosen experts; expert choice: (N, E)
  at::Tensor weights;               // same shape, combine weights
  at::Tensor kept;                  // same shape, bool: computed (not dropped, not masked)
};

struct MoEOutput {
  at::Tensor output;    // same shape as the input
  at::Tensor aux_loss;  // () sum of weight * term over the terms with weight != 0
  AuxLossTerms aux_terms;
  RoutingStats stats;
};

/// What a routing did (everything but indices, weights and kept, which the caller sets): the
/// statistics every MoE layer reports, for a model that routes with its own gate (CheMoE routes
/// whole samples) and plans with plan_token_choice.
RoutingStats routing_stats(const RouterOutput& routing, const DispatchPlan& plan);

/// Scalars in a module's parameters (frozen ones included). The one count every model's cost
/// and the tools use.
int64_t count_parameters(const torch::nn::Module& module);

class MoELayerImpl : public torch::nn::Cloneable<MoELayerImpl> {
 public:
  MoELayerImpl(int64_t d_model, int64_t d_ff, int64_t num_experts)
      : MoELayerImpl(MoELayerOptions(d_model, d_ff, num_experts)) {}
  explicit MoELayerImpl(MoELayerOptions options);
  /// With arbitrary expert modules, each mapping (n, D) -> (n, D); options.experts() is unused
  /// except for its d_model.
  MoELayerImpl(MoELayerOptions options, std::vector<torch::nn::AnyModule> expert_modules);
  /// With expert modules and a custom router score network mapping (n, D) to logits (n, E).
  /// Expert modules may change the width: (n, D) -> (n, out), and the layer returns (..., out).
  MoELayerImpl(MoELayerOptions options, std::vector<torch::nn::AnyModule> expert_modules,
               torch::nn::AnyModule gate_network);

  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  /// x: (..., D). padding_mask: x's leading shape, true/nonzero = a real token (optional).
  /// token_ids: x's leading shape, integers, for the hash router (optional).
  MoEOutput forward(const at::Tensor& x, const at::Tensor& padding_mask = {},
                    const at::Tensor& token_ids = {});

  /// aux_free routers: apply the bias update (Router::update_bias); call after each optimiser
  /// step.
  void update_routing_bias(double rate_scale = 1.0) { router->update_bias(rate_scale); }

  /// Expert parallelism (expert_parallel.h): keeps only this rank's E/W routed experts (rank r:
  /// [r * E/W, (r + 1) * E/W), sliced from the ones it holds, so ranks that built the layer from
  /// one seed hold the single-process layer's experts between them); from then on every forward
  /// exchanges rows with the group's other ranks, which must run the layer together. FFN experts
  /// only; E a multiple of W. Clone a layer before sharding it, not after.
  void shard_experts(std::shared_ptr<Collective> group);
  /// The group the experts are sharded over; null when this process holds them all.
  const std::shared_ptr<Collective>& expert_group() const { return expert_group_; }

  /// Parameters used for one token: router, shared experts and k routed experts (expert choice:
  /// capacity_factor * k on average).
  int64_t active_parameters() const;
  /// Multiply-adds for one token under the same counting (router + shared + k experts).
  int64_t active_macs_per_token() const;

  MoELayerOptions options;
  Router router{nullptr};
  FFNExperts experts{nullptr};
  ModuleExperts module_experts{nullptr};
  FeedForward shared{nullptr};
  torch::nn::Linear shared_gate{nullptr};

 protected:
  FORWARD_HAS_DEFAULT_ARGS({1, torch::nn::AnyValue(at::Tensor())},
                           {2, torch::nn::AnyValue(at::Tensor())})

 private:
  std::vector<torch::nn::AnyModule> expert_modules_;
  torch::nn::AnyModule gate_network_;
  std::shared_ptr<Collective> expert_group_;
};
TORCH_MODULE(MoELayer);

}  // namespace moelab::nn
