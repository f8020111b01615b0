#include "moelab/nn/moe_layer.h"

#include "moelab/nn/expert_parallel.h"

#include "moelab/util/runtime.h"

namespace moelab::nn {

MoELayerImpl::MoELayerImpl(MoELayerOptions options_) : options(std::move(options_)) { reset(); }

MoELayerImpl::MoELayerImpl(MoELayerOptions options_,
                           std::vector<torch::nn::AnyModule> expert_modules)
    : options(std::move(options_)), expert_modules_(std::move(expert_modules)) {
  reset();
}

MoELayerImpl::MoELayerImpl(MoELayerOptions options_,
                           std::vector<torch::nn::AnyModule> expert_modules,
                           torch::nn::AnyModule gate_network)
    : options(std::move(options_)),
      expert_modules_(std::move(expert_modules)),
      gate_network_(std::move(gate_network)) {
  reset();
}

void MoELayerImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.experts().d_model() == o.d_model(), "MoELayer: experts.d_model (",
              o.experts().d_model(), ") must equal router.d_model (", o.d_model(), ")");
  if (expert_modules_.empty()) {
    TORCH_CHECK(o.experts().num_experts() == o.num_experts(), "MoELayer: experts.num_experts (",
                o.experts().num_experts(), ") must equal router.num_experts (", o.num_experts(),
                ")");
  } else {
    TORCH_CHECK(static_cast<int64_t>(expert_modules_.size()) == o.num_experts(), "MoELayer: ",
                expert_modules_.size(), " expert modules given for router.num_experts = ",
                o.num_experts());
  }
  TORCH_CHECK(o.num_shared_experts() >= 0, "MoELayer: num_shared_experts (",
              o.num_shared_experts(), ") must be >= 0");
  TORCH_CHECK(o.shared_d_ff() >= 0, "MoELayer: shared_d_ff (", o.shared_d_ff(),
              ") must be >= 0 (0 = experts.d_ff)");
  TORCH_CHECK(!o.shared_gate() || o.num_shared_experts() > 0,
              "MoELayer: shared_gate needs num_shared_experts > 0");
  for (const AuxTermInfo& term : aux_term_registry()) {
    const double w = term.weight_in(o.aux());
    TORCH_CHECK(std::isfinite(w), "MoELayer: aux.", term.key, " must be finite, got ", w);
    TORCH_CHECK(w == 0 || has_learned_gate(o.router().kind()), "MoELayer: the ",
                to_string(o.router().kind()), " router has no learned gate, so aux.", term.key,
                " (", w, ") must be 0");
  }
  if (!o.dispatch().dropless()) {
    TORCH_CHECK(o.router().kind() != RouterKind::kExpertChoice,
                "MoELayer: expert_choice routing has its own capacity (router.capacity_factor); "
                "set dispatch.dropless = true");
  }

  router = register_module("router", gate_network_.is_empty()
                                          ? Router(o.router())
                                          : Router(o.router(), gate_network_));
  if (expert_modules_.empty()) {
    experts = register_module("experts", FFNExperts(o.experts()));
  } else {
    module_experts = register_module("experts", ModuleExperts(expert_modules_));
  }
  if (o.num_shared_experts() > 0) {
    const int64_t width = o.num_shared_experts() *
                          (o.shared_d_ff() > 0 ? o.shared_d_ff() : o.experts().d_ff());
    shared = register_module("shared", FeedForward(FeedForwardOptions(o.d_model(), width)
                                                       .activation(o.experts().activation())
                                                       .bias(o.experts().bias())));
    if (o.shared_gate()) {
      shared_gate = register_module(
          "shared_gate", torch::nn::Linear(torch::nn::LinearOptions(o.d_model(), 1).bias(false)));
    }
  }
}

void MoELayerImpl::shard_experts(std::shared_ptr<Collective> group) {
  TORCH_CHECK(group, "MoELayer: shard_experts needs a group");
  TORCH_CHECK(experts, "MoELayer: expert parallelism needs FFN experts (module experts stay whole "
              "on every rank)");
  TORCH_CHECK(!expert_group_, "MoELayer: the experts are sharded already");
  const int64_t world = group->world_size(), total = options.num_experts();
  TORCH_CHECK(total % world == 0, "MoELayer: ", total, " experts do not split evenly over ", world,
              " ranks (parallel.expert)");
  const int64_t local = total / world, first = group->rank() * local;
  FFNExperts mine(FFNExpertsOptions(experts->options).num_experts(local));
  {
    torch::NoGradGuard no_grad;
    mine->w_in.copy_(experts->w_in.narrow(0, first, local));
    mine->w_out.copy_(experts->w_out.narrow(0, first, local));
    if (experts->b_in.defined()) {
      mine->b_in.copy_(experts->b_in.narrow(0, first, local));
      mine->b_out.copy_(experts->b_out.narrow(0, first, local));
    }
  }
  experts = replace_module("experts", mine);
  expert_group_ = std::move(group);
}

