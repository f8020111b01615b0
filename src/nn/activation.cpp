#include "moelab/nn/activation.h"

#include <ATen/Parallel.h>

#include "nn/internal/row_kernels.h"

namespace moelab::nn {

namespace {

// Rows per parallel task: about 32k elements, so small inputs stay on one thread.
int64_t grain_rows(int64_t row_elements) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(row_elements, 1)); }

// The fused kernels take float32 or bfloat16 rows with unit stride along the row.
bool fused_rows(std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors) {
    if (t->dim() != 2 || t->stride(1) != 1 || t->device().type() != at::kCPU ||
        (t->scalar_type() != at::kFloat && t->scalar_type() != at::kBFloat16) ||
        t->scalar_type() != (*tensors.begin())->scalar_type()) {
      return false;
    }
  }
  return true;
}

template <typename T>
T* row_pointer(const at::Tensor& t, int64_t row) {
  return static_cast<T*>(t.data_ptr()) + row * t.stride(0);
}

}  // namespace

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


at::Tensor swiglu_hidden(const at::Tensor& h, int64_t d_ff) {
  TORCH_CHECK(h.dim() == 2 && h.size(1) == 2 * d_ff, "swiglu_hidden: h must be (S, 2F) = (S, ", 2 * d_ff,
              "), got ", h.sizes());
  const at::Tensor gate = h.narrow(1, 0, d_ff), up = h.narrow(1, d_ff, d_ff);
  if (!fused_rows({&h})) return at::silu(gate).mul_(up);
  at::Tensor hidden = at::empty({h.size(0), d_ff}, h.options());
  const auto& kernels = internal::row_kernels();
  const bool bf16 = h.scalar_type() == at::kBFloat16;
  at::parallel_for(0, h.size(0), grain_rows(d_ff), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      if (bf16) {
        kernels.swiglu_forward_bf16(row_pointer<uint16_t>(gate, r), row_pointer<uint16_t>(up, r),
                                    row_pointer<uint16_t>(hidden, r), d_ff);
      } else {
        kernels.swiglu_forward_f32(row_pointer<float>(gate, r), row_pointer<float>(up, r),
                                   row_pointer<float>(hidden, r), d_ff);
      }
    }
  });
  return hidden;
}

SwiGLUGradient swiglu_backward(const at::Tensor& grad_hidden, const at::Tensor& h, int64_t d_ff) {
  TORCH_CHECK(h.dim() == 2 && h.size(1) == 2 * d_ff && grad_hidden.dim() == 2 &&
                  grad_hidden.size(0) == h.size(0) && grad_hidden.size(1) == d_ff,
              "swiglu_backward: h (S, 2F) and grad_hidden (S, F) expected for F = ", d_ff, ", got ",
              h.sizes(), " and ", grad_hidden.sizes());
  const at::Tensor gate = h.narrow(1, 0, d_ff), up = h.narrow(1, d_ff, d_ff);
  SwiGLUGradient result;
  result.grad_h = at::empty_like(h, at::MemoryFormat::Contiguous);
  at::Tensor grad_gate = result.grad_h.narrow(1, 0, d_ff), grad_up = result.grad_h.narrow(1, d_ff, d_ff);
  if (!fused_rows({&h, &grad_hidden})) {
    const at::Tensor silu = at::silu(gate);
    result.hidden = silu * up;
    at::mul_out(grad_up, grad_hidden, silu);
    grad_gate.copy_(at::silu_backward(grad_hidden * up, gate));
    return result;
  }
  result.hidden = at::empty({h.size(0), d_ff}, h.options());
  const auto& kernels = internal::row_kernels();
  const bool bf16 = h.scalar_type() == at::kBFloat16;
  at::parallel_for(0, h.size(0), grain_rows(d_ff), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      if (bf16) {
        kernels.swiglu_backward_bf16(row_pointer<uint16_t>(gate, r), row_pointer<uint16_t>(up, r),
                                     row_pointer<uint16_t>(grad_hidden, r), row_pointer<uint16_t>(result.hidden, r),
                                     row_pointer<uint16_t>(grad_gate, r), row_pointer<uint16_t>(grad_up, r), d_ff);
      } else {
        kernels.swiglu_backward_f32(row_pointer<float>(gate, r), row_pointer<float>(up, r),
                                    row_pointer<float>(grad_hidden, r), row_pointer<float>(result.hidden, r),
                                    row_pointer<float>(grad_gate, r), row_pointer<float>(grad_up, r), d_ff);
      }
    }
  });
  return result;
}

}  // namespace moelab::nn
