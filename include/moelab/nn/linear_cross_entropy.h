// The output projection and the cross-entropy of a language model in one pass over row chunks
// (as Liger-Kernel's fused linear cross-entropy does on GPUs): the (N, V) logits are never held
// whole. For a decoder's 4096 tokens and 14k words they are 230 MB, written, read and
// differentiated by separate passes in the unfused form, and on CPU each fresh buffer of that size
// costs page faults too (glibc maps it anew every step).
//
// When a gradient is needed, the forward pass computes it chunk by chunk while each chunk's
// logits are at hand: d nll_r / d logits_r = softmax_r - onehot(target_r). The backward pass
// then scales rows by the upstream gradient, exact for the hidden states; for the weight, the
// precomputed sum is exact when the upstream gradient is the same for every row with a target
// (any mean-style loss), and is recomputed chunk by chunk otherwise.
//
// Under bf16 autocast the GEMMs run in bf16 (AMX where the CPU has it) and the softmax, the nll
// and the weight gradient's sum in float32.
//
// Legend: N rows (tokens), D width, V vocabulary.
#pragma once

#include <ATen/ATen.h>

namespace moelab::nn {

/// nll (N) float32: -log softmax(hidden W^T)[r, target_r], 0 where target_r < 0. hidden (N, D),
/// weight (V, D), targets (N) int64. Differentiable in hidden and weight.
at::Tensor linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight,
                                const at::Tensor& targets, int64_t chunk_rows = 512);

}  // namespace moelab::nn
