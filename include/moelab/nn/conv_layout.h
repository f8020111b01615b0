// The memory layout a CPU convolution runs fastest in. LibTorch's CPU convolutions are oneDNN's,
// which compute NCHW tensors in a layout blocked by 16 channels (AVX-512) and pad the channels up
// to a multiple of 16: a 17 -> 33 channel 3x3 convolution computes 32 -> 48 channels, 2.7x its
// work, and reorders its input and output each call. Channels-last (NHWC) tensors run without
// padding. Measured on 2026-11-27 (AMD EPYC, Zen 4, 2 threads, oneDNN 2.6, 128 images of 14x14,
// forward and backward): 17 -> 33 channels 6.6-13.4 ms in NCHW, 3.6-7.5 ms channels-last; 8 -> 16
// at 28x28 12 ms, 4.5-5 ms; 16 -> 32 and 32 -> 64 about the same either way; 1 -> 32 at 28x28
// 1.9 ms in NCHW but 13.8 ms channels-last (one input channel is read in place in NCHW).
#pragma once

#include <ATen/ATen.h>

namespace moelab::nn {

/// x (N, C, H, W) in channels-last memory when a CPU float32 convolution from C to
/// `out_channels` channels runs faster so (C > 1, and C or out_channels not a multiple of 16),
/// else x unchanged. The values and the shape are x's either way; LibTorch keeps the layout
/// through the convolution, its backward pass and elementwise operations.
at::Tensor in_fast_conv_layout(const at::Tensor& x, int64_t out_channels);

}  // namespace moelab::nn
