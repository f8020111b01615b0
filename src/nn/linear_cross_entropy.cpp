#include "moelab/nn/linear_cross_entropy.h"

#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <cstring>
#include <vector>

#include "moelab/util/runtime.h"
#include "nn/internal/row_kernels.h"

namespace moelab::nn {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// log softmax of the chunk's logits, float32 (n, V): the types the row kernel does not take.
at::Tensor chunk_log_probs(const at::Tensor& h, const at::Tensor& weight) {
  return at::log_softmax(at::mm(h, weight.t()), 1, at::kFloat);
}

// nll of each row from its log probabilities, 0 on rows without a target (target < 0).
at::Tensor rows_nll(const at::Tensor& log_probs, const at::Tensor& targets) {
  return log_probs.gather(1, targets.clamp_min(0).unsqueeze(1)).squeeze(1).neg_().mul_(targets.ge(0));
}

// The row kernel takes float32 and bf16 logits in CPU memory.
bool row_kernel_takes(const at::Tensor& h) {
  return h.device().is_cpu() && (h.scalar_type() == at::kFloat || h.scalar_type() == at::kBFloat16);
}

// The chunk's logits h W^T (n, V) in h's type, written into `buffer` (>= n rows, reused across
// chunks: a fresh 14 MB tensor per chunk costs page faults), then replaced row by row, in place,
// with d nll / d logits = softmax - onehot(target) (0 on rows without a target) when `gradient`;
// the chunk's nll goes to `nll` (n) float32. Row kernel for float32 and bf16 logits on the CPU (one
// exp per logit, softmax in float32); LibTorch's log_softmax otherwise (other types, GPUs).
at::Tensor chunk_logits_and_gradient(const at::Tensor& h, const at::Tensor& weight,
                                     const at::Tensor& targets, at::Tensor& buffer, bool gradient,
                                     at::Tensor nll) {
  const int64_t n = h.size(0), vocab = weight.size(0);
  if (!row_kernel_takes(h)) {
    at::Tensor log_probs = chunk_log_probs(h, weight);
    nll.copy_(rows_nll(log_probs, targets));
    if (!gradient) return at::Tensor();
    at::Tensor d_logits = log_probs.exp_().to(h.scalar_type());
    d_logits.scatter_add_(1, targets.clamp_min(0).unsqueeze(1),
                          -at::ones({n, 1}, d_logits.options()));
    return d_logits.mul_(targets.ge(0).unsqueeze(1));
  }
  if (!buffer.defined() || buffer.size(0) < n) buffer = at::empty({n, vocab}, h.options());
  at::Tensor logits = buffer.narrow(0, 0, n);
  at::mm_out(logits, h, weight.t());
  const auto& kernels = internal::row_kernels();
  const bool bf16 = h.scalar_type() == at::kBFloat16;
  const int64_t* target = targets.data_ptr<int64_t>();
  float* nll_out = nll.data_ptr<float>();
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(gradient ? static_cast<size_t>(vocab) : 0);
    for (int64_t r = begin; r < end; ++r) {
      void* row = static_cast<char*>(logits.data_ptr()) + r * vocab * logits.element_size();
      if (target[r] < 0) {
        nll_out[r] = 0.0f;
        if (gradient) std::memset(row, 0, static_cast<size_t>(vocab * logits.element_size()));
      } else if (bf16) {
        nll_out[r] = kernels.softmax_cross_entropy_bf16(static_cast<uint16_t*>(row), vocab, target[r],
                                                        gradient, scratch.data());
      } else {
        nll_out[r] = kernels.softmax_cross_entropy_f32(static_cast<float*>(row), vocab, target[r],
                                                       gradient, scratch.data());
      }
    }
  });
  return logits;
}

// sum += d_logits^T @ h: in float32 when h is float32, else a GEMM in h's type added to the
// float32 sum (each chunk's 512-row sum is accumulated in float32 inside the GEMM).
void accumulate_weight_gradient(at::Tensor& sum, const at::Tensor& d_logits, const at::Tensor& h) {
  if (h.scalar_type() == at::kFloat) {
    sum.addmm_(d_logits.t(), h);
  } else {
    sum.add_(at::mm(d_logits.t(), h));
  }
}

struct LinearCrossEntropy : public torch::autograd::Function<LinearCrossEntropy> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& targets, int64_t chunk_rows) {
    // Under autocast the GEMMs take its type (bf16: oneDNN's AMX kernels where the CPU has them)
    // and accumulate into float32; the softmax and the weight gradient's sum stay float32.
    AutocastDisabled precision;
    const auto gemm_type = precision.matmul_type();
    const at::Tensor h = hidden.to(gemm_type).contiguous(), w = weight.to(gemm_type).contiguous();
    const int64_t rows = h.size(0);
    const bool gradients = hidden.requires_grad() || weight.requires_grad();
    at::Tensor nll = at::empty({rows}, h.options().dtype(at::kFloat));
    at::Tensor grad_hidden, grad_weight;
    if (gradients) {
      grad_hidden = at::empty_like(h);
      grad_weight = at::zeros(w.sizes(), w.options().dtype(at::kFloat));
    }
    at::Tensor buffer;
    for (int64_t start = 0; start < rows; start += chunk_rows) {
      const int64_t n = std::min(chunk_rows, rows - start);
      const at::Tensor hc = h.narrow(0, start, n);
      const at::Tensor d_logits = chunk_logits_and_gradient(hc, w, targets.narrow(0, start, n), buffer,
                                                            gradients, nll.narrow(0, start, n));
      if (!gradients) continue;  // evaluation: the nll alone
      at::Tensor rows_out = grad_hidden.narrow(0, start, n);
      at::mm_out(rows_out, d_logits, w);
      accumulate_weight_gradient(grad_weight, d_logits, hc);
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
    const at::Tensor d_hidden = (grad_hidden.to(at::kFloat) * g.unsqueeze(1)).to(hidden_type);
    at::Tensor d_weight;
    if (g_valid.numel() == 0) {
      d_weight = at::zeros(w.sizes(), w.options().dtype(at::kFloat));
    } else if (g_valid.max().item<float>() == g_valid.min().item<float>()) {
      d_weight = grad_weight * g_valid[0];
    } else {
      // Rows weighted differently: sum_r g_r (softmax_r - onehot_r)^T h_r, recomputed.
      const int64_t chunk_rows = ctx->saved_data["chunk_rows"].toInt();
      d_weight = at::zeros(w.sizes(), w.options().dtype(at::kFloat));
      at::Tensor buffer, unused_nll = at::empty({std::min(chunk_rows, h.size(0))}, g.options());
      for (int64_t start = 0; start < h.size(0); start += chunk_rows) {
        const int64_t n = std::min(chunk_rows, h.size(0) - start);
        const at::Tensor hc = h.narrow(0, start, n);
        const at::Tensor d_logits =
            chunk_logits_and_gradient(hc, w, targets.narrow(0, start, n), buffer, true, unused_nll.narrow(0, 0, n))
                .mul_(g.narrow(0, start, n).unsqueeze(1));
        accumulate_weight_gradient(d_weight, d_logits, hc);
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
  if (targets.numel() > 0) {
    const int64_t largest = targets.max().item<int64_t>();
    TORCH_CHECK(largest < weight.size(0), "linear_cross_entropy: target ", largest,
                " is outside the vocabulary of ", weight.size(0));
  }
  return LinearCrossEntropy::apply(hidden, weight, targets.contiguous(), chunk_rows);
}

}  // namespace moelab::nn
