// CheMoE: a mixture of experts that predicts a cell line's gene expression after treatment with a
// compound, as published (CheMoE, adapted to PDGrapher's LINCS splits). Per sample: a molecule
// (fingerprint or embedding), the cell line's basal expression (G genes) and the cell line; out:
// the treated expression of every gene (B, G).
//
//   drug  = LN(Linear(256 -> d)(Drop(ReLU(LN(Linear(in -> 256)(molecule))))))      (B, d)
//   basal = LN(Linear(2d -> d)(Drop(ReLU(LN(Linear(G -> 2d)(basal expression))))))  (B, d)
//   cell  = cell-line embedding                                                    (B, d)
//   g = [drug, cell, basal] (B, 3d); gate logits = Linear(d -> E)(Drop(ReLU(LN(Linear(3d -> d)(g)))))
//   weights: softmax over the k largest logits, zero elsewhere (B, E)
//   expert(g, gene) = Linear(128 -> 1)(Drop(ReLU(LN(Linear(256 -> 128)(Drop(ReLU(LN(
//                     Linear(4d -> 256)([g, gene_embedding]))))))))), one value per (sample, gene)
//   output (B, G) = sum over the sample's k experts of weight x expert output (+ basal with
//   `residual: true`, an option beyond the published model: the experts then model the change)
//   loss = task loss + balance_weight x mean_e (mean_b weights[b, e] - 1/E)^2
//
// Two ways to compute what the published code computes by running every expert on every
// (sample, gene) row: the first Linear of an expert splits into a sample part and a gene part,
// W [g, gene] = W_g g + W_gene gene, so the (B x G, 4d) x (4d, 256) product becomes a (B, 3d) and a
// (G, d) product and a broadcast add (exact); and with sparse dispatch (the default) a sample's G
// rows reach only its k experts. `dense_experts: true` runs all E experts on all rows, as the
// published code (the same output; a test checks it).
//
// Legend: B samples, G genes, E experts, k chosen per sample, d width, H1/H2 expert widths.
#pragma once

#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include "moelab/models/model.h"

namespace YAML {
class Node;
}

namespace moelab::models {

enum class CheMoEGate {
  kTopKSoftmax,  // softmax over the k largest logits (the CheMoE paper's formula)
  kOriginal,     // the published code: LayerNorm on the logits, softmax, top-k, renormalise
};

struct CheMoEOptions {
  /// Genes G per sample (basal and predicted expression); 0 = the data's. Default 0.
  TORCH_ARG(int64_t, num_genes) = 0;
  /// Molecule features: 1024 for Morgan fingerprints, 2304 for KPGT embeddings; 0 = the data's.
  TORCH_ARG(int64_t, input_dim) = 0;
  /// Cell lines with an embedding; 0 = the data's. Default 0.
  TORCH_ARG(int64_t, num_cell_lines) = 0;
  /// Width d of the encoders and embeddings, >= 1. Default 128.
  TORCH_ARG(int64_t, d_model) = 128;
  /// Experts E, >= 1. Default 4.
  TORCH_ARG(int64_t, num_experts) = 4;
  /// Experts per sample k, in [1, E]. Default 2.
  TORCH_ARG(int64_t, top_k) = 2;
  /// Dropout after every hidden ReLU, in [0, 1). Default 0.1.
  TORCH_ARG(double, dropout) = 0.1;
  /// Hidden width of the molecule encoder. Default 256.
  TORCH_ARG(int64_t, encoder_hidden) = 256;
  /// Hidden widths of each expert (H1, H2). Defaults 256 and 128.
  TORCH_ARG(int64_t, expert_hidden) = 256;
  TORCH_ARG(int64_t, expert_hidden2) = 128;
  /// topk_softmax (default) or original (see CheMoEGate).
  TORCH_ARG(CheMoEGate, gate) = CheMoEGate::kTopKSoftmax;
  /// Weight of the balance term (usage against 1/E), >= 0. Default 0.01.
  TORCH_ARG(double, balance_weight) = 0.01;
  /// Every expert on every row, as the published code; same output, E/k times the expert work.
  TORCH_ARG(bool, dense_experts) = false;
  /// Predict the change and add the basal expression (output = basal + experts) instead of the
  /// treated expression itself (the published model). Default false.
  TORCH_ARG(bool, residual) = false;
};

YAML::Node to_yaml(const CheMoEOptions& options);
void from_yaml(const YAML::Node& node, CheMoEOptions& options, const std::string& where);
std::string to_string(CheMoEGate gate);
CheMoEGate parse_chemoe_gate(const std::string& name);

/// One expert: the first Linear split into its sample part (columns [0, 3d)) and gene part
/// (columns [3d, 4d)), then LN, ReLU, dropout, Linear(H1 -> H2), LN, ReLU, dropout, Linear(H2 -> 1).
class CheMoEExpertImpl : public torch::nn::Cloneable<CheMoEExpertImpl> {
 public:
  CheMoEExpertImpl(int64_t d_model, int64_t hidden, int64_t hidden2, double dropout);
  void reset() override;
  /// sample_part: (n, H1) this expert's W_g g + b; gene_part: (G, H1) W_gene gene -> (n, G).
  at::Tensor forward(const at::Tensor& sample_part, const at::Tensor& gene_part);

  int64_t d_model, hidden, hidden2;
  double dropout;
  torch::nn::Linear first{nullptr}, second{nullptr}, out{nullptr};
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};
};
TORCH_MODULE(CheMoEExpert);

class CheMoEImpl : public ModelBase<CheMoEImpl> {
 public:
  explicit CheMoEImpl(CheMoEOptions options);

  /// inputs (B, input_dim) molecule features, basal (B, G) float, cell_line (B) int64 ->
  /// outputs (B, G) predicted treated expression; one routing record (samples as tokens).
  ModelOutput forward(const data::Batch& batch) override;
  ModelCost cost() const override;

  CheMoEOptions options;
  torch::nn::Sequential molecule_encoder{nullptr}, basal_encoder{nullptr}, gate{nullptr};
  torch::nn::LayerNorm gate_norm{nullptr};  // original gate only
  torch::nn::Embedding cell_embedding{nullptr}, gene_embedding{nullptr};
  std::vector<CheMoEExpert> experts;
};
TORCH_MODULE(CheMoE);

/// The dense baseline of the same FLOPs per sample: one expert (k = 1) whose widths are the
/// k experts' side by side (H1 and H2 times k would square the middle layer's cost, so H1 x k
/// and H2 unchanged: k x (4d H1 + H1 H2) MACs per row, the chosen experts' cost), no balance term.
CheMoEOptions dense_baseline(const CheMoEOptions& options);

}  // namespace moelab::models