void MoELayerImpl::pretty_print(std::ostream& stream) const {
  stream << "moelab::nn::MoELayer(d_model=" << options.d_model()
         << ", num_experts=" << options.num_experts() << ", top_k=" << options.router().top_k()
         << ", router=" << to_string(options.router().kind())
         << ", shared=" << options.num_shared_experts() << ")";
}

int64_t count_parameters(const torch::nn::Module& module) {
  int64_t total = 0;
  for (const auto& p : module.parameters()) total += p.numel();
  return total;
}

namespace {

// Routed experts per token: k, or capacity_factor * k on average for expert choice.
double experts_per_token(const RouterOptions& router) {
  const double k = static_cast<double>(router.top_k());
  return router.kind() == RouterKind::kExpertChoice ? k * router.capacity_factor() : k;
}

}  // namespace

// Experts are interchangeable in size, so a token's share is k / E of all expert parameters.
int64_t MoELayerImpl::active_parameters() const {
  const torch::nn::Module& expert_module =
      experts ? static_cast<const torch::nn::Module&>(*experts) : *module_experts;
  const double per_expert =
      static_cast<double>(count_parameters(expert_module)) / options.num_experts();
  int64_t total = count_parameters(*router) +
                  std::llround(per_expert * experts_per_token(options.router()));
  if (shared) total += count_parameters(*shared);
  if (shared_gate) total += count_parameters(*shared_gate);
  return total;
}

// Linear maps cost one multiply-add per weight; elementwise work is not counted. Expert modules
// of unknown structure are counted like linear maps, one MAC per parameter.
int64_t MoELayerImpl::active_macs_per_token() const {
  const int64_t d_model = options.d_model();
  int64_t macs = router->gate ? d_model * options.num_experts() : count_parameters(*router);
  const double per_expert =
      experts ? static_cast<double>(experts->macs_per_row())
              : static_cast<double>(count_parameters(*module_experts)) / options.num_experts();
  macs += std::llround(per_expert * experts_per_token(options.router()));
  if (shared) {
    const int64_t projections = is_gated(shared->options.activation()) ? 3 : 2;
    macs += projections * d_model * shared->options.d_ff();
  }
  if (shared_gate) macs += d_model;
  return macs;
}

namespace {

// Per-expert assignment counts before capacity (what the router asked for).
at::Tensor assignment_counts(const RouterOutput& routing, const DispatchPlan& plan) {
  if (routing.is_expert_choice()) return plan.counts;
  return at::bincount(routing.indices.reshape({-1}), {}, plan.num_experts);
}

at::Tensor importance_load_term(const RouterOutput& routing, const DispatchPlan& plan,
                                const at::TensorOptions& options) {
  at::Tensor importance =
      routing.is_expert_choice()
          ? at::zeros({plan.num_experts}, options).index_add(0, plan.expert, plan.weight)
          : at::zeros({plan.num_experts}, options)
                .index_add(0, routing.indices.reshape({-1}), routing.weights.reshape({-1}));
  at::Tensor load =
      routing.load.defined() ? routing.load : assignment_counts(routing, plan).to(options);
  return importance_load_loss(importance, load);
}

AuxLossTerms compute_aux_terms(const RouterOutput& routing, const DispatchPlan& plan,
                               const AuxLossOptions& weights, const at::TensorOptions& options) {
  AuxLossTerms terms;
  for (const AuxTermInfo& info : aux_term_registry()) {
    if (!routing.probs.defined()) {  // no learned gate: every term is 0
      terms[info.key] = at::zeros({}, options);
    } else if (info.weight_in(weights) != 0) {
      terms[info.key] = info.compute(routing, plan, options);
    } else {  // a term whose weight is 0 is only reported: no graph is built for it
      torch::NoGradGuard no_grad;
      terms[info.key] = info.compute(routing, plan, options);
    }
  }
  return terms;
}

at::Tensor weighted_sum(const AuxLossTerms& terms, const AuxLossOptions& weights,
                        const at::TensorOptions& options) {
  at::Tensor total = at::zeros({}, options);
  for (const AuxTermInfo& info : aux_term_registry()) {
    const double weight = info.weight_in(weights);
    if (weight != 0) total = total + weight * terms.at(info.key);
  }
  return total;
}

// Per-token decisions of the routed tokens, in (n, k) form (expert choice: (n, E)).
struct TokenDecisions {
  at::Tensor indices, weights, kept;
};

TokenDecisions token_decisions(const RouterOutput& routing, const DispatchPlan& plan) {
  if (!routing.is_expert_choice()) {
    return {routing.indices, routing.weights.detach(), plan.kept};
  }
  const int64_t n = plan.num_tokens, e = plan.num_experts;
  at::Tensor flat = plan.token * e + plan.expert;
  at::Tensor indices = at::full({n * e}, -1, plan.token.options()).index_put_({flat}, plan.expert);
  at::Tensor weights = at::zeros({n * e}, plan.weight.options())
                           .index_put_({flat}, plan.weight.detach());
  indices = indices.view({n, e});
  return {indices, weights.view({n, e}), indices.ge(0)};
}

}  // namespace

