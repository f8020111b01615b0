// ReLU followed by 2x2 max pooling (stride 2, floor), fused in one pass each way. LibTorch
// 1.13's CPU max_pool2d_with_indices (NCHW) took 8.2 ms of a 19 ms training step of the vision
// study's CNN expert on 128 images, and the ReLU before it and both backward passes (int64
// indices, a zeroed gradient, then a scatter) 4 ms more (legacy profiler, 2026-11-27, 2 threads).
// Here the forward pass reads each input once and writes the output and a byte per window; the
// backward pass writes each input gradient once.
//
// Exactly max_pool2d(relu(x), 2): max and ReLU commute, a window's maximum is its first maximum in
// row-major order (NaN wins, as in LibTorch), and the gradient reaches that element unless the
// output is <= 0, as relu's threshold_backward decides.
#pragma once

#include <ATen/ATen.h>

namespace moelab::nn {

/// x (N, C, H, W) float32/float64/bfloat16 -> (N, C, H / 2, W / 2), differentiable.
at::Tensor relu_max_pool2x2(const at::Tensor& x);

}  // namespace moelab::nn
