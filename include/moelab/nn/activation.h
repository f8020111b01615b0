// Expert activations as plain functions, shared by the dense FFN, the stacked experts and their
// hand-written backward. SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer") is the gated
// form silu(x W1) * (x W3); the others are the ungated act(x W1).
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace moelab::nn {

enum class Activation { kReLU, kGELU, kSiLU, kSwiGLU };

/// True for gated activations, which have a second input projection (W3).
bool is_gated(Activation activation);

/// Parses "relu", "gelu", "silu" or "swiglu"; throws naming the valid choices otherwise.
Activation parse_activation(const std::string& name);
std::string to_string(Activation activation);

/// The pointwise non-linearity: relu / gelu (exact, erf) / silu; SwiGLU uses silu.
at::Tensor activate(const at::Tensor& h, Activation activation);

/// d activate(h) / dh applied to `grad`.
at::Tensor activate_backward(const at::Tensor& grad, const at::Tensor& h, Activation activation);

/// SwiGLU's hidden silu(gate) * up (S, F) from the gated projection's output h (S, 2F) = [gate |
/// up], in one fused pass for float32 and bfloat16 (src/nn/internal/row_kernels.h); other types
/// through LibTorch's ops.
at::Tensor swiglu_hidden(const at::Tensor& h, int64_t d_ff);

struct SwiGLUGradient {
  at::Tensor hidden;  // (S, F) silu(gate) * up, recomputed
  at::Tensor grad_h;  // (S, 2F) [d/d gate | d/d up], laid out like h
};

/// The backward of swiglu_hidden for the upstream gradient grad_hidden (S, F), in one pass that
/// also recomputes the hidden (the experts' W2 gradient needs it).
SwiGLUGradient swiglu_backward(const at::Tensor& grad_hidden, const at::Tensor& h, int64_t d_ff);

}  // namespace moelab::nn
