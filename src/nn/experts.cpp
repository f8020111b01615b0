#include "moelab/nn/experts.h"

#include <torch/autograd.h>

#include <cmath>
#include <numeric>

namespace moelab::nn {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

int64_t total_rows(const std::vector<int64_t>& counts) {
  return std::accumulate(counts.begin(), counts.end(), int64_t{0});
}

// out_e = in_e @ w[e]^T (+ b[e]) for every expert slice; `w` is (E, out, in).
void per_expert_linear(const at::Tensor& in, const std::vector<int64_t>& counts,
                       const at::Tensor& w, const at::Tensor& b, at::Tensor& out) {
  int64_t offset = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    const int64_t n = counts[e];
    if (n == 0) continue;
    at::Tensor out_e = out.narrow(0, offset, n);
    if (b.defined()) {
      at::addmm_out(out_e, b[e], in.narrow(0, offset, n), w[e].t());
    } else {
      at::mm_out(out_e, in.narrow(0, offset, n), w[e].t());
    }
    offset += n;
  }
}

// LibTorch 1.13's custom Function cannot take undefined tensors, so an absent weight (w3 when
// ungated, the biases when off) travels as an empty placeholder. Real weights are never empty
// (E, F, D >= 1); activations can be (S = 0), so only weight slots are ever read as absent.
at::Tensor placeholder_if_absent(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() ? t : at::empty({0}, like.options());
}
at::Tensor absent_if_placeholder(const at::Tensor& t) {
  return t.numel() == 0 ? at::Tensor() : t;
}

struct Saved {
  enum : size_t { kX, kW1, kW3, kW2, kB1, kB3, kB2, kH1, kH3 };
};

