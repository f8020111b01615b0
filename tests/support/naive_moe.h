// Test-only references: a naive per-token MoE (a loop over tokens and their choices, plain ATen
// ops, autograd by LibTorch) and a finite-difference gradient check. Slow on purpose: they are
// what the fast path must agree with.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <vector>

#include "moelab/nn/activation.h"
#include "moelab/nn/experts.h"

namespace moelab::testing {

/// One expert's FFN on one row x (D): w1, w3: (F, D), w2: (D, F); b* may be undefined.
inline at::Tensor naive_expert(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w3,
                               const at::Tensor& w2, const at::Tensor& b1, const at::Tensor& b3,
                               const at::Tensor& b2, nn::Activation activation) {
  at::Tensor h1 = at::matmul(w1, x);
  if (b1.defined()) h1 = h1 + b1;
  at::Tensor hidden = nn::activate(h1, activation);
  if (w3.defined()) {
    at::Tensor h3 = at::matmul(w3, x);
    if (b3.defined()) h3 = h3 + b3;
    hidden = hidden * h3;
  }
  at::Tensor y = at::matmul(w2, hidden);
  return b2.defined() ? y + b2 : y;
}

/// Expert weights split the textbook way: w1, w3 (E, F, D); w2 (E, D, F); b* or undefined.
struct ExpertWeights {
  at::Tensor w1, w3, w2, b1, b3, b2;
  at::Tensor slice(const at::Tensor& t, int64_t e) const { return t.defined() ? t[e] : t; }
};

/// Views into FFNExperts' fused parameters, so gradients through them reach w_in and w_out.
inline ExpertWeights split_weights(const nn::FFNExperts& experts) {
  const int64_t f = experts->options.d_ff();
  const bool gated = nn::is_gated(experts->options.activation());
  ExpertWeights w;
  w.w1 = experts->w_in.narrow(1, 0, f);
  w.w2 = experts->w_out;
  if (gated) w.w3 = experts->w_in.narrow(1, f, f);
  if (experts->b_in.defined()) {
    w.b1 = experts->b_in.narrow(1, 0, f);
    w.b2 = experts->b_out;
    if (gated) w.b3 = experts->b_in.narrow(1, f, f);
  }
  return w;
}

/// out[t] = sum over j with kept[t, j] of weights[t, j] * expert_{indices[t, j]}(x[t]).
inline at::Tensor naive_moe(const at::Tensor& x, const at::Tensor& indices,
                            const at::Tensor& weights, const at::Tensor& kept,
                            const ExpertWeights& w, nn::Activation activation) {
  std::vector<at::Tensor> rows;
  for (int64_t t = 0; t < x.size(0); ++t) {
    at::Tensor acc = at::zeros({x.size(1)}, x.options());
    for (int64_t j = 0; j < indices.size(1); ++j) {
      if (kept.defined() && !kept[t][j].item<bool>()) continue;
      const int64_t e = indices[t][j].item<int64_t>();
      if (e < 0) continue;
      acc = acc + weights[t][j] * naive_expert(x[t], w.slice(w.w1, e), w.slice(w.w3, e),
                                               w.slice(w.w2, e), w.slice(w.b1, e),
                                               w.slice(w.b3, e), w.slice(w.b2, e), activation);
    }
    rows.push_back(acc);
  }
  if (rows.empty()) return at::zeros({0, x.size(1)}, x.options());
  return at::stack(rows);
}

/// Central-difference check of d(sum(f(inputs) * probe))/d input against autograd, in double.
/// Returns the largest absolute difference over all inputs that require grad.
inline double max_gradient_error(const std::function<at::Tensor(const std::vector<at::Tensor>&)>& f,
                                 std::vector<at::Tensor> inputs, double eps = 1e-6) {
  at::Tensor probe;
  auto loss = [&](const std::vector<at::Tensor>& in) {
    at::Tensor out = f(in);
    if (!probe.defined()) {
      probe = at::randn(out.sizes(), at::TensorOptions().dtype(at::kDouble));
    }
    return (out * probe).sum();
  };
  std::vector<at::Tensor> differentiable;
  for (auto& t : inputs) {
    if (t.requires_grad()) differentiable.push_back(t);
  }
  auto analytic = torch::autograd::grad({loss(inputs)}, differentiable, {}, false, false, true);
  double worst = 0;
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < differentiable.size(); ++i) {
    at::Tensor flat = differentiable[i].view({-1});
    for (int64_t p = 0; p < flat.numel(); ++p) {
      const double original = flat[p].item<double>();
      flat[p] = original + eps;
      const double plus = loss(inputs).item<double>();
      flat[p] = original - eps;
      const double minus = loss(inputs).item<double>();
      flat[p] = original;
      const double numeric = (plus - minus) / (2 * eps);
      const double exact = analytic[i].defined() ? analytic[i].view({-1})[p].item<double>() : 0.0;
      worst = std::max(worst, std::abs(numeric - exact));
    }
  }
  return worst;
}

/// Expects `statement` to throw c10::Error whose message contains `fragment`.
#define EXPECT_THROWS_WITH(statement, fragment)                                        \
  do {                                                                                 \
    try {                                                                              \
      (void)(statement);                                                               \
      ADD_FAILURE() << "expected an error containing: " << (fragment);                 \
    } catch (const c10::Error& e) {                                                    \
      EXPECT_NE(std::string(e.what_without_backtrace()).find(fragment), std::string::npos) \
          << "message was: " << e.what_without_backtrace();                            \
    }                                                                                  \
  } while (0)

}  // namespace moelab::testing
