#include "moelab/nn/dispatch.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <cmath>
#include <cstring>

namespace moelab::nn {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

DropPolicy parse_drop_policy(const std::string& name) {
  if (name == "position") return DropPolicy::kPosition;
  if (name == "score") return DropPolicy::kScore;
  TORCH_CHECK(false, "dispatch: unknown drop_policy '", name, "'; expected position or score");
}

std::string to_string(DropPolicy policy) {
  return policy == DropPolicy::kPosition ? "position" : "score";
}

int64_t expert_capacity(double capacity_factor, int64_t num_tokens, int64_t k,
                        int64_t num_experts, int64_t max_load) {
  TORCH_CHECK(std::isfinite(capacity_factor), "dispatch: capacity_factor (", capacity_factor,
              ") must be finite");
  if (capacity_factor == 0) return max_load;
  const auto fixed = static_cast<int64_t>(std::ceil(
      std::abs(capacity_factor) * static_cast<double>(k * num_tokens) / num_experts));
  return capacity_factor > 0 ? fixed : std::min(fixed, max_load);
}

namespace {

std::vector<int64_t> to_host_vector(const at::Tensor& t) {
  at::Tensor cpu = t.to(at::kCPU, at::kLong).contiguous();
  return {cpu.data_ptr<int64_t>(), cpu.data_ptr<int64_t>() + cpu.numel()};
}

// Fills the by-token view of the slots and the host counts.
void finish_plan(DispatchPlan& plan) {
  plan.counts = at::bincount(plan.expert, {}, plan.num_experts);
  plan.counts_host = to_host_vector(plan.counts);
  plan.slots_by_token = std::get<1>(at::sort(plan.token, /*stable=*/true, 0, false));
  at::Tensor per_token = at::bincount(plan.token, {}, plan.num_tokens);
  plan.token_offsets = at::cat({at::zeros({1}, per_token.options()), per_token.cumsum(0)});
}

}  // namespace

DispatchPlan plan_token_choice(const at::Tensor& indices, const at::Tensor& weights,
                               int64_t num_experts, const DispatchOptions& options) {
  TORCH_CHECK(indices.dim() == 2, "dispatch: indices must be (N, k), got ", indices.sizes());
  TORCH_CHECK(weights.sizes() == indices.sizes(), "dispatch: weights ", weights.sizes(),
              " must match indices ", indices.sizes());
  TORCH_CHECK(indices.scalar_type() == at::kLong, "dispatch: indices must be int64, got ",
              indices.scalar_type());
  const int64_t num_tokens = indices.size(0), k = indices.size(1);
  const int64_t num_slots = num_tokens * k;
  if (num_slots > 0) {
    const int64_t lo = indices.min().item<int64_t>(), hi = indices.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < num_experts, "dispatch: expert indices must be in [0, ",
                num_experts, "), got values in [", lo, ", ", hi, "]");
  }
  DispatchPlan plan;
  plan.num_tokens = num_tokens;
  plan.num_experts = num_experts;
  plan.num_assigned = num_slots;
  at::Tensor flat_expert = indices.reshape({-1});  // slot t * k + j
  at::Tensor order, sorted_expert;
  if (options.dropless()) {
    // Within an expert, slots stay in token order: the gather then reads x front to back.
    std::tie(sorted_expert, order) = at::sort(flat_expert, /*stable=*/true, 0, false);
  } else {
    // Arrange slots in priority order first; the stable sort by expert keeps that order inside
    // each expert, so a slot's rank in its expert is its position in the queue.
    at::Tensor priority;
    if (options.drop_policy() == DropPolicy::kPosition) {
      priority = at::arange(num_slots, indices.options()).view({num_tokens, k}).t().reshape({-1});
    } else {
      priority = std::get<1>(
          at::sort(weights.detach().reshape({-1}), /*stable=*/true, 0, /*descending=*/true));
    }
    at::Tensor by_priority = flat_expert.index_select(0, priority);
    at::Tensor rank;
    std::tie(sorted_expert, rank) = at::sort(by_priority, /*stable=*/true, 0, false);
    order = priority.index_select(0, rank);
    at::Tensor load = at::bincount(flat_expert, {}, num_experts);
    const int64_t max_load = num_slots > 0 ? load.max().item<int64_t>() : 0;
    plan.capacity = expert_capacity(options.capacity_factor(), num_tokens, k, num_experts,
                                    max_load);
    at::Tensor first_of_expert = load.cumsum(0) - load;
    at::Tensor position = at::arange(num_slots, indices.options()) -
                          first_of_expert.index_select(0, sorted_expert);
    at::Tensor keep = position < plan.capacity;
    order = order.masked_select(keep);
    sorted_expert = sorted_expert.masked_select(keep);
  }
  plan.num_dropped = num_slots - order.size(0);
  plan.token = at::div(order, k, "floor");
  plan.expert = sorted_expert;
  plan.weight = weights.reshape({-1}).index_select(0, order);
  plan.kept = at::zeros({num_tokens, k}, indices.options().dtype(at::kBool));
  plan.kept.view({-1}).index_fill_(0, order, true);
  finish_plan(plan);
  return plan;
}