struct GroupedFFNFunction : public torch::autograd::Function<GroupedFFNFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w1,
                            const at::Tensor& w3_or_empty, const at::Tensor& w2,
                            const at::Tensor& b1_or_empty, const at::Tensor& b3_or_empty,
                            const at::Tensor& b2_or_empty, std::vector<int64_t> counts,
                            int64_t activation_id) {
    const at::Tensor w3 = absent_if_placeholder(w3_or_empty);
    const at::Tensor b1 = absent_if_placeholder(b1_or_empty);
    const at::Tensor b3 = absent_if_placeholder(b3_or_empty);
    const at::Tensor b2 = absent_if_placeholder(b2_or_empty);
    const auto activation = static_cast<Activation>(activation_id);
    const int64_t rows = x.size(0), d_ff = w1.size(1), d_model = w1.size(2);
    at::Tensor xc = x.contiguous();
    at::Tensor h1 = at::empty({rows, d_ff}, x.options());
    per_expert_linear(xc, counts, w1, b1, h1);
    at::Tensor h3;
    at::Tensor hidden = activate(h1, activation);  // (S, F)
    if (w3.defined()) {
      h3 = at::empty({rows, d_ff}, x.options());
      per_expert_linear(xc, counts, w3, b3, h3);
      hidden.mul_(h3);
    }
    at::Tensor y = at::empty({rows, d_model}, x.options());
    per_expert_linear(hidden, counts, w2, b2, y);
    // The hidden activation is recomputed in backward: one elementwise pass is cheaper here than
    // keeping another (S, F) buffer alive between forward and backward.
    ctx->save_for_backward({xc, w1, w3_or_empty, w2, b1_or_empty, b3_or_empty, b2_or_empty, h1,
                            placeholder_if_absent(h3, x)});
    ctx->saved_data["counts"] = counts;
    ctx->saved_data["activation"] = activation_id;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    for (size_t i : {Saved::kW3, Saved::kB1, Saved::kB3, Saved::kB2}) {
      saved[i] = absent_if_placeholder(saved[i]);
    }
    if (!saved[Saved::kW3].defined()) saved[Saved::kH3] = at::Tensor();
    const at::Tensor &x = saved[Saved::kX], &w1 = saved[Saved::kW1], &w3 = saved[Saved::kW3],
                     &w2 = saved[Saved::kW2], &h1 = saved[Saved::kH1], &h3 = saved[Saved::kH3];
    const bool has_bias = saved[Saved::kB1].defined();
    const std::vector<int64_t> counts = ctx->saved_data["counts"].toIntVector();
    const auto activation = static_cast<Activation>(ctx->saved_data["activation"].toInt());
    const bool gated = w3.defined();
    const int64_t rows = x.size(0), d_ff = w1.size(1);
    at::Tensor grad_y = grads[0].contiguous();  // (S, D)

    at::Tensor act = activate(h1, activation);
    at::Tensor hidden = gated ? act * h3 : act;

    // Weight gradients of experts without rows stay zero.
    at::Tensor grad_w1 = at::zeros_like(w1), grad_w2 = at::zeros_like(w2);
    at::Tensor grad_w3 = gated ? at::zeros_like(w3) : at::Tensor();
    at::Tensor grad_b1, grad_b2, grad_b3;
    if (has_bias) {
      grad_b1 = at::zeros_like(saved[Saved::kB1]);
      grad_b2 = at::zeros_like(saved[Saved::kB2]);
      if (gated) grad_b3 = at::zeros_like(saved[Saved::kB3]);
    }

    // grad_hidden = grad_y @ W2_e ; grad_W2_e = grad_y_e^T @ hidden_e
    at::Tensor grad_hidden = at::empty({rows, d_ff}, x.options());
    int64_t offset = 0;
    for (size_t e = 0; e < counts.size(); ++e) {
      const int64_t n = counts[e];
      if (n == 0) continue;
      at::Tensor gy = grad_y.narrow(0, offset, n);
      at::Tensor gh = grad_hidden.narrow(0, offset, n);
      at::mm_out(gh, gy, w2[e]);
      at::Tensor gw2 = grad_w2[e];
      at::mm_out(gw2, gy.t(), hidden.narrow(0, offset, n));
      if (has_bias) grad_b2[e].copy_(gy.sum(0));
      offset += n;
    }

    at::Tensor grad_h1, grad_h3;
    if (gated) {
      grad_h3 = grad_hidden * act;
      grad_h1 = activate_backward(grad_hidden.mul_(h3), h1, activation);
    } else {
      grad_h1 = activate_backward(grad_hidden, h1, activation);
    }

    at::Tensor grad_x = at::empty_like(x);
    offset = 0;
    for (size_t e = 0; e < counts.size(); ++e) {
      const int64_t n = counts[e];
      if (n == 0) continue;
      at::Tensor xe = x.narrow(0, offset, n);
      at::Tensor g1 = grad_h1.narrow(0, offset, n);
      at::Tensor gx = grad_x.narrow(0, offset, n);
      at::Tensor gw1 = grad_w1[e];
      at::mm_out(gw1, g1.t(), xe);
      at::mm_out(gx, g1, w1[e]);
      if (has_bias) grad_b1[e].copy_(g1.sum(0));
      if (gated) {
        at::Tensor g3 = grad_h3.narrow(0, offset, n);
        at::Tensor gw3 = grad_w3[e];
        at::mm_out(gw3, g3.t(), xe);
        gx.addmm_(g3, w3[e]);
        if (has_bias) grad_b3[e].copy_(g3.sum(0));
      }
      offset += n;
    }
    return {grad_x,  grad_w1, grad_w3,      grad_w2,     grad_b1,
            grad_b3, grad_b2, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor grouped_ffn(const at::Tensor& x, const std::vector<int64_t>& counts,
                       const at::Tensor& w1, const at::Tensor& w3, const at::Tensor& w2,
                       const at::Tensor& b1, const at::Tensor& b3, const at::Tensor& b2,
                       Activation activation) {
  TORCH_CHECK(w1.dim() == 3 && w2.dim() == 3, "grouped_ffn: w1 and w2 must be 3-D, got ",
              w1.sizes(), " and ", w2.sizes());
  const int64_t num_experts = w1.size(0), d_ff = w1.size(1), d_model = w1.size(2);
  TORCH_CHECK(static_cast<int64_t>(counts.size()) == num_experts, "grouped_ffn: counts has ",
              counts.size(), " entries for ", num_experts, " experts");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == d_model, "grouped_ffn: input must be (S, D=", d_model,
              "), got ", x.sizes());
  TORCH_CHECK(total_rows(counts) == x.size(0), "grouped_ffn: counts sum to ", total_rows(counts),
              " but the input has ", x.size(0), " rows");
  TORCH_CHECK(w2.sizes() == at::IntArrayRef({num_experts, d_model, d_ff}),
              "grouped_ffn: w2 must be (E, D, F) = (", num_experts, ", ", d_model, ", ", d_ff,
              "), got ", w2.sizes());
  TORCH_CHECK(is_gated(activation) == w3.defined(), "grouped_ffn: ", to_string(activation),
              is_gated(activation) ? " needs" : " takes no", " w3");
  return GroupedFFNFunction::apply(x, w1, placeholder_if_absent(w3, w1), w2,
                                   placeholder_if_absent(b1, w1), placeholder_if_absent(b3, w1),
                                   placeholder_if_absent(b2, w1), counts,
                                   static_cast<int64_t>(activation));
}

FFNExpertsImpl::FFNExpertsImpl(FFNExpertsOptions options_) : options(std::move(options_)) {
  reset();
}

void FFNExpertsImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.d_model() >= 1, "FFNExperts: d_model (", o.d_model(), ") must be >= 1");
  TORCH_CHECK(o.d_ff() >= 1, "FFNExperts: d_ff (", o.d_ff(), ") must be >= 1");
  TORCH_CHECK(o.num_experts() >= 1, "FFNExperts: num_experts (", o.num_experts(),
              ") must be >= 1");
  const int64_t e = o.num_experts(), d = o.d_model(), f = o.d_ff();
  w1 = register_parameter("w1", at::empty({e, f, d}));
  w2 = register_parameter("w2", at::empty({e, d, f}));
  if (is_gated(o.activation())) w3 = register_parameter("w3", at::empty({e, f, d}));
  if (o.bias()) {
    b1 = register_parameter("b1", at::empty({e, f}));
    b2 = register_parameter("b2", at::empty({e, d}));
    if (is_gated(o.activation())) b3 = register_parameter("b3", at::empty({e, f}));
  }
  reset_parameters();
}

void FFNExpertsImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  const double in_bound = 1.0 / std::sqrt(static_cast<double>(options.d_model()));
  const double hidden_bound = 1.0 / std::sqrt(static_cast<double>(options.d_ff()));
  w1.uniform_(-in_bound, in_bound);
  w2.uniform_(-hidden_bound, hidden_bound);
  if (w3.defined()) w3.uniform_(-in_bound, in_bound);
  if (b1.defined()) b1.uniform_(-in_bound, in_bound);
  if (b2.defined()) b2.uniform_(-hidden_bound, hidden_bound);
  if (b3.defined()) b3.uniform_(-in_bound, in_bound);
}

void FFNExpertsImpl::pretty_print(std::ostream& stream) const {
  stream << "moelab::nn::FFNExperts(num_experts=" << options.num_experts()
         << ", d_model=" << options.d_model() << ", d_ff=" << options.d_ff()
         << ", activation=" << to_string(options.activation()) << ")";
}

at::Tensor FFNExpertsImpl::forward(const at::Tensor& x, const std::vector<int64_t>& counts) {
  return grouped_ffn(x, counts, w1, w3, w2, b1, b3, b2, options.activation());
}

int64_t FFNExpertsImpl::macs_per_row() const {
  const int64_t projections = is_gated(options.activation()) ? 3 : 2;
  return projections * options.d_model() * options.d_ff();
}

ModuleExpertsImpl::ModuleExpertsImpl(std::vector<torch::nn::AnyModule> experts)
    : experts_(std::move(experts)) {
  reset();
}

void ModuleExpertsImpl::reset() {
  TORCH_CHECK(!experts_.empty(), "ModuleExperts: needs at least one expert module");
  for (size_t e = 0; e < experts_.size(); ++e) {
    TORCH_CHECK(!experts_[e].is_empty(), "ModuleExperts: expert ", e, " is empty");
    register_module(std::to_string(e), experts_[e].ptr());
  }
}

at::Tensor ModuleExpertsImpl::forward(const at::Tensor& x, const std::vector<int64_t>& counts) {
  TORCH_CHECK(static_cast<int64_t>(counts.size()) == num_experts(), "ModuleExperts: counts has ",
              counts.size(), " entries for ", num_experts(), " experts");
  TORCH_CHECK(x.dim() >= 1 && total_rows(counts) == x.size(0), "ModuleExperts: counts sum to ",
              total_rows(counts), " but the input has ", x.dim() >= 1 ? x.size(0) : 0, " rows");
  last_rows_.assign(counts.size(), 0);
  if (x.size(0) == 0) return experts_[0].forward<at::Tensor>(x);
  std::vector<at::Tensor> outputs;
  int64_t offset = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    const int64_t n = counts[e];
    if (n == 0) continue;
    at::Tensor y = experts_[e].forward<at::Tensor>(x.narrow(0, offset, n));
    TORCH_CHECK(y.dim() >= 1 && y.size(0) == n, "ModuleExperts: expert ", e, " returned ",
                y.sizes(), " for ", n, " rows; an expert must keep the batch dimension");
    last_rows_[e] = n;
    outputs.push_back(std::move(y));
    offset += n;
  }
  return outputs.size() == 1 ? outputs[0] : at::cat(outputs, 0);
}

}  // namespace moelab::nn
