// A decoder-only (causal) Transformer language model with Mixture-of-Experts FFNs in chosen
// layers, in the pre-norm form of GPT-2, Llama and Mixtral:
//   h = Embed(tokens) [+ positions]; Dropout
//   per block:  h = h + Drop(Attn(Norm1(h)))          causal; RoPE inside attention if chosen
//               h = h + Drop(FFN_or_MoE(Norm2(h)))
//   logits = Norm(h) W_out^T                          W_out = the embedding when tied
// Norms are layernorm or rmsnorm; positions rope (default), learned, sinusoidal or none. The
// dense FFN has the experts' activation, width and bias, so a dense block is one expert. Weights
// start N(0, 0.02^2), the residual projections (attention out, FFN/expert down) N(0, (0.02 /
// sqrt(2 x layers))^2) (GPT-2), biases 0, norms 1. Padding (padding_mask false) is masked out
// of attention's keys and out of routing, so it enters no statistic; the task masks it out of
// the loss.
//
// Legend: B batch, L positions, D width, V vocabulary, ff FFN width, E experts.
#pragma once

#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <optional>
#include <vector>

#include "moelab/models/model.h"
#include "moelab/models/registry.h"
#include "moelab/nn/attention.h"
#include "moelab/nn/dropout.h"
#include "moelab/nn/feed_forward.h"
#include "moelab/nn/norm.h"
#include "moelab/nn/positional_encoding.h"

namespace YAML {
class Node;
}

namespace moelab::models {

struct MoEDecoderOptions {
  MoEDecoderOptions();
  /// Vocabulary V; 0 = the data's tokenizer's (the run fills it in). Default 0.
  TORCH_ARG(int64_t, vocab_size) = 0;
  /// Blocks, >= 1. Default 4.
  TORCH_ARG(int64_t, num_layers) = 4;
  /// Attention heads; moe.d_model must be a multiple. Default 4.
  TORCH_ARG(int64_t, num_heads) = 4;
  /// Longest context in positions (learned table size; generation stops there for learned
  /// positions). Default 1024.
  TORCH_ARG(int64_t, max_length) = 1024;
  /// rope, learned, sinusoidal or none. Default rope.
  TORCH_ARG(nn::PositionKind, positions) = nn::PositionKind::kRope;
  /// RoPE's base. Default 10000.
  TORCH_ARG(double, rope_base) = 10000.0;
  /// layernorm or rmsnorm. Default rmsnorm.
  TORCH_ARG(nn::NormKind, norm) = nn::NormKind::kRMSNorm;
  /// The norms' epsilon. Default 1e-5.
  TORCH_ARG(double, norm_eps) = 1e-5;
  /// Dropout after the embedding and on each sublayer's output, in [0, 1). Default 0.1.
  TORCH_ARG(double, dropout) = 0.1;
  /// Dropout on the attention weights, in [0, 1). Default 0.
  TORCH_ARG(double, attention_dropout) = 0.0;
  /// Biases on the attention projections. Default false.
  TORCH_ARG(bool, attention_bias) = false;
  /// The output projection is the token embedding (transposed). Default true.
  TORCH_ARG(bool, tie_embeddings) = true;
  /// Given targets, leave the output projection to the task's fused projection +
  /// cross-entropy (ModelOutput::hidden), so the (B, L, V) logits are never held whole. Default
  /// true.
  TORCH_ARG(bool, fused_loss) = true;
  /// 0-based blocks whose FFN is an MoE layer; nullopt (YAML null) = every block, {} = none.
  TORCH_ARG(std::optional<std::vector<int64_t>>, moe_layer_indices) = std::nullopt;
  /// The MoE layers and the model's sizes: width D = moe.d_model, FFN width ff = moe.d_ff
  /// (0 = 4 D), activation and bias shared by the dense FFNs. Default D=256, E=8, top-2 with
  /// renormalised weights (Mixtral), SwiGLU experts without biases, load balance 0.01.
  TORCH_ARG(nn::MoELayerOptions, moe);
};

/// The dense decoder matched to an MoE decoder: the same model with every block dense, its FFN
/// width chosen so that the blocks' FFN multiply-adds per token (router included) equal the
/// MoE's active ones (kFlops: about k x d_ff) or its FFN parameters equal the MoE's total
/// (kParameters: about E x d_ff), averaged over the blocks, rounded to the nearest integer.
MoEDecoderOptions dense_baseline(const MoEDecoderOptions& moe, MatchTarget what);

YAML::Node to_yaml(const MoEDecoderOptions& options);
void from_yaml(const YAML::Node& node, MoEDecoderOptions& options, const std::string& where);

/// One pre-norm block.
class DecoderBlockImpl : public torch::nn::Cloneable<DecoderBlockImpl> {
 public:
  /// moe: the MoE layer's options, or nullopt for a dense FFN (ffn).
  DecoderBlockImpl(nn::MultiheadAttentionOptions attention, nn::NormOptions norm,
                   nn::FeedForwardOptions ffn, std::optional<nn::MoELayerOptions> moe,
                   double dropout);
  void reset() override;
  /// x: (B, L, D); mask (B, S) true = real (optional); token_ids (B, L) for the hash router
  /// (optional); cache: this block's (generation). An MoE layer's output and statistics go to
  /// `routed`.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& token_ids,
                     nn::KVCache* cache, ModelOutput& routed);

  nn::MultiheadAttentionOptions attention_options;
  nn::NormOptions norm_options;
  nn::FeedForwardOptions ffn_options;
  std::optional<nn::MoELayerOptions> moe_options;
  double dropout_rate;
  nn::Norm norm1{nullptr}, norm2{nullptr};
  nn::MultiheadAttention attention{nullptr};
  nn::FeedForward ffn{nullptr};  // dense blocks only
  nn::MoELayer moe{nullptr};     // MoE blocks only
  nn::Dropout dropout{nullptr};
};
TORCH_MODULE(DecoderBlock);

class MoEDecoderImpl : public ModelBase<MoEDecoderImpl> {
 public:
  explicit MoEDecoderImpl(MoEDecoderOptions options);
  /// N(0, 0.02^2) weights, residual projections scaled by 1/sqrt(2 x layers), zero biases.
  void reset_parameters();

  /// token_ids (B, L) int64; padding_mask (B, L) bool (optional) -> outputs (B, L, V) logits;
  /// with targets in the batch and fused_loss, hidden and output_weight instead.
  ModelOutput forward(const data::Batch& batch) override;
  /// The same for generation: caches (one per block, extended) hold the positions before.
  /// hidden_only: hidden and output_weight instead of the logits.
  ModelOutput forward_tokens(const at::Tensor& token_ids, const at::Tensor& padding_mask,
                             std::vector<nn::KVCache>* caches, bool hidden_only = false);
  ModelCost cost() const override;
  nlohmann::json resolved_sizes() const override;

  bool is_moe_layer(int64_t layer) const;
  int64_t ffn_width() const;
  /// The output projection (V, D): the embedding's weight when tied.
  at::Tensor output_weight() const;

  MoEDecoderOptions options;
  torch::nn::Embedding embedding{nullptr};
  nn::LearnedPositions learned_positions{nullptr};
  nn::Dropout dropout{nullptr};
  torch::nn::ModuleList blocks{nullptr};  // DecoderBlock
  nn::Norm final_norm{nullptr};
  torch::nn::Linear lm_head{nullptr};  // untied only
};
TORCH_MODULE(MoEDecoder);

}  // namespace moelab::models
