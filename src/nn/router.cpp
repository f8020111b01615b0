#include "moelab/nn/router.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/functional/activation.h>

#include <cmath>

#include "moelab/nn/gating.h"

namespace moelab::nn {

namespace {
struct KindName {
  RouterKind kind;
  const char* name;
};
constexpr KindName kKindNames[] = {
    {RouterKind::kTopK, "top_k"},           {RouterKind::kNoisyTopK, "noisy_top_k"},
    {RouterKind::kSwitch, "switch"},        {RouterKind::kAuxFree, "aux_free"},
    {RouterKind::kGroupLimited, "group_limited"}, {RouterKind::kExpertChoice, "expert_choice"},
    {RouterKind::kRandom, "random"},        {RouterKind::kHash, "hash"},
    {RouterKind::kUniform, "uniform"},
};
}  // namespace

RouterKind parse_router_kind(const std::string& name) {
  std::string valid;
  for (const auto& entry : kKindNames) {
    if (name == entry.name) return entry.kind;
    valid += valid.empty() ? entry.name : std::string(", ") + entry.name;
  }
  TORCH_CHECK(false, "Router: unknown kind '", name, "'; expected one of ", valid);
}

std::string to_string(RouterKind kind) {
  for (const auto& entry : kKindNames) {
    if (entry.kind == kind) return entry.name;
  }
  TORCH_INTERNAL_ASSERT(false, "unhandled RouterKind");
}

bool has_learned_gate(RouterKind kind) {
  return kind != RouterKind::kRandom && kind != RouterKind::kHash && kind != RouterKind::kUniform;
}

ScoreFunction parse_score_function(const std::string& name) {
  if (name == "sigmoid") return ScoreFunction::kSigmoid;
  if (name == "softmax") return ScoreFunction::kSoftmax;
  TORCH_CHECK(false, "Router: unknown score_function '", name, "'; expected sigmoid or softmax");
}

std::string to_string(ScoreFunction function) {
  return function == ScoreFunction::kSigmoid ? "sigmoid" : "softmax";
}

RouterImpl::RouterImpl(RouterOptions options_) : options(std::move(options_)) { reset(); }

RouterImpl::RouterImpl(RouterOptions options_, torch::nn::AnyModule gate_network_)
    : options(std::move(options_)), gate_network(std::move(gate_network_)) {
  reset();
}

void RouterImpl::reset() {
  const auto& o = options;
  const int64_t num_experts = o.num_experts();
  TORCH_CHECK(num_experts >= 1, "Router: num_experts (", num_experts, ") must be >= 1");
  TORCH_CHECK(o.top_k() >= 1 && o.top_k() <= num_experts, "Router: top_k (", o.top_k(),
              ") must be in [1, num_experts=", num_experts, "]");
  TORCH_CHECK(o.temperature() > 0 && std::isfinite(o.temperature()), "Router: temperature (",
              o.temperature(), ") must be a positive number");
  TORCH_CHECK(o.jitter_eps() >= 0 && o.jitter_eps() < 1, "Router: jitter_eps (", o.jitter_eps(),
              ") must be in [0, 1)");
  TORCH_CHECK(o.bias_update_rate() >= 0, "Router: bias_update_rate (", o.bias_update_rate(),
              ") must be >= 0");
  TORCH_CHECK(o.capacity_factor() > 0, "Router: capacity_factor (", o.capacity_factor(),
              ") must be > 0");
  TORCH_CHECK(o.score_function() == ScoreFunction::kSigmoid || o.kind() == RouterKind::kAuxFree,
              "Router: score_function applies only to aux_free routers; ", to_string(o.kind()),
              " routers use softmax");
  if (o.kind() == RouterKind::kSwitch) {
    TORCH_CHECK(o.top_k() == 1, "Router: the switch router routes to one expert; top_k is ",
                o.top_k(), ". HINT: use kind top_k for k > 1");
  }
  if (o.kind() == RouterKind::kNoisyTopK) {
    TORCH_CHECK(!gate_network.is_empty() || o.d_model() >= 1,
                "Router: noisy_top_k needs d_model >= 1 for its noise projection");
    TORCH_CHECK(gate_network.is_empty(), "Router: noisy_top_k learns its noise from a linear "
                "projection of the input and cannot be used with a custom gate network");
  }
  const bool grouped = o.kind() == RouterKind::kGroupLimited ||
                       (o.kind() == RouterKind::kAuxFree && o.num_groups() > 1);
  if (o.kind() == RouterKind::kGroupLimited) {
    TORCH_CHECK(o.num_groups() > 1, "Router: group_limited needs num_groups > 1, got ",
                o.num_groups());
  } else if (o.kind() != RouterKind::kAuxFree) {
    TORCH_CHECK(o.num_groups() == 1, "Router: num_groups (", o.num_groups(),
                ") applies only to group_limited and aux_free routers, not ", to_string(o.kind()));
  }
  if (grouped) {
    TORCH_CHECK(num_experts % o.num_groups() == 0, "Router: num_groups (", o.num_groups(),
                ") must divide num_experts (", num_experts, ")");
    TORCH_CHECK(o.topk_groups() >= 1 && o.topk_groups() <= o.num_groups(),
                "Router: topk_groups (", o.topk_groups(), ") must be in [1, num_groups=",
                o.num_groups(), "]");
    TORCH_CHECK(o.top_k() <= o.topk_groups() * (num_experts / o.num_groups()), "Router: top_k (",
                o.top_k(), ") exceeds the experts in topk_groups groups (",
                o.topk_groups() * (num_experts / o.num_groups()), ")");
  }

  if (has_learned_gate(o.kind())) {
    if (gate_network.is_empty()) {
      TORCH_CHECK(o.d_model() >= 1, "Router: d_model (", o.d_model(),
                  ") must be >= 1 for the linear gate");
      gate = register_module(
          "gate", torch::nn::Linear(torch::nn::LinearOptions(o.d_model(), num_experts).bias(false)));
    } else {
      register_module("gate_network", gate_network.ptr());
    }
  }
  if (o.kind() == RouterKind::kNoisyTopK) {
    noise = register_module(
        "noise", torch::nn::Linear(torch::nn::LinearOptions(o.d_model(), num_experts).bias(false)));
    // Shazeer et al. initialise both projections at zero: balanced routing, unit noise scale.
    torch::NoGradGuard no_grad;
    noise->weight.zero_();
  }
  if (o.kind() == RouterKind::kAuxFree) {
    expert_bias = register_buffer("expert_bias", at::zeros({num_experts}, at::kFloat));
    load_count = register_buffer("load_count", at::zeros({num_experts}, at::kFloat));
  }
  if (o.kind() == RouterKind::kRandom) {
    generator_ = at::detail::createCPUGenerator(o.seed());
    generator_state = register_buffer("generator_state", generator_.get_state());
  }
}

void RouterImpl::pretty_print(std::ostream& stream) const {
  stream << "moelab::nn::Router(kind=" << to_string(options.kind())
         << ", num_experts=" << options.num_experts() << ", top_k=" << options.top_k() << ")";
}

at::Tensor RouterImpl::score_logits(const at::Tensor& x) {
  at::Tensor input = x;
  if (options.kind() == RouterKind::kSwitch && is_training() && options.jitter_eps() > 0) {
    const double eps = options.jitter_eps();
    input = x * at::empty_like(x).uniform_(1.0 - eps, 1.0 + eps);
  }
  at::Tensor logits = gate_network.is_empty() ? gate->forward(input)
                                              : gate_network.forward<at::Tensor>(input);
  TORCH_CHECK(logits.dim() == 2 && logits.size(0) == x.size(0) &&
                  logits.size(1) == options.num_experts(),
              "Router: the gate network must return logits (N=", x.size(0),
              ", E=", options.num_experts(), "), got ", logits.sizes());
  return logits;
}

RouterOutput RouterImpl::forward(const at::Tensor& x, const at::Tensor& token_ids) {
  const auto& o = options;
  TORCH_CHECK(x.dim() >= 1, "Router: input must have a batch dimension, got a scalar");
  if (gate_network.is_empty() && has_learned_gate(o.kind())) {
    TORCH_CHECK(x.dim() == 2 && x.size(1) == o.d_model(), "Router: input must be (N, d_model=",
                o.d_model(), "), got ", x.sizes());
  }
  const int64_t num_tokens = x.size(0);
  const int64_t k = o.top_k();
  const double temperature = o.temperature();
  auto weight_options = x.options();
  RouterOutput out;

  switch (o.kind()) {
    case RouterKind::kRandom: {
      generator_.set_state(generator_state.cpu());
      auto selection = random_route(num_tokens, o.num_experts(), k, generator_, weight_options);
      generator_state.copy_(generator_.get_state());
      out.indices = selection.indices;
      out.weights = selection.weights;
      return out;
    }
    case RouterKind::kUniform: {
      // No gating network: every token goes to experts 0 .. k-1 with weight 1/k, which is what
      // a top-k over equal scores picks (the "uniform" baseline of routing studies).
      out.indices = at::arange(k, weight_options.dtype(at::kLong)).expand({num_tokens, k}).contiguous();
      out.weights = at::full({num_tokens, k}, 1.0 / static_cast<double>(k), weight_options);
      return out;
    }
    case RouterKind::kHash: {
      TORCH_CHECK(!token_ids.defined() || token_ids.size(0) == num_tokens, "Router: token_ids (",
                  token_ids.defined() ? token_ids.size(0) : 0, ") must have one id per token (",
                  num_tokens, ")");
      auto selection = hash_route(token_ids, o.num_experts(), k, weight_options);
      out.indices = selection.indices;
      out.weights = selection.weights;
      return out;
    }
    case RouterKind::kNoisyTopK: {
      at::Tensor clean = score_logits(x) / temperature;
      at::Tensor noisy = clean;
      at::Tensor noise_std;
      if (is_training()) {
        noise_std = (at::softplus(noise->forward(x)) + 1e-2) / temperature;
        noisy = clean + at::randn_like(clean) * noise_std;
      }
      out.logits = noisy;
      out.probs = at::softmax(noisy, -1);
      auto top = noisy.topk(k, -1);
      out.indices = std::get<1>(top);
      out.weights = at::softmax(std::get<0>(top), -1);
      if (is_training() && k < o.num_experts()) {
        out.load = noisy_top_k_load(clean, noisy, noise_std, k);
      }
      return out;
    }
    case RouterKind::kAuxFree: {
      out.logits = score_logits(x) / temperature;
      at::Tensor scores = o.score_function() == ScoreFunction::kSigmoid
                              ? at::sigmoid(out.logits)
                              : at::softmax(out.logits, -1);
      out.probs = scores / scores.sum(-1, /*keepdim=*/true).clamp_min(1e-20);
      auto selection = select_top_k(scores, k, expert_bias, o.num_groups(), o.topk_groups(),
                                    o.normalize_weights());
      out.indices = selection.indices;
      out.weights = selection.weights;
      if (is_training()) {
        torch::NoGradGuard no_grad;
        load_count.add_(at::bincount(out.indices.reshape(-1).cpu(), {}, o.num_experts())
                            .to(load_count.options()));
      }
      return out;
    }
    case RouterKind::kExpertChoice: {
      out.logits = score_logits(x) / temperature;
      out.probs = at::softmax(out.logits, -1);
      const int64_t capacity =
          expert_choice_capacity(o.capacity_factor(), k, num_tokens, o.num_experts());
      auto selection = select_expert_choice(out.probs, capacity);
      out.expert_tokens = selection.tokens;
      out.expert_weights = selection.weights;
      return out;
    }
    case RouterKind::kTopK:
    case RouterKind::kSwitch:
    case RouterKind::kGroupLimited: {
      out.logits = score_logits(x) / temperature;
      out.probs = at::softmax(out.logits, -1);
      auto selection = select_top_k(out.probs, k, /*selection_bias=*/{}, o.num_groups(),
                                    o.topk_groups(),
                                    o.normalize_weights() && o.kind() != RouterKind::kSwitch);
      out.indices = selection.indices;
      out.weights = selection.weights;
      return out;
    }
  }
  TORCH_INTERNAL_ASSERT(false, "unhandled RouterKind");
}

void RouterImpl::update_bias(double rate_scale) {
  if (options.kind() != RouterKind::kAuxFree) return;
  TORCH_CHECK(rate_scale >= 0 && std::isfinite(rate_scale), "Router: update_bias rate_scale (",
              rate_scale, ") must be a finite number >= 0");
  torch::NoGradGuard no_grad;
  if (load_count.sum().item<double>() > 0) {
    expert_bias.add_(options.bias_update_rate() * rate_scale *
                     at::sign(load_count.mean() - load_count));
  }
  load_count.zero_();
}

}  // namespace moelab::nn
