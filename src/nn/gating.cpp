#include "moelab/nn/gating.h"

#include <cmath>
#include <limits>

namespace moelab::nn {

TopKSelection select_top_k(const at::Tensor& scores, int64_t k, const at::Tensor& selection_bias,
                           int64_t num_groups, int64_t topk_groups, bool normalize) {
  TORCH_CHECK(scores.dim() == 2, "select_top_k: scores must be (N, E), got ", scores.sizes());
  const int64_t num_tokens = scores.size(0), num_experts = scores.size(1);
  TORCH_CHECK(k >= 1 && k <= num_experts, "select_top_k: k (", k, ") must be in [1, E=",
              num_experts, "]");
  at::Tensor choice_scores = scores.detach();
  if (selection_bias.defined()) {
    TORCH_CHECK(selection_bias.dim() == 1 && selection_bias.size(0) == num_experts,
                "select_top_k: selection_bias must be (E=", num_experts, "), got ",
                selection_bias.sizes());
    choice_scores = choice_scores + selection_bias.to(choice_scores.dtype());
  }
  if (num_groups > 1) {
    TORCH_CHECK(num_experts % num_groups == 0, "select_top_k: num_groups (", num_groups,
                ") must divide E (", num_experts, ")");
    const int64_t group_size = num_experts / num_groups;
    TORCH_CHECK(topk_groups >= 1 && topk_groups <= num_groups, "select_top_k: topk_groups (",
                topk_groups, ") must be in [1, num_groups=", num_groups, "]");
    TORCH_CHECK(k <= topk_groups * group_size, "select_top_k: k (", k,
                ") exceeds the experts in the kept groups (topk_groups * E / num_groups = ",
                topk_groups * group_size, ")");
    at::Tensor group_scores =
        std::get<0>(choice_scores.view({num_tokens, num_groups, group_size}).max(-1));  // (N, G)
    at::Tensor kept_groups = std::get<1>(group_scores.topk(topk_groups, -1));         // (N, g)
    at::Tensor group_mask = at::zeros({num_tokens, num_groups}, scores.options().dtype(at::kBool))
                                .scatter_(1, kept_groups, true);
    at::Tensor expert_mask = group_mask.unsqueeze(-1)
                                 .expand({num_tokens, num_groups, group_size})
                                 .reshape({num_tokens, num_experts});
    choice_scores =
        choice_scores.masked_fill(expert_mask.logical_not(), -std::numeric_limits<double>::infinity());
  }
  at::Tensor indices = std::get<1>(choice_scores.topk(k, -1));  // (N, k), best first
  at::Tensor weights = scores.gather(1, indices);
  if (normalize) weights = weights / weights.sum(-1, /*keepdim=*/true).clamp_min(1e-20);
  return {indices, weights};
}

int64_t expert_choice_capacity(double capacity_factor, int64_t k, int64_t num_tokens,
                               int64_t num_experts) {
  TORCH_CHECK(capacity_factor > 0, "expert_choice_capacity: capacity_factor (", capacity_factor,
              ") must be > 0");
  const double c = std::ceil(capacity_factor * static_cast<double>(k * num_tokens) /
                             static_cast<double>(num_experts));
  return std::min<int64_t>(num_tokens, static_cast<int64_t>(c));
}

ExpertChoiceSelection select_expert_choice(const at::Tensor& scores, int64_t capacity) {
  TORCH_CHECK(scores.dim() == 2, "select_expert_choice: scores must be (N, E), got ",
              scores.sizes());
  TORCH_CHECK(capacity >= 0 && capacity <= scores.size(0), "select_expert_choice: capacity (",
              capacity, ") must be in [0, N=", scores.size(0), "]");
  at::Tensor tokens = std::get<1>(scores.detach().topk(capacity, /*dim=*/0)).t().contiguous();
  at::Tensor weights = scores.t().gather(1, tokens);  // (E, C)
  return {tokens, weights};
}

at::Tensor noisy_top_k_load(const at::Tensor& clean, const at::Tensor& noisy,
                            const at::Tensor& noise_std, int64_t k) {
  const int64_t num_experts = clean.size(1);
  TORCH_CHECK(k >= 1 && k < num_experts, "noisy_top_k_load: k (", k, ") must be in [1, E-1=",
              num_experts - 1, "]");
  // The (k+1)-th and k-th largest noisy logits: the thresholds an expert must beat when it is
  // currently in, or currently out of, the token's top k.
  at::Tensor top = std::get<0>(noisy.detach().topk(k + 1, -1));  // (N, k+1)
  at::Tensor threshold_if_in = top.narrow(1, k, 1);
  at::Tensor threshold_if_out = top.narrow(1, k - 1, 1);
  at::Tensor is_in = noisy.detach() > threshold_if_in;
  auto normal_cdf = [](const at::Tensor& z) { return 0.5 * (1 + at::erf(z * M_SQRT1_2)); };
  at::Tensor prob_if_in = normal_cdf((clean - threshold_if_in) / noise_std);
  at::Tensor prob_if_out = normal_cdf((clean - threshold_if_out) / noise_std);
  return at::where(is_in, prob_if_in, prob_if_out).sum(0);
}

namespace {
uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
}  // namespace

TopKSelection hash_route(const at::Tensor& token_ids, int64_t num_experts, int64_t k,
                         const at::TensorOptions& weight_options) {
  TORCH_CHECK(token_ids.defined(), "hash_route: the hash router needs token ids (one integer per "
              "token); pass them to forward");
  TORCH_CHECK(token_ids.dim() == 1 && !at::isFloatingType(token_ids.scalar_type()),
              "hash_route: token_ids must be a 1-D integer tensor, got ", token_ids.sizes(), " ",
              token_ids.scalar_type());
  TORCH_CHECK(k >= 1 && k <= num_experts, "hash_route: k (", k, ") must be in [1, E=",
              num_experts, "]");
  at::Tensor ids = token_ids.to(at::kCPU, at::kLong).contiguous();
  const int64_t n = ids.size(0);
  at::Tensor indices = at::empty({n, k}, ids.options());
  const int64_t* id = ids.data_ptr<int64_t>();
  int64_t* out = indices.data_ptr<int64_t>();
  for (int64_t t = 0; t < n; ++t) {
    const auto first = static_cast<int64_t>(splitmix64(static_cast<uint64_t>(id[t])) %
                                            static_cast<uint64_t>(num_experts));
    for (int64_t j = 0; j < k; ++j) out[t * k + j] = (first + j) % num_experts;
  }
  indices = indices.to(token_ids.device());
  return {indices, at::full({n, k}, 1.0 / static_cast<double>(k), weight_options)};
}

TopKSelection random_route(int64_t num_tokens, int64_t num_experts, int64_t k,
                           at::Generator generator, const at::TensorOptions& weight_options) {
  TORCH_CHECK(k >= 1 && k <= num_experts, "random_route: k (", k, ") must be in [1, E=",
              num_experts, "]");
  at::Tensor draws = at::rand({num_tokens, num_experts}, generator, at::kFloat);
  at::Tensor indices = std::get<1>(draws.topk(k, -1)).to(weight_options.device());
  return {indices, at::full({num_tokens, k}, 1.0 / static_cast<double>(k), weight_options)};
}

}  // namespace moelab::nn