DispatchPlan plan_expert_choice(const at::Tensor& tokens, const at::Tensor& weights,
                                int64_t num_tokens) {
  TORCH_CHECK(tokens.dim() == 2, "dispatch: expert-choice tokens must be (E, C), got ",
              tokens.sizes());
  TORCH_CHECK(weights.sizes() == tokens.sizes(), "dispatch: weights ", weights.sizes(),
              " must match tokens ", tokens.sizes());
  DispatchPlan plan;
  plan.num_tokens = num_tokens;
  plan.num_experts = tokens.size(0);
  const int64_t capacity = tokens.size(1);
  plan.capacity = capacity;
  plan.token = tokens.reshape({-1});
  plan.expert = at::arange(plan.num_experts, tokens.options())
                    .repeat_interleave(capacity);
  plan.weight = weights.reshape({-1});
  plan.num_assigned = plan.token.size(0);
  finish_plan(plan);
  return plan;
}

namespace {

// Rows of a tensor as a (rows, row_size) matrix; row_size is computed, not inferred, so that a
// batch with zero rows keeps its trailing shape.
int64_t row_size(const at::Tensor& t) {
  int64_t size = 1;
  for (int64_t d = 1; d < t.dim(); ++d) size *= t.size(d);
  return size;
}

std::vector<int64_t> with_rows(const at::Tensor& like, int64_t rows) {
  std::vector<int64_t> shape(like.sizes().begin(), like.sizes().end());
  shape[0] = rows;
  return shape;
}

constexpr int64_t kRowGrain = 64;

// out[s] = x[token[s]]
void gather_kernel(const at::Tensor& x, const at::Tensor& token, at::Tensor& out) {
  const int64_t width = row_size(x);
  const int64_t bytes = width * x.element_size();
  const auto* src = static_cast<const char*>(x.data_ptr());
  auto* dst = static_cast<char*>(out.data_ptr());
  const int64_t* tok = token.data_ptr<int64_t>();
  at::parallel_for(0, token.size(0), kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) std::memcpy(dst + s * bytes, src + tok[s] * bytes, bytes);
  });
}

// out[t] = sum over t's slots of (weight[s] or 1) * rows[s]; weight may be undefined.
void sum_slots_per_token(const at::Tensor& rows, const at::Tensor& weight, const DispatchPlan& plan,
                         at::Tensor& out) {
  const int64_t width = row_size(rows);
  const int64_t* slots = plan.slots_by_token.data_ptr<int64_t>();
  const int64_t* offsets = plan.token_offsets.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, rows.scalar_type(), "combine", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* src = rows.data_ptr<scalar_t>();
    const scalar_t* w = weight.defined() ? weight.data_ptr<scalar_t>() : nullptr;
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, plan.num_tokens, kRowGrain, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(width);
      for (int64_t t = begin; t < end; ++t) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t i = offsets[t]; i < offsets[t + 1]; ++i) {
          const int64_t s = slots[i];
          const acc_t scale = w ? static_cast<acc_t>(w[s]) : acc_t(1);
          const scalar_t* row = src + s * width;
          for (int64_t c = 0; c < width; ++c) acc[c] += scale * static_cast<acc_t>(row[c]);
        }
        scalar_t* o = dst + t * width;
        for (int64_t c = 0; c < width; ++c) o[c] = static_cast<scalar_t>(acc[c]);
      }
    });
  });
}

