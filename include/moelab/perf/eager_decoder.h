// The decoder language model as a user would write it in eager LibTorch, without moelab: the
// reference `moelab bench lm` measures the moe_decoder against. Same sizes and the same maths
// (RMSNorm, rotate-half RoPE, causal softmax attention, a softmax top-k renormalised router,
// SwiGLU experts, tied output, full-logits cross-entropy, the config's dropouts, AdamW), written
// as Hugging Face's Mixtral is: the experts in a Python-style loop (for each expert: the tokens
// that chose it, index_select, its FFN, index_add), torch::nn modules, autograd everywhere.
#pragma once

#include <cstdint>

namespace moelab::perf {

struct EagerDecoderOptions {
  int64_t vocab_size = 1000;
  int64_t d_model = 256;
  int64_t d_ff = 512;
  int64_t num_layers = 4;
  int64_t num_heads = 4;
  int64_t num_experts = 8;  // 0: dense SwiGLU FFNs of width d_ff
  int64_t top_k = 2;
  int64_t batch_size = 32;
  int64_t block_length = 128;
  uint64_t seed = 0;
  /// As the moe_decoder's: on the embeddings and on each residual branch; on attention weights.
  double dropout = 0.0;
  double attention_dropout = 0.0;
  /// The forward pass and the loss under bf16 CPU autocast, as a user of torch.autocast writes
  /// it; weights and optimiser float32.
  bool bf16_autocast = false;
};

/// Training tokens/s over `steps` AdamW steps (after `warmup`) on random tokens.
double eager_decoder_train_tokens_per_s(const EagerDecoderOptions& options, int64_t steps, int64_t warmup);

}  // namespace moelab::perf
