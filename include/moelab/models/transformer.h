// Transformer encoders with Mixture-of-Experts feed-forward layers.
//
// TransformerMoEClassifier classifies sequences of continuous features (B, L, F): Linear(F, D),
// a position encoding (sinusoidal, learned or none), dropout, then N post-LN encoder layers
//   x = LN1(x + Drop(MHA(x, mask)))
//   x = LN2(x + Drop(FFN(x)))      FFN = Linear(D, ff) -> GELU -> Dropout -> Linear(ff, D)
// with the FFN replaced by an MoE layer in `moe_layer_indices`; a mean over the real (unmasked)
// positions; LayerNorm and Linear(D, classes). The MoE experts have the FFN's shape (GELU,
// biases) but no dropout inside. The aux loss is the MoE layers' terms summed over layers (the
// Switch load balance E * sum_i f_i P_i, f counted over all N * k routed slots, is
// `moe.aux.load_balance`); 0 when no layer is MoE.
//
// Legend: B batch, L positions, F input features, D width, ff FFN width, E experts.
#pragma once

#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <optional>
#include <vector>

#include "moelab/models/model.h"
#include "moelab/nn/attention.h"
#include "moelab/nn/dropout.h"
#include "moelab/nn/positional_encoding.h"

namespace YAML {
class Node;
}

namespace moelab::models {

/// One post-LN encoder layer: x = LN1(x + Drop(MHA(x))), x = LN2(x + Drop(FFN(x))), the FFN
/// dense (Linear -> GELU -> Dropout -> Linear) or an MoE layer.
class PostNormEncoderLayerImpl : public torch::nn::Cloneable<PostNormEncoderLayerImpl> {
 public:
  /// moe: the MoE layer's options, or nullopt for the dense FFN of width d_ff.
  PostNormEncoderLayerImpl(int64_t d_model, int64_t num_heads, int64_t d_ff, double dropout,
                           double attention_dropout, std::optional<nn::MoELayerOptions> moe);
  void reset() override;
  /// x: (B, L, D), mask (B, L) true = real (optional) -> (B, L, D); an MoE layer's output and
  /// statistics go to `routed` (untouched for a dense layer).
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask, ModelOutput& routed);

  int64_t d_model, num_heads, d_ff;
  double dropout_rate, attention_dropout_rate;
  std::optional<nn::MoELayerOptions> moe_options;
  nn::MultiheadAttention attention{nullptr};
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};  // dense layers only
  nn::MoELayer moe{nullptr};                     // MoE layers only
  nn::Dropout dropout{nullptr};
};
TORCH_MODULE(PostNormEncoderLayer);

struct TransformerMoEClassifierOptions {
  TransformerMoEClassifierOptions();
  /// Features per position F, >= 1. Default 28 (a Fashion-MNIST row).
  TORCH_ARG(int64_t, input_dim) = 28;
  /// Classes, >= 2. Default 10.
  TORCH_ARG(int64_t, num_classes) = 10;
  /// Encoder layers N, >= 1. Default 2.
  TORCH_ARG(int64_t, num_layers) = 2;
  /// Attention heads; moe.d_model must be a multiple. Default 4.
  TORCH_ARG(int64_t, num_heads) = 4;
  /// Longest sequence (the learned position table's size). Default 512.
  TORCH_ARG(int64_t, max_length) = 512;
  /// Position encoding: sinusoidal, learned (N(0, 0.02^2)) or none. Default sinusoidal.
  TORCH_ARG(nn::PositionKind, positions) = nn::PositionKind::kSinusoidal;
  /// Dropout after the positions, on each sublayer's output and inside the dense FFN, in
  /// [0, 1). Default 0.1.
  TORCH_ARG(double, dropout) = 0.1;
  /// Dropout on the attention weights, in [0, 1). Default 0.1.
  TORCH_ARG(double, attention_dropout) = 0.1;
  /// 0-based layers whose FFN is an MoE layer; nullopt (YAML null) = every layer, {} = none.
  TORCH_ARG(std::optional<std::vector<int64_t>>, moe_layer_indices) = std::nullopt;
  /// The MoE layers, and the model's sizes: width D = moe.d_model, FFN width ff = moe.d_ff
  /// (0 = 4 D) for the dense FFNs too. Default D=64, ff=0, E=4, top-2 with renormalised
  /// weights, GELU experts with biases, load balance 0.01.
  TORCH_ARG(nn::MoELayerOptions, moe);
};

/// The optional list of MoE layers every Transformer model's options carry as
/// `moe_layer_indices` (null = every layer, [] = none): written into `node`; read from `node`,
/// returning the node without that key (for the scalar fields).
void write_layer_indices(YAML::Node& node, const std::optional<std::vector<int64_t>>& indices);
YAML::Node read_layer_indices(const YAML::Node& node, std::optional<std::vector<int64_t>>& indices,
                              const std::string& where);
/// Whether `layer` is an MoE layer under `indices`.
bool selects_layer(const std::optional<std::vector<int64_t>>& indices, int64_t layer);
/// Every index in 0 .. layers - 1, else an error naming `model` and the index.
void check_layer_indices(const std::optional<std::vector<int64_t>>& indices, int64_t layers,
                         const std::string& model);

YAML::Node to_yaml(const TransformerMoEClassifierOptions& options);
void from_yaml(const YAML::Node& node, TransformerMoEClassifierOptions& options,
               const std::string& where);

class TransformerMoEClassifierImpl : public ModelBase<TransformerMoEClassifierImpl> {
 public:
  explicit TransformerMoEClassifierImpl(TransformerMoEClassifierOptions options);

  /// inputs: (B, L, F) float; padding_mask (B, L) bool, true = a real position (optional) ->
  /// outputs (B, classes).
  ModelOutput forward(const data::Batch& batch) override;
  ModelCost cost() const override;
  nlohmann::json resolved_sizes() const override;

  /// Whether layer `layer`'s FFN is an MoE layer.
  bool is_moe_layer(int64_t layer) const;
  /// The FFN width after resolving moe.d_ff = 0 to 4 D.
  int64_t ffn_width() const;

  TransformerMoEClassifierOptions options;
  torch::nn::Linear input{nullptr}, head{nullptr};
  nn::LearnedPositions learned_positions{nullptr};
  nn::Dropout dropout{nullptr};
  torch::nn::ModuleList layers{nullptr};  // PostNormEncoderLayer
  torch::nn::LayerNorm final_norm{nullptr};
};
TORCH_MODULE(TransformerMoEClassifier);

}  // namespace moelab::models