// grad_y[s] = weight[s] * grad_out[token[s]];  grad_w[s] = <grad_out[token[s]], y[s]>
void combine_backward_kernel(const at::Tensor& grad_out, const at::Tensor& y,
                             const at::Tensor& weight, const at::Tensor& token, at::Tensor& grad_y,
                             at::Tensor& grad_w) {
  const int64_t width = row_size(y);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "combine_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad_out.data_ptr<scalar_t>();
    const scalar_t* yv = y.data_ptr<scalar_t>();
    const scalar_t* w = weight.data_ptr<scalar_t>();
    const int64_t* tok = token.data_ptr<int64_t>();
    scalar_t* gy = grad_y.defined() ? grad_y.data_ptr<scalar_t>() : nullptr;
    scalar_t* gw = grad_w.defined() ? grad_w.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, token.size(0), kRowGrain, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        const scalar_t* grow = g + tok[s] * width;
        const scalar_t* yrow = yv + s * width;
        if (gy) {
          const acc_t scale = static_cast<acc_t>(w[s]);
          scalar_t* out = gy + s * width;
          for (int64_t c = 0; c < width; ++c)
            out[c] = static_cast<scalar_t>(scale * static_cast<acc_t>(grow[c]));
        }
        if (gw) {
          acc_t dot = 0;
          for (int64_t c = 0; c < width; ++c)
            dot += static_cast<acc_t>(grow[c]) * static_cast<acc_t>(yrow[c]);
          gw[s] = static_cast<scalar_t>(dot);
        }
      }
    });
  });
}

// The plan's index tensors travel through autograd as saved tensors; the plan itself is not kept.
DispatchPlan index_view(const at::Tensor& token, const at::Tensor& slots_by_token,
                        const at::Tensor& token_offsets) {
  DispatchPlan plan;
  plan.num_tokens = token_offsets.size(0) - 1;
  plan.token = token;
  plan.slots_by_token = slots_by_token;
  plan.token_offsets = token_offsets;
  return plan;
}

struct GatherRowsFunction : public torch::autograd::Function<GatherRowsFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& token,
                            const at::Tensor& slots_by_token, const at::Tensor& token_offsets) {
    ctx->save_for_backward({token, slots_by_token, token_offsets});
    ctx->saved_data["x_shape"] = x.sizes().vec();
    at::Tensor xc = x.contiguous();
    at::Tensor out = at::empty(with_rows(xc, token.size(0)), xc.options());
    gather_kernel(xc, token, out);
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const DispatchPlan plan = index_view(saved[0], saved[1], saved[2]);
    at::Tensor grad = grads[0].contiguous();
    at::Tensor grad_x = at::empty(ctx->saved_data["x_shape"].toIntVector(), grad.options());
    sum_slots_per_token(grad, /*weight=*/{}, plan, grad_x);
    return {grad_x, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

struct CombineRowsFunction : public torch::autograd::Function<CombineRowsFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& y, const at::Tensor& weight,
                            const at::Tensor& token, const at::Tensor& slots_by_token,
                            const at::Tensor& token_offsets) {
    at::Tensor yc = y.contiguous(), wc = weight.contiguous();
    ctx->save_for_backward({yc, wc, token});
    const DispatchPlan plan = index_view(token, slots_by_token, token_offsets);
    at::Tensor out = at::empty(with_rows(yc, plan.num_tokens), yc.options());
    sum_slots_per_token(yc, wc, plan, out);
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &y = saved[0], &weight = saved[1], &token = saved[2];
    at::Tensor grad = grads[0].contiguous();
    at::Tensor grad_y = ctx->needs_input_grad(0) ? at::empty_like(y) : at::Tensor();
    at::Tensor grad_w = ctx->needs_input_grad(1) ? at::empty_like(weight) : at::Tensor();
    combine_backward_kernel(grad, y, weight, token, grad_y, grad_w);
    return {grad_y, grad_w, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor gather_rows(const at::Tensor& x, const DispatchPlan& plan) {
  TORCH_CHECK(x.dim() >= 1 && x.size(0) == plan.num_tokens, "gather_rows: input has ",
              x.dim() >= 1 ? x.size(0) : 0, " rows but the plan routes ", plan.num_tokens,
              " tokens");
  if (!x.device().is_cpu()) return x.index_select(0, plan.token);
  return GatherRowsFunction::apply(x, plan.token, plan.slots_by_token, plan.token_offsets);
}

at::Tensor combine_rows(const at::Tensor& y, const at::Tensor& weight, const DispatchPlan& plan) {
  TORCH_CHECK(y.dim() >= 1 && y.size(0) == plan.num_slots(), "combine_rows: expert output has ",
              y.dim() >= 1 ? y.size(0) : 0, " rows but the plan has ", plan.num_slots(), " slots");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == plan.num_slots(),
              "combine_rows: weight must be (S=", plan.num_slots(), "), got ", weight.sizes());
  at::Tensor w = weight.to(y.scalar_type());
  if (!y.device().is_cpu()) {
    std::vector<int64_t> scale_shape(y.dim(), 1);
    scale_shape[0] = plan.num_slots();
    return at::zeros(with_rows(y, plan.num_tokens), y.options())
        .index_add(0, plan.token, y * w.view(scale_shape));
  }
  return CombineRowsFunction::apply(y, w, plan.token, plan.slots_by_token, plan.token_offsets);
}

}  // namespace moelab::nn
