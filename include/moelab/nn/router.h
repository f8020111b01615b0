// The router: scores tokens against experts and decides which experts each token goes to.
// One module, the kind chosen by name, so configs and checkpoints treat every router alike.
//
// Legend: N tokens, D model width, E experts, k experts per token, C tokens per expert.
//
// Kinds and their papers:
//   top_k        softmax(logits / T), top k, optional renormalisation (GShard, Mixtral)
//   noisy_top_k  learned Gaussian noise on the logits in training (Shazeer et al. 2017)
//   switch       top 1, optional multiplicative input jitter in training (Fedus et al. 2021)
//   aux_free     sigmoid (or softmax) scores, a per-expert bias that only chooses (DeepSeek-V3)
//   group_limited  top groups of experts, then top k inside them (DeepSeek-V2)
//   expert_choice  each expert takes its top C tokens (Zhou et al. 2022)
//   random, hash   baselines without a learned gate (Roller et al. 2021 for hash)
//   uniform      every token to experts 0 .. k-1 at weight 1/k (no gate: the "no routing" baseline)
// The score network is a Linear(D, E) without bias, or any module mapping (N, ...) -> (N, E)
// (the vision MoE's tiny CNN).
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/common.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <ATen/core/Generator.h>

#include <string>

namespace moelab::nn {

enum class RouterKind {
  kTopK,
  kNoisyTopK,
  kSwitch,
  kAuxFree,
  kGroupLimited,
  kExpertChoice,
  kRandom,
  kHash,
  kUniform
};

/// Parses the names above ("top_k", "noisy_top_k", ...); throws listing them otherwise.
RouterKind parse_router_kind(const std::string& name);
std::string to_string(RouterKind kind);
/// True for kinds whose scores come from a learned gate (not random, not hash).
bool has_learned_gate(RouterKind kind);

/// How aux_free turns logits into scores (Megatron-Core's moe_router_score_function).
enum class ScoreFunction { kSigmoid, kSoftmax };
ScoreFunction parse_score_function(const std::string& name);  // "sigmoid" | "softmax"
std::string to_string(ScoreFunction function);

struct RouterOptions {
  RouterOptions(int64_t d_model, int64_t num_experts)
      : d_model_(d_model), num_experts_(num_experts) {}
  /// Input width D of the default linear gate (0 allowed only with a custom gate network).
  TORCH_ARG(int64_t, d_model);
  /// Number of experts E, >= 1.
  TORCH_ARG(int64_t, num_experts);
  /// Routing algorithm. Default top_k.
  TORCH_ARG(RouterKind, kind) = RouterKind::kTopK;
  /// Experts per token k, in [1, E]. For expert_choice, the k in C = capacity_factor * k * N / E.
  TORCH_ARG(int64_t, top_k) = 1;
  /// Logits are divided by this before softmax/sigmoid; > 0. Below 1 sharpens. Default 1.
  TORCH_ARG(double, temperature) = 1.0;
  /// Divide each token's k weights by their sum (top_k, group_limited, aux_free). Default off,
  /// except that noisy_top_k always renormalises (softmax over the kept logits).
  TORCH_ARG(bool, normalize_weights) = false;
  /// switch: inputs multiplied by U(1 - eps, 1 + eps) in training; 0 = off. Default 0.
  TORCH_ARG(double, jitter_eps) = 0.0;
  /// aux_free: bias step size per update(), bias_i += rate * sign(mean load - load_i). Default 1e-3.
  TORCH_ARG(double, bias_update_rate) = 1e-3;
  /// aux_free: sigmoid scores (DeepSeek-V3), or softmax scores, which compete across experts and
  /// so give a hard top-1 gate a gradient towards the better expert. Default sigmoid.
  TORCH_ARG(ScoreFunction, score_function) = ScoreFunction::kSigmoid;
  /// Expert groups G for group_limited (also allowed with aux_free); must divide E. Default 1.
  TORCH_ARG(int64_t, num_groups) = 1;
  /// Groups kept per token, in [1, num_groups]. Default 1.
  TORCH_ARG(int64_t, topk_groups) = 1;
  /// expert_choice: C = ceil(capacity_factor * k * N / E) tokens per expert; > 0. Default 1.
  TORCH_ARG(double, capacity_factor) = 1.0;
  /// random: seed of the router's own generator (same seed, same routing). Default 0.
  TORCH_ARG(uint64_t, seed) = 0;
};

/// What the router decided for one batch. Token-choice kinds fill indices/weights; expert_choice
/// fills expert_tokens/expert_weights instead.
struct RouterOutput {
  at::Tensor logits;          // (N, E) scores before softmax/sigmoid, temperature applied;
                              // undefined for random and hash
  at::Tensor probs;           // (N, E) routing distribution (rows sum to 1); undefined likewise
  at::Tensor indices;         // (N, k) int64 chosen experts, best first
  at::Tensor weights;         // (N, k) combine weights, differentiable into the gate
  at::Tensor expert_tokens;   // (E, C) int64, expert_choice only
  at::Tensor expert_weights;  // (E, C), expert_choice only
  at::Tensor load;            // (E) smooth load estimate (noisy_top_k in training), else undefined
  bool is_expert_choice() const { return expert_tokens.defined(); }
};

class RouterImpl : public torch::nn::Cloneable<RouterImpl> {
 public:
  RouterImpl(int64_t d_model, int64_t num_experts)
      : RouterImpl(RouterOptions(d_model, num_experts)) {}
  explicit RouterImpl(RouterOptions options);
  /// With a custom score network mapping inputs (N, ...) to logits (N, E).
  RouterImpl(RouterOptions options, torch::nn::AnyModule gate_network);

  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  /// x: (N, D) (or what the custom gate network takes, batch first). token_ids: (N) integers,
  /// required by the hash router and ignored by the others.
  RouterOutput forward(const at::Tensor& x, const at::Tensor& token_ids = {});

  /// aux_free: moves the selection bias towards balance using the load counted since the last
  /// call (in training mode), then clears the count. Call after each optimiser step. The step is
  /// bias_update_rate * rate_scale; the trainer passes lr / peak lr, so the bias settles as the
  /// schedule anneals (DeepSeek-V3 stops the updates for its last tokens) instead of swinging
  /// the load between near-tied experts once the router has stopped learning. A no-op for the
  /// other kinds.
  void update_bias(double rate_scale = 1.0);

  RouterOptions options;
  torch::nn::Linear gate{nullptr};
  torch::nn::AnyModule gate_network;  // used instead of `gate` when given
  torch::nn::Linear noise{nullptr};   // noisy_top_k: per-expert noise scale, softplus(x W_noise)
  at::Tensor expert_bias;             // (E) aux_free selection bias (buffer "expert_bias")
  at::Tensor load_count;              // (E) aux_free tokens per expert since update_bias()
  // random: the generator's state as a buffer, so checkpoints and clones carry it and a resumed
  // run draws the same routes.
  at::Tensor generator_state;

 protected:
  FORWARD_HAS_DEFAULT_ARGS({1, torch::nn::AnyValue(at::Tensor())})

 private:
  at::Tensor score_logits(const at::Tensor& x);
  at::Generator generator_;
};
TORCH_MODULE(Router);

}  // namespace moelab::nn
