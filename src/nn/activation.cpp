#include "moelab/nn/activation.h"

namespace moelab::nn {

bool is_gated(Activation activation) { return activation == Activation::kSwiGLU; }

Activation parse_activation(const std::string& name) {
  if (name == "relu") return Activation::kReLU;
  if (name == "gelu") return Activation::kGELU;
  if (name == "silu") return Activation::kSiLU;
  if (name == "swiglu") return Activation::kSwiGLU;
  TORCH_CHECK(false, "activation: unknown name '", name,
              "'; expected one of relu, gelu, silu, swiglu");
}

std::string to_string(Activation activation) {
  switch (activation) {
    case Activation::kReLU: return "relu";
    case Activation::kGELU: return "gelu";
    case Activation::kSiLU: return "silu";
    case Activation::kSwiGLU: return "swiglu";
  }
  TORCH_INTERNAL_ASSERT(false, "unhandled Activation");
}

at::Tensor activate(const at::Tensor& h, Activation activation) {
  switch (activation) {
    case Activation::kReLU: return at::relu(h);
    case Activation::kGELU: return at::gelu(h);
    case Activation::kSiLU:
    case Activation::kSwiGLU: return at::silu(h);
  }
  TORCH_INTERNAL_ASSERT(false, "unhandled Activation");
}

at::Tensor activate_backward(const at::Tensor& grad, const at::Tensor& h, Activation activation) {
  switch (activation) {
    case Activation::kReLU: return at::threshold_backward(grad, h, 0);
    case Activation::kGELU: return at::gelu_backward(grad, h, "none");
    case Activation::kSiLU:
    case Activation::kSwiGLU: return at::silu_backward(grad, h);
  }
  TORCH_INTERNAL_ASSERT(false, "unhandled Activation");
}

}  // namespace moelab::nn
