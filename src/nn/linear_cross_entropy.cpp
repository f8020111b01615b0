#include "moelab/nn/linear_cross_entropy.h"

#include <torch/autograd.h>

namespace moelab::nn {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Rows [start, start + n): the chunk's logits turned in place into d nll / d logits
// (softmax - onehot, 0 on rows without a target); writes the chunk's nll.
at::Tensor chunk_logit_gradient(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& targets,
                                at::Tensor* nll) {
  at::Tensor logits = at::mm(h, weight.t());  // (n, V)
  const at::Tensor lse = logits.logsumexp(1, /*keepdim=*/true);
  const at::Tensor valid = targets.ge(0).unsqueeze(1);
  const at::Tensor index = targets.clamp_min(0).unsqueeze(1);
  if (nll) *nll = ((lse - logits.gather(1, index)) * valid).squeeze(1);
  logits.sub_(lse).exp_();
  logits.scatter_add_(1, index, -at::ones_like(index, logits.options()));
  return logits.mul_(valid);
}

struct LinearCrossEntropy : public torch::autograd::Function<LinearCrossEntropy> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& targets, int64_t chunk_rows) {
    const at::Tensor h = hidden.to(at::kFloat).contiguous(), w = weight.to(at::kFloat).contiguous();
    const int64_t rows = h.size(0);
    const bool gradients = hidden.requires_grad() || weight.requires_grad();
    at::Tensor nll = at::empty({rows}, h.options());
    at::Tensor grad_hidden, grad_weight;
    if (gradients) {
      grad_hidden = at::empty_like(h);
      grad_weight = at::zeros_like(w);
    }
    for (int64_t start = 0; start < rows; start += chunk_rows) {
      const int64_t n = std::min(chunk_rows, rows - start);
      const at::Tensor hc = h.narrow(0, start, n), tc = targets.narrow(0, start, n);
      if (!gradients) {
        // Evaluation: the nll alone.
        const at::Tensor logits = at::mm(hc, w.t());
        const at::Tensor index = tc.clamp_min(0).unsqueeze(1);
        nll.narrow(0, start, n).copy_(((logits.logsumexp(1, true) - logits.gather(1, index)) *
                                       tc.ge(0).unsqueeze(1)).squeeze(1));
        continue;
      }
      at::Tensor chunk_nll;
      const at::Tensor d_logits = chunk_logit_gradient(hc, w, tc, &chunk_nll);
      nll.narrow(0, start, n).copy_(chunk_nll);
      at::Tensor rows_out = grad_hidden.narrow(0, start, n);
      at::mm_out(rows_out, d_logits, w);
      grad_weight.addmm_(d_logits.t(), hc);
    }
    ctx->save_for_backward({h, w, targets});
    ctx->saved_data["grad_hidden"] = grad_hidden;
    ctx->saved_data["grad_weight"] = grad_weight;
    ctx->saved_data["chunk_rows"] = chunk_rows;
    ctx->saved_data["hidden_type"] = static_cast<int64_t>(hidden.scalar_type());
    ctx->saved_data["weight_type"] = static_cast<int64_t>(weight.scalar_type());
    return nll;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& h = saved[0];
    const at::Tensor& w = saved[1];
    const at::Tensor& targets = saved[2];
    const at::Tensor g = grad_outputs[0].to(at::kFloat).contiguous();  // (N)
    const at::Tensor grad_hidden = ctx->saved_data["grad_hidden"].toTensor();
    at::Tensor grad_weight = ctx->saved_data["grad_weight"].toTensor();
    const auto hidden_type = static_cast<at::ScalarType>(ctx->saved_data["hidden_type"].toInt());
    const auto weight_type = static_cast<at::ScalarType>(ctx->saved_data["weight_type"].toInt());
    const at::Tensor valid = targets.ge(0);
    const at::Tensor g_valid = g.masked_select(valid);
    const at::Tensor d_hidden = (grad_hidden * g.unsqueeze(1)).to(hidden_type);
    at::Tensor d_weight;
    if (g_valid.numel() == 0) {
      d_weight = at::zeros_like(w);
    } else if (g_valid.max().item<float>() == g_valid.min().item<float>()) {
      d_weight = grad_weight * g_valid[0];
    } else {
      // Rows weighted differently: sum_r g_r (softmax_r - onehot_r)^T h_r, recomputed.
      const int64_t chunk_rows = ctx->saved_data["chunk_rows"].toInt();
      d_weight = at::zeros_like(w);
      for (int64_t start = 0; start < h.size(0); start += chunk_rows) {
        const int64_t n = std::min(chunk_rows, h.size(0) - start);
        const at::Tensor hc = h.narrow(0, start, n);
        const at::Tensor d_logits =
            chunk_logit_gradient(hc, w, targets.narrow(0, start, n), nullptr).mul_(g.narrow(0, start, n).unsqueeze(1));
        d_weight.addmm_(d_logits.t(), hc);
      }
    }
    return {d_hidden, d_weight.to(weight_type), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight,
                                const at::Tensor& targets, int64_t chunk_rows) {
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1),
              "linear_cross_entropy: hidden (N, D) and weight (V, D) expected, got ", hidden.sizes(),
              " and ", weight.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == hidden.size(0) && targets.scalar_type() == at::kLong,
              "linear_cross_entropy: targets must be (N) int64, got ", targets.scalar_type(), " ",
              targets.sizes());
  TORCH_CHECK(chunk_rows >= 1, "linear_cross_entropy: chunk_rows must be >= 1");
  return LinearCrossEntropy::apply(hidden, weight, targets.contiguous(), chunk_rows);
}

}  // namespace moelab::nn
