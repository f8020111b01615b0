// Fused elementwise kernels over one contiguous row, for the passes where LibTorch 1.13 is slow
// on these CPUs: a row's softmax cross-entropy and its gradient in one pass set (LibTorch's
// bf16 -> float32 log_softmax and the exp that follows took 25 of 49 ms per 512 x 14,115 chunk
// of the language model's loss), SwiGLU forward / backward (LibTorch's bf16 silu is 3.5 ms,
// its silu_backward 6.9 ms on an (8192, 256) slice: each expert layer paid ~18 ms for them), and
// the finite check and AdamW update of a parameter's gradient (LibTorch's per-op costs, and a
// scalar loop, over the ~70 small tensors of a vision MoE: 2.4 ms of a ~17 ms step).
//
// Raw pointers only: the vector versions are compiled with their own instruction-set flags and
// must not see LibTorch's headers (inline functions compiled for AVX-512 could be picked by the
// linker for every caller). Element types: float32, and bfloat16 as its 16 bits (read by
// shifting, written with round-to-nearest-even as c10::BFloat16 does; NaN -> 0x7FC0). All
// arithmetic is float32; exp is SLEEF's (1 ulp) in the vector versions, std::exp in the scalar
// one, so versions agree to a few ulp, not bit for bit.
#pragma once

#include <cstdint>

namespace moelab::nn::internal {

/// One AdamW step's coefficients (train/optimizer.cpp), per parameter tensor.
struct AdamWCoefficients {
  float beta1, one_minus_beta1, beta2, one_minus_beta2;
  float sqrt_bias_correction2, eps;
  float neg_step;  // -lr / bias_correction1
  float decay;     // 1 - lr * weight_decay
  bool decays;     // weight_decay != 0
};

struct RowKernels {
  /// "avx512", "avx2" or "scalar".
  const char* isa;

  /// Softmax cross-entropy of one row of `cols` logits with class `target` (0 <= target < cols):
  /// returns -log softmax(row)[target]. With `gradient`, overwrites the row with
  /// softmax(row) - onehot(target) (in the row's type), using `scratch` (cols floats).
  float (*softmax_cross_entropy_f32)(float* row, int64_t cols, int64_t target, bool gradient,
                                     float* scratch);
  float (*softmax_cross_entropy_bf16)(uint16_t* row, int64_t cols, int64_t target, bool gradient,
                                      float* scratch);

  /// out[i] = silu(gate[i]) * up[i] for i < n.
  void (*swiglu_forward_f32)(const float* gate, const float* up, float* out, int64_t n);
  void (*swiglu_forward_bf16)(const uint16_t* gate, const uint16_t* up, uint16_t* out, int64_t n);

  /// From the upstream gradient g of hidden = silu(gate) * up: hidden itself (recomputed),
  /// grad_up = g silu(gate) and grad_gate = g up silu'(gate).
  void (*swiglu_backward_f32)(const float* gate, const float* up, const float* grad, float* hidden,
                              float* grad_gate, float* grad_up, int64_t n);
  void (*swiglu_backward_bf16)(const uint16_t* gate, const uint16_t* up, const uint16_t* grad,
                               uint16_t* hidden, uint16_t* grad_gate, uint16_t* grad_up, int64_t n);

  /// Whether none of x[0, n) is NaN or infinite.
  bool (*all_finite_f32)(const float* x, int64_t n);

  /// AdamW on n elements, torch::optim::AdamW's arithmetic: m = beta1 m + (1 - beta1) g,
  /// v = beta2 v + (1 - beta2) g^2, p = p * decay (if decays) + neg_step m / (sqrt(v) / sqrt(bc2) +
  /// eps).
  void (*adamw_f32)(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
                    const AdamWCoefficients& c);
};

/// The fastest version this CPU runs (AVX-512, AVX2 + FMA, else scalar), chosen once.
/// MOELAB_ROW_KERNELS=scalar|avx2|avx512 forces one the CPU supports (tests, benchmarks).
const RowKernels& row_kernels();

/// Every version this build has and this CPU runs, scalar first (tests compare them).
const RowKernels* const* available_row_kernels(int* count);

// The versions themselves; the vector ones exist only in builds with SLEEF on x86-64.
extern const RowKernels kScalarRowKernels;
extern const RowKernels kAvx2RowKernels;
extern const RowKernels kAvx512RowKernels;

}  // namespace moelab::nn::internal
