// The row kernels written once over a lane type `Ops` (row_kernels.h says what each computes).
// Each instruction set's file defines MOELAB_ROW_ISA (the namespace its instantiations live in,
// so versions compiled with different flags never merge) and its Ops, then includes this file:
//   struct Ops { using V = ...; static constexpr int64_t kLanes; set1, load, store (float and
//               bf16 bits), add, sub, mul, div, max, sqrt, exp, reduce_max, reduce_add };
// Rows are processed kLanes at a time; the last cols % kLanes elements one at a time with
// std::exp (a few ulp from the vector exp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "row_kernels.h"

#ifndef MOELAB_ROW_ISA
#error "define MOELAB_ROW_ISA before including row_kernels_impl.h"
#endif

namespace moelab::nn::internal::MOELAB_ROW_ISA {

inline float bf16_to_float(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Round to nearest even, NaN to the quiet NaN 0x7FC0: c10::BFloat16's rule.
inline uint16_t float_to_bf16(float f) {
  if (std::isnan(f)) return 0x7FC0;
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float load_one(const float* p) { return *p; }
inline float load_one(const uint16_t* p) { return bf16_to_float(*p); }
inline void store_one(float* p, float v) { *p = v; }
inline void store_one(uint16_t* p, float v) { *p = float_to_bf16(v); }

inline float sigmoid_one(float x) { return 1.0f / (1.0f + std::exp(-x)); }

template <class Ops, class T>
float softmax_cross_entropy(T* row, int64_t cols, int64_t target, bool gradient, float* scratch) {
  using V = typename Ops::V;
  constexpr int64_t kLanes = Ops::kLanes;
  const int64_t body = cols - cols % kLanes;
  // Pass 1: the row's maximum. NaN is skipped here and reaches the sum (and the nll) in pass 2.
  V lanes_max = Ops::set1(-std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < body; i += kLanes) lanes_max = Ops::max(lanes_max, Ops::load(row + i));
  float max = Ops::reduce_max(lanes_max);
  for (int64_t i = body; i < cols; ++i) max = std::max(max, load_one(row + i));
  // Pass 2: exp(x - max), summed (and kept for pass 3 when the gradient is asked for).
  const V max_v = Ops::set1(max);
  V lanes_sum = Ops::set1(0.0f);
  for (int64_t i = 0; i < body; i += kLanes) {
    const V e = Ops::exp(Ops::sub(Ops::load(row + i), max_v));
    if (gradient) Ops::store(scratch + i, e);
    lanes_sum = Ops::add(lanes_sum, e);
  }
  float sum = Ops::reduce_add(lanes_sum);
  for (int64_t i = body; i < cols; ++i) {
    const float e = std::exp(load_one(row + i) - max);
    if (gradient) scratch[i] = e;
    sum += e;
  }
  const float nll = max + std::log(sum) - load_one(row + target);
  if (!gradient) return nll;
  // Pass 3: softmax - onehot(target), over the logits.
  const float inverse = 1.0f / sum;
  const V inverse_v = Ops::set1(inverse);
  for (int64_t i = 0; i < body; i += kLanes) Ops::store(row + i, Ops::mul(Ops::load(scratch + i), inverse_v));
  for (int64_t i = body; i < cols; ++i) store_one(row + i, scratch[i] * inverse);
  store_one(row + target, scratch[target] * inverse - 1.0f);
  return nll;
}

template <class Ops, class T>
void swiglu_forward(const T* gate, const T* up, T* out, int64_t n) {
  using V = typename Ops::V;
  constexpr int64_t kLanes = Ops::kLanes;
  const int64_t body = n - n % kLanes;
  const V one = Ops::set1(1.0f), zero = Ops::set1(0.0f);
  for (int64_t i = 0; i < body; i += kLanes) {
    const V g = Ops::load(gate + i);
    // silu(g) = g / (1 + exp(-g)), as LibTorch writes it.
    const V silu = Ops::div(g, Ops::add(one, Ops::exp(Ops::sub(zero, g))));
    Ops::store(out + i, Ops::mul(silu, Ops::load(up + i)));
  }
  for (int64_t i = body; i < n; ++i) {
    const float g = load_one(gate + i);
    store_one(out + i, g / (1.0f + std::exp(-g)) * load_one(up + i));
  }
}

template <class Ops, class T>
void swiglu_backward(const T* gate, const T* up, const T* grad, T* hidden, T* grad_gate, T* grad_up,
                     int64_t n) {
  using V = typename Ops::V;
  constexpr int64_t kLanes = Ops::kLanes;
  const int64_t body = n - n % kLanes;
  const V one = Ops::set1(1.0f), zero = Ops::set1(0.0f);
  for (int64_t i = 0; i < body; i += kLanes) {
    const V g = Ops::load(gate + i), u = Ops::load(up + i), dy = Ops::load(grad + i);
    const V sigmoid = Ops::div(one, Ops::add(one, Ops::exp(Ops::sub(zero, g))));
    const V silu = Ops::mul(g, sigmoid);
    Ops::store(hidden + i, Ops::mul(silu, u));
    Ops::store(grad_up + i, Ops::mul(dy, silu));
    // silu'(g) = sigmoid (1 + g (1 - sigmoid)), LibTorch's silu_backward.
    const V d_silu = Ops::mul(sigmoid, Ops::add(one, Ops::mul(g, Ops::sub(one, sigmoid))));
    Ops::store(grad_gate + i, Ops::mul(Ops::mul(dy, u), d_silu));
  }
  for (int64_t i = body; i < n; ++i) {
    const float g = load_one(gate + i), u = load_one(up + i), dy = load_one(grad + i);
    const float sigmoid = sigmoid_one(g), silu = g * sigmoid;
    store_one(hidden + i, silu * u);
    store_one(grad_up + i, dy * silu);
    store_one(grad_gate + i, dy * u * (sigmoid * (1.0f + g * (1.0f - sigmoid))));
  }
}

template <class Ops>
bool all_finite(const float* x, int64_t n) {
  using V = typename Ops::V;
  constexpr int64_t kLanes = Ops::kLanes;
  const int64_t body = n - n % kLanes;
  // x - x is 0 for a finite x and NaN otherwise; NaN survives every sum.
  V lanes = Ops::set1(0.0f);
  for (int64_t i = 0; i < body; i += kLanes) {
    const V v = Ops::load(x + i);
    lanes = Ops::add(lanes, Ops::sub(v, v));
  }
  float sum = Ops::reduce_add(lanes);
  for (int64_t i = body; i < n; ++i) sum += x[i] - x[i];
  return sum == 0.0f;
}

template <class Ops>
void adamw(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
           const AdamWCoefficients& c) {
  using V = typename Ops::V;
  constexpr int64_t kLanes = Ops::kLanes;
  const int64_t body = n - n % kLanes;
  const V beta1 = Ops::set1(c.beta1), one_minus_beta1 = Ops::set1(c.one_minus_beta1);
  const V beta2 = Ops::set1(c.beta2), one_minus_beta2 = Ops::set1(c.one_minus_beta2);
  const V sqrt_bc2 = Ops::set1(c.sqrt_bias_correction2), eps = Ops::set1(c.eps);
  const V neg_step = Ops::set1(c.neg_step), decay = Ops::set1(c.decay);
  for (int64_t i = 0; i < body; i += kLanes) {
    const V g = Ops::load(grad + i);
    const V m = Ops::add(Ops::mul(Ops::load(exp_avg + i), beta1), Ops::mul(one_minus_beta1, g));
    const V v = Ops::add(Ops::mul(Ops::load(exp_avg_sq + i), beta2),
                         Ops::mul(Ops::mul(one_minus_beta2, g), g));
    const V denominator = Ops::add(Ops::div(Ops::sqrt(v), sqrt_bc2), eps);
    V p = Ops::load(param + i);
    if (c.decays) p = Ops::mul(p, decay);
    Ops::store(exp_avg + i, m);
    Ops::store(exp_avg_sq + i, v);
    Ops::store(param + i, Ops::add(p, Ops::mul(neg_step, Ops::div(m, denominator))));
  }
  for (int64_t i = body; i < n; ++i) {
    const float g = grad[i];
    const float m = exp_avg[i] * c.beta1 + c.one_minus_beta1 * g;
    const float v = exp_avg_sq[i] * c.beta2 + c.one_minus_beta2 * g * g;
    const float denominator = std::sqrt(v) / c.sqrt_bias_correction2 + c.eps;
    const float p = c.decays ? param[i] * c.decay : param[i];
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    param[i] = p + c.neg_step * (m / denominator);
  }
}

// constexpr, so the tables are constant-initialised (usable from any static initialiser).
template <class Ops>
constexpr RowKernels make_row_kernels(const char* isa) {
  return RowKernels{isa,
                    &softmax_cross_entropy<Ops, float>,
                    &softmax_cross_entropy<Ops, uint16_t>,
                    &swiglu_forward<Ops, float>,
                    &swiglu_forward<Ops, uint16_t>,
                    &swiglu_backward<Ops, float>,
                    &swiglu_backward<Ops, uint16_t>,
                    &all_finite<Ops>,
                    &adamw<Ops>};
}

}  // namespace moelab::nn::internal::MOELAB_ROW_ISA
