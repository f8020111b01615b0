// Stateless routing maths: how scores become expert choices. The Router module owns parameters
// and calls these; tests call them directly on hand-made scores.
//
// Legend: N tokens, E experts, k experts chosen per token, G expert groups, C tokens per expert.
//
// References: Shazeer et al. 2017 (noisy top-k, smooth load estimator); Fedus et al. 2021 (Switch);
// DeepSeek-V2/V3 (group-limited routing, aux-loss-free bias); Zhou et al. 2022 (expert choice);
// Roller et al. 2021 (hash layers).
#pragma once

#include <ATen/ATen.h>

namespace moelab::nn {

/// Token-choice selection: for each token, k expert ids and their combine weights.
struct TopKSelection {
  at::Tensor indices;  // (N, k) int64, best first, distinct per row
  at::Tensor weights;  // (N, k) combine weights taken from `scores` (differentiable)
};

/// Picks, per token, the k experts with the highest `scores + selection_bias`, then takes the
/// weights from `scores` alone (the bias only decides, as in DeepSeek-V3). With num_groups > 1,
/// experts are split into num_groups equal consecutive groups, each group is scored by its best
/// expert, and only experts in the topk_groups best groups may be chosen (DeepSeek-V2).
/// With normalize, the k weights of a token are divided by their sum.
/// scores: (N, E); selection_bias: (E) or undefined.
TopKSelection select_top_k(const at::Tensor& scores, int64_t k, const at::Tensor& selection_bias,
                           int64_t num_groups, int64_t topk_groups, bool normalize);

/// Expert-choice selection: expert e takes the C tokens with the highest score in column e.
struct ExpertChoiceSelection {
  at::Tensor tokens;   // (E, C) int64 token ids, best first
  at::Tensor weights;  // (E, C) their scores (differentiable)
};
ExpertChoiceSelection select_expert_choice(const at::Tensor& scores, int64_t capacity);

/// Tokens per expert for expert choice: ceil(capacity_factor * k * N / E), clamped to [0, N].
int64_t expert_choice_capacity(double capacity_factor, int64_t k, int64_t num_tokens,
                               int64_t num_experts);

/// Shazeer et al. 2017's smooth load estimate: for each expert, the sum over tokens of the
/// probability (under fresh noise) that the expert is in the token's top k. Needs k < E.
/// clean, noisy, noise_std: (N, E) -> (E), differentiable in clean and noise_std.
at::Tensor noisy_top_k_load(const at::Tensor& clean, const at::Tensor& noisy,
                            const at::Tensor& noise_std, int64_t k);

/// Hash routing: expert j of token t is (splitmix64(id_t) + j) mod E, j < k; weights 1/k.
/// token_ids: (N) integer. Same id, same experts, in every run.
TopKSelection hash_route(const at::Tensor& token_ids, int64_t num_experts, int64_t k,
                         const at::TensorOptions& weight_options);

/// Random routing: k distinct experts drawn uniformly per token from `generator`; weights 1/k.
TopKSelection random_route(int64_t num_tokens, int64_t num_experts, int64_t k,
                           at::Generator generator, const at::TensorOptions& weight_options);

}  // namespace moelab::nn
