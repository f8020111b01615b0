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

}  // namespace moelab::nn
