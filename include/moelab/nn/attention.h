// Multi-head attention for moelab's Transformer models (Vaswani et al. 2017, "Attention Is All
// You Need"): separate q, k, v and output projections, dropout on the attention weights, a key
// padding mask, an optional causal mask, optional rotary position embeddings applied to q and k
// (RoPE, Su et al. 2021, in the "rotate half" layout Llama and Mixtral use), and a key/value
// cache for generation. It does not do grouped-query attention or sliding windows.
//
// Legend: B batch, L new positions (queries), S key positions (cached + new), D width, H heads,
// Dh = D / H per head.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "moelab/nn/dropout.h"

namespace moelab::nn {

struct MultiheadAttentionOptions {
  MultiheadAttentionOptions(int64_t d_model, int64_t num_heads)
      : d_model_(d_model), num_heads_(num_heads) {}
  /// Width D, a multiple of num_heads.
  TORCH_ARG(int64_t, d_model);
  /// Heads H, >= 1.
  TORCH_ARG(int64_t, num_heads);
  /// Dropout on the attention weights while training, in [0, 1). Default 0.
  TORCH_ARG(double, dropout) = 0.0;
  /// Biases on the four projections. Default true.
  TORCH_ARG(bool, bias) = true;
  /// Each query sees only keys at its own position or before. Default false.
  TORCH_ARG(bool, causal) = false;
  /// Rotary position embeddings on q and k (D / H must be even). Default false.
  TORCH_ARG(bool, rope) = false;
  /// RoPE's base: the wavelength of the slowest rotation pair. Default 10000.
  TORCH_ARG(double, rope_base) = 10000.0;
};

/// Keys and values of the positions seen so far, per layer, for incremental decoding.
struct KVCache {
  at::Tensor keys, values;  // (B, H, S, Dh); undefined while empty
  int64_t length() const { return keys.defined() ? keys.size(2) : 0; }
};

/// Rotates pairs (i, i + Dh/2) of x's last dimension by position * base^(-2i/Dh), positions
/// offset, offset + 1, ... along dimension -2. x: (..., L, Dh), Dh even.
at::Tensor apply_rotary(const at::Tensor& x, int64_t offset, double base);

class MultiheadAttentionImpl : public torch::nn::Cloneable<MultiheadAttentionImpl> {
 public:
  explicit MultiheadAttentionImpl(MultiheadAttentionOptions options);
  void reset() override;

  /// x: (B, L, D) -> (B, L, D). key_mask: (B, S) bool, true = a real position (optional; with a
  /// cache S counts the cached positions too). cache: the layer's cache, extended by this call;
  /// its length is the position of x's first row (for RoPE and the causal mask).
  at::Tensor forward(const at::Tensor& x, const at::Tensor& key_mask = {},
                     KVCache* cache = nullptr);

  MultiheadAttentionOptions options;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};
  nn::Dropout attention_dropout{nullptr};
};
TORCH_MODULE(MultiheadAttention);

}  // namespace moelab::nn
