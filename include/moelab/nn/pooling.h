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

/// relu_max_pool2x2(conv2d(x, weight, bias, stride 1, padding 1)) for a 3x3 kernel: a CNN's
/// first stage. x (N, C_in, H, W), weight (C_out, C_in, 3, 3), bias (C_out) or undefined.
///
/// On the CPU, in float32 or float64 outside autocast, for images (at most 4 channels, needing
/// no gradient) the stage runs fused, an image at a time: its convolution is one GEMM against
/// the image's shifted copies (K = 9 C_in + 1, the bias as a row of ones), pooled while in cache;
/// backward unpools into the same cache and takes the weights' gradient by one GEMM per image,
/// summed in fixed groups of images so the result does not depend on the thread count. A 1 ->
/// 32 channel stage on 128 images of 28x28 spent 3.8 ms a step in oneDNN's convolution (padded to
/// a 16-channel blocked layout and reordered back to NCHW each way), a separate pooling pass and
/// their backward (AMD EPYC, 2 threads, 2026-11-27). Elsewhere it is the composition, the
/// convolution in in_fast_conv_layout (conv_layout.h).
at::Tensor conv3x3_relu_max_pool2x2(const at::Tensor& x, const at::Tensor& weight,
                                    const at::Tensor& bias);

}  // namespace moelab::nn