RoutingStats routing_stats(const RouterOutput& routing, const DispatchPlan& plan) {
  torch::NoGradGuard no_grad;
  RoutingStats stats;
  stats.num_tokens = plan.num_tokens;
  stats.tokens_per_expert = plan.counts;
  const at::Tensor counts = plan.counts.to(at::kDouble);
  const double total = counts.sum().item<double>();
  stats.usage = total > 0 ? counts / total : at::zeros_like(counts);
  at::Tensor mass = at::zeros({plan.num_experts}, plan.weight.options())
                        .index_add(0, plan.expert, plan.weight.detach());
  stats.gate_mass = mass.to(at::kDouble) / std::max<int64_t>(plan.num_tokens, 1);
  stats.token_entropy = routing.probs.defined() ? routing_entropy(routing.probs.detach())
                                                    .to(at::kDouble)
                                              : at::zeros({}, at::kDouble);
  stats.usage_entropy = distribution_entropy(counts);
  stats.dropped_fraction =
      plan.num_assigned > 0 ? static_cast<double>(plan.num_dropped) / plan.num_assigned : 0.0;
  return stats;
}

namespace {

// Rows of `routed` (n, ...) placed back among all N tokens; masked rows get `fill`.
at::Tensor scatter_rows(const at::Tensor& routed, const at::Tensor& rows, int64_t total,
                        double fill) {
  std::vector<int64_t> shape(routed.sizes().begin(), routed.sizes().end());
  shape[0] = total;
  return at::full(shape, fill, routed.options()).index_copy(0, rows, routed);
}

}  // namespace

MoEOutput MoELayerImpl::forward(const at::Tensor& input, const at::Tensor& padding_mask,
                                const at::Tensor& token_ids) {
  // Under bf16 autocast the router computes in float32: routing decisions are precision-sensitive
  // (Switch Transformer's selective precision). FFN experts and the shared experts compute in
  // autocast's type as its matmuls would (bf16 GEMMs run on AMX where the CPU has it); module
  // experts (vision CNNs) stay float32.
  AutocastDisabled float32_island;
  const at::Tensor x = float32_island.was_enabled() ? input.to(at::kFloat) : input;
  const auto expert_type =
      experts && float32_island.was_enabled() ? float32_island.matmul_type() : x.scalar_type();
  const int64_t d_model = options.d_model();
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == d_model, "MoELayer: input's last dim (",
              x.dim() >= 1 ? x.size(-1) : 0, ") must equal d_model (", d_model, "); input is ",
              x.sizes());
  const at::IntArrayRef leading = x.sizes().slice(0, x.dim() - 1);
  at::Tensor tokens = x.reshape({-1, d_model});  // (N, D)
  const int64_t num_tokens = tokens.size(0);
  at::Tensor ids = token_ids.defined() ? token_ids.reshape({-1}) : at::Tensor();
  if (token_ids.defined()) {
    TORCH_CHECK(token_ids.sizes() == leading, "MoELayer: token_ids ", token_ids.sizes(),
                " must have the input's leading shape ", leading);
  }

  // Keep only the real tokens.
  at::Tensor rows;  // (n) positions of the routed tokens among the N, when masking
  if (padding_mask.defined()) {
    TORCH_CHECK(padding_mask.sizes() == leading, "MoELayer: padding_mask ", padding_mask.sizes(),
                " must have the input's leading shape ", leading);
    rows = padding_mask.reshape({-1}).ne(0).nonzero().view({-1});
    tokens = tokens.index_select(0, rows);
    if (ids.defined()) ids = ids.index_select(0, rows);
  }

  RouterOutput routing = router->forward(tokens, ids);
  DispatchPlan plan =
      routing.is_expert_choice()
          ? plan_expert_choice(routing.expert_tokens, routing.expert_weights, tokens.size(0))
          : plan_token_choice(routing.indices, routing.weights, options.num_experts(),
                              options.dispatch());
  at::Tensor dispatched = gather_rows(tokens.to(expert_type), plan);  // (S, D)
  at::Tensor expert_out =
      expert_group_ ? run_experts_parallel(*expert_group_, dispatched, plan.counts_host,
                                           [this](const at::Tensor& rows, const std::vector<int64_t>& counts) {
                                             return experts->forward(rows, counts);
                                           })
      : experts     ? experts->forward(dispatched, plan.counts_host)
                    : module_experts->forward(dispatched, plan.counts_host);
  at::Tensor out = combine_rows(expert_out, plan.weight, plan).to(x.scalar_type());  // (n, D)
  if (shared) {
    at::Tensor shared_out;
    {
      AutocastScope caller_precision(float32_island.was_enabled() ? Precision::kBFloat16
                                                                   : Precision::kFloat32);
      shared_out = shared->forward(tokens).to(x.scalar_type());
    }
    if (shared_gate) shared_out = shared_out * at::sigmoid(shared_gate->forward(tokens));
    TORCH_CHECK(out.size(-1) == shared_out.size(-1), "MoELayer: shared experts need routed experts "
                "that keep the width d_model");
    out = out + shared_out;
  }

  MoEOutput result;
  const auto loss_options = routing.probs.defined() ? routing.probs.options() : x.options();
  result.aux_terms = compute_aux_terms(routing, plan, options.aux(), loss_options);
  result.aux_loss = weighted_sum(result.aux_terms, options.aux(), loss_options);
  result.stats = routing_stats(routing, plan);
  TokenDecisions decisions = token_decisions(routing, plan);
  if (rows.defined()) {
    out = scatter_rows(out, rows, num_tokens, 0.0);
    decisions.indices = scatter_rows(decisions.indices, rows, num_tokens, -1);
    decisions.weights = scatter_rows(decisions.weights, rows, num_tokens, 0.0);
    decisions.kept = scatter_rows(decisions.kept, rows, num_tokens, 0);
  }
  result.stats.indices = decisions.indices;
  result.stats.weights = decisions.weights;
  result.stats.kept = decisions.kept;
  // Module experts may map D to another width (e.g. images to class logits).
  std::vector<int64_t> output_shape(leading.begin(), leading.end());
  for (int64_t d = 1; d < out.dim(); ++d) output_shape.push_back(out.size(d));
  result.output = out.view(output_shape);
  return result;
}

const std::vector<AuxTermInfo>& aux_term_registry() {
  static const std::vector<AuxTermInfo> terms{
      {"load_balance", [](AuxLossOptions& o) -> double& { return o.load_balance(); },
       [](const RouterOutput& routing, const DispatchPlan& plan, const at::TensorOptions&) {
         return load_balance_loss(routing.probs, assignment_counts(routing, plan));
       }},
      {"importance_load", [](AuxLossOptions& o) -> double& { return o.importance_load(); },
       importance_load_term},
      {"usage_mse", [](AuxLossOptions& o) -> double& { return o.usage_mse(); },
       [](const RouterOutput& routing, const DispatchPlan&, const at::TensorOptions&) {
         return usage_mse_loss(routing.probs);
       }},
      {"entropy", [](AuxLossOptions& o) -> double& { return o.entropy(); },
       [](const RouterOutput& routing, const DispatchPlan&, const at::TensorOptions&) {
         return routing_entropy(routing.probs);
       }},
      {"z_loss", [](AuxLossOptions& o) -> double& { return o.z_loss(); },
       [](const RouterOutput& routing, const DispatchPlan&, const at::TensorOptions&) {
         return router_z_loss(routing.logits);
       }},
  };
  return terms;
}

}  // namespace moelab::nn
