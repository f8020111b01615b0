#include "moelab/models/chemoe.h"

#include <torch/nn/init.h>
#include <torch/nn/modules/activation.h>

#include "moelab/config/fields.h"
#include "moelab/data/perturbation.h"
#include "moelab/nn/dispatch.h"
#include "moelab/nn/dropout.h"
#include "moelab/nn/options_yaml.h"
#include "moelab/util/errors.h"

namespace moelab::config {
template <>
struct EnumNames<models::CheMoEGate> {
  static models::CheMoEGate parse(const std::string& s) { return models::parse_chemoe_gate(s); }
  static std::string print(models::CheMoEGate v) { return models::to_string(v); }
};
}  // namespace moelab::config

namespace moelab::models {

std::string to_string(CheMoEGate gate) {
  return gate == CheMoEGate::kTopKSoftmax ? "topk_softmax" : "original";
}

CheMoEGate parse_chemoe_gate(const std::string& name) {
  if (name == "topk_softmax") return CheMoEGate::kTopKSoftmax;
  if (name == "original") return CheMoEGate::kOriginal;
  throw ConfigError("expected topk_softmax or original, got '" + name + "'");
}

template <typename V>
void visit(V& v, CheMoEOptions& o) {
  v.field("num_genes", o.num_genes());
  v.field("input_dim", o.input_dim());
  v.field("num_cell_lines", o.num_cell_lines());
  v.field("d_model", o.d_model());
  v.field("num_experts", o.num_experts());
  v.field("top_k", o.top_k());
  v.field("dropout", o.dropout());
  v.field("encoder_hidden", o.encoder_hidden());
  v.field("expert_hidden", o.expert_hidden());
  v.field("expert_hidden2", o.expert_hidden2());
  v.field("gate", o.gate());
  v.field("balance_weight", o.balance_weight());
  v.field("dense_experts", o.dense_experts());
  v.field("residual", o.residual());
}
MOELAB_DEFINE_OPTIONS_YAML(CheMoEOptions)

namespace {

// The published initialisation: Kaiming-normal weights (fan-in, ReLU gain), zero biases.
void init_linear(torch::nn::Linear& linear) {
  torch::NoGradGuard no_grad;
  torch::nn::init::kaiming_normal_(linear->weight, 0.0, torch::kFanIn, torch::kReLU);
  if (linear->bias.defined()) linear->bias.zero_();
}

torch::nn::Linear linear(int64_t in, int64_t out) {
  torch::nn::Linear layer(in, out);
  init_linear(layer);
  return layer;
}

torch::nn::LayerNorm layer_norm(int64_t width) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({width}));
}

// Linear(in -> hidden) -> LN -> ReLU -> Dropout -> Linear(hidden -> out) [-> LN]
torch::nn::Sequential encoder(int64_t in, int64_t hidden, int64_t out, double dropout, bool final_norm) {
  torch::nn::Sequential s(linear(in, hidden), layer_norm(hidden), torch::nn::ReLU(),
                          nn::Dropout(dropout), linear(hidden, out));
  if (final_norm) s->push_back(layer_norm(out));
  return s;
}

}  // namespace

CheMoEExpertImpl::CheMoEExpertImpl(int64_t d_model_, int64_t hidden_, int64_t hidden2_, double dropout_)
    : d_model(d_model_), hidden(hidden_), hidden2(hidden2_), dropout(dropout_) {
  reset();
}

void CheMoEExpertImpl::reset() {
  first = register_module("first", linear(4 * d_model, hidden));
  norm1 = register_module("norm1", layer_norm(hidden));
  second = register_module("second", linear(hidden, hidden2));
  norm2 = register_module("norm2", layer_norm(hidden2));
  out = register_module("out", linear(hidden2, 1));
}

at::Tensor CheMoEExpertImpl::forward(const at::Tensor& sample_part, const at::Tensor& gene_part) {
  const int64_t n = sample_part.size(0), genes = gene_part.size(0);
  // (n, 1, H1) + (1, G, H1) = the first Linear of [g, gene] for every (sample, gene) row
  at::Tensor h = (sample_part.unsqueeze(1) + gene_part.unsqueeze(0)).view({n * genes, hidden});
  h = nn::dropout(at::relu(norm1->forward(h)), dropout, is_training());
  h = nn::dropout(at::relu(norm2->forward(second->forward(h))), dropout, is_training());
  return out->forward(h).view({n, genes});  // (n, G)
}

CheMoEImpl::CheMoEImpl(CheMoEOptions options_) : options(std::move(options_)) {
  const auto& o = options;
  auto require = [](bool ok, const char* key, const std::string& rule, auto value) {
    TORCH_CHECK(ok, "CheMoE: ", key, " (", value, ") must be ", rule);
  };
  require(o.num_genes() >= 1, "num_genes", ">= 1 (0 takes the data's only when built from a config)",
          o.num_genes());
  require(o.input_dim() >= 1, "input_dim", ">= 1", o.input_dim());
  require(o.num_cell_lines() >= 1, "num_cell_lines", ">= 1", o.num_cell_lines());
  require(o.d_model() >= 1, "d_model", ">= 1", o.d_model());
  require(o.num_experts() >= 1, "num_experts", ">= 1", o.num_experts());
  require(o.top_k() >= 1 && o.top_k() <= o.num_experts(), "top_k",
          "in [1, num_experts=" + std::to_string(o.num_experts()) + "]", o.top_k());
  require(o.dropout() >= 0 && o.dropout() < 1, "dropout", "in [0, 1)", o.dropout());
  require(o.encoder_hidden() >= 1 && o.expert_hidden() >= 1 && o.expert_hidden2() >= 1,
          "encoder_hidden/expert_hidden/expert_hidden2", ">= 1",
          std::to_string(o.encoder_hidden()) + "/" + std::to_string(o.expert_hidden()) + "/" +
              std::to_string(o.expert_hidden2()));
  require(o.balance_weight() >= 0, "balance_weight", ">= 0", o.balance_weight());
  const int64_t d = o.d_model();
  molecule_encoder = register_module(
      "molecule_encoder", encoder(o.input_dim(), o.encoder_hidden(), d, o.dropout(), true));
  basal_encoder = register_module("basal_encoder", encoder(o.num_genes(), 2 * d, d, o.dropout(), true));
  cell_embedding = register_module("cell_embedding", torch::nn::Embedding(o.num_cell_lines(), d));
  gene_embedding = register_module("gene_embedding", torch::nn::Embedding(o.num_genes(), d));
  {
    torch::NoGradGuard no_grad;
    cell_embedding->weight.normal_(0.0, 0.02);
    gene_embedding->weight.normal_(0.0, 0.02);
  }
  gate = register_module("gate", encoder(3 * d, d, o.num_experts(), o.dropout(), false));
  if (o.gate() == CheMoEGate::kOriginal) {
    gate_norm = register_module("gate_norm", layer_norm(o.num_experts()));
  }
  for (int64_t e = 0; e < o.num_experts(); ++e) {
    experts.push_back(register_module(
        "expert" + std::to_string(e),
        CheMoEExpert(d, o.expert_hidden(), o.expert_hidden2(), o.dropout())));
  }
}

ModelOutput CheMoEImpl::forward(const data::Batch& batch) {
  const auto& o = options;
  const at::Tensor& molecule = batch.at(data::kInputs);
  const at::Tensor& basal = batch.at(data::kBasal);
  const at::Tensor& cell_line = batch.at(data::kCellLine);
  const int64_t b = molecule.size(0), d = o.d_model(), e = o.num_experts(), k = o.top_k();
  TORCH_CHECK(molecule.dim() == 2 && molecule.size(1) == o.input_dim(), "CheMoE: inputs must be (B, ",
              o.input_dim(), ") molecule features, got ", molecule.sizes());
  TORCH_CHECK(basal.dim() == 2 && basal.size(0) == b && basal.size(1) == o.num_genes(),
              "CheMoE: basal must be (B=", b, ", ", o.num_genes(), ") expression, got ", basal.sizes());
  TORCH_CHECK(cell_line.dim() == 1 && cell_line.size(0) == b && cell_line.scalar_type() == at::kLong,
              "CheMoE: cell_line must be (B=", b, ") int64, got ", cell_line.sizes(), " ",
              cell_line.scalar_type());
  if (b > 0) {
    const int64_t low = cell_line.min().item<int64_t>(), high = cell_line.max().item<int64_t>();
    TORCH_CHECK(low >= 0 && high < o.num_cell_lines(), "CheMoE: cell_line indices must be in [0, ",
                o.num_cell_lines(), "), got [", low, ", ", high, "]");
  }
  const at::Tensor g = at::cat({molecule_encoder->forward(molecule.to(at::kFloat)),
                                cell_embedding->forward(cell_line),
                                basal_encoder->forward(basal.to(at::kFloat))},
                               1);  // (B, 3d)
  at::Tensor logits = gate->forward(g);  // (B, E)
  if (gate_norm) logits = gate_norm->forward(logits);
  // Softmax over the k largest logits = softmax over all, top-k, renormalised: the two gates
  // differ only in the LayerNorm on the logits.
  auto [top_logits, indices] = logits.topk(k, 1);         // (B, k)
  const at::Tensor weights = at::softmax(top_logits, 1);  // (B, k)
  const at::Tensor dense_weights = at::zeros({b, e}, weights.options()).scatter(1, indices, weights);
  const at::Tensor balance = (dense_weights.mean(0) - 1.0 / static_cast<double>(e)).pow(2).mean();

  // Each expert's first Linear, split: the gene part (G, H1) for every gene, the sample part
  // (B, H1) from g; W = [W_g | W_gene] along the input columns.
  const at::Tensor genes = gene_embedding->weight;  // (G, d)
  auto parts = [&](const CheMoEExpert& expert, const at::Tensor& g_rows) {
    const at::Tensor& w = expert->first->weight;  // (H1, 4d)
    return std::make_pair(at::addmm(expert->first->bias, g_rows, w.narrow(1, 0, 3 * d).t()),
                          at::mm(genes, w.narrow(1, 3 * d, d).t()));
  };
  ModelOutput out;
  nn::DispatchPlan plan = nn::plan_token_choice(indices, weights, e);
  if (o.dense_experts()) {
    out.outputs = at::zeros({b, o.num_genes()}, g.options());
    for (int64_t x = 0; x < e; ++x) {
      auto [sample_part, gene_part] = parts(experts[x], g);
      out.outputs = out.outputs + dense_weights.narrow(1, x, 1) * experts[x]->forward(sample_part, gene_part);
    }
  } else {
    // Samples sorted by expert (plan.token): expert x computes rows [offset, offset + count).
    std::vector<at::Tensor> expert_rows;
    int64_t offset = 0;
    for (int64_t x = 0; x < e; ++x) {
      const int64_t count = plan.counts_host[x];
      if (count == 0) continue;
      auto [sample_part, gene_part] = parts(experts[x], g.index_select(0, plan.token.narrow(0, offset, count)));
      expert_rows.push_back(experts[x]->forward(sample_part, gene_part));  // (count, G)
      offset += count;
    }
    out.outputs = expert_rows.empty() ? at::zeros({b, o.num_genes()}, g.options())
                                      : nn::combine_rows(at::cat(expert_rows, 0), plan.weight, plan);
  }
  if (o.residual()) out.outputs = out.outputs + basal.to(out.outputs.scalar_type());
  nn::RouterOutput routing;
  routing.logits = logits.detach();
  routing.probs = at::softmax(logits.detach(), 1);
  routing.indices = indices;
  routing.weights = weights;
  nn::MoEOutput record;
  record.aux_loss = at::zeros({}, g.options());
  record.stats = nn::routing_stats(routing, plan);
  record.stats.indices = indices;
  record.stats.weights = weights.detach();
  record.stats.kept = at::ones({b, k}, indices.options().dtype(at::kBool));
  out.moe_layers.push_back(std::move(record));
  out.model_terms.push_back({"balance", balance, o.balance_weight()});
  out.aux_loss = o.balance_weight() * balance;
  return out;
}

ModelCost CheMoEImpl::cost() const {
  const auto& o = options;
  const int64_t d = o.d_model(), genes = o.num_genes(), h1 = o.expert_hidden(), h2 = o.expert_hidden2();
  ModelCost cost;
  cost.parameters_total = nn::count_parameters(*this);
  const int64_t expert_parameters = nn::count_parameters(*experts[0]);
  cost.parameters_active = cost.parameters_total - (o.num_experts() - o.top_k()) * expert_parameters;
  // Multiply-adds per sample, counted as the published code computes them (an expert's first
  // Linear over all 4d inputs of each (sample, gene) row), so a dense baseline matched on this
  // count is matched on the published model's cost.
  const int64_t encoders = o.input_dim() * o.encoder_hidden() + o.encoder_hidden() * d +
                           genes * 2 * d + 2 * d * d + 3 * d * d + d * o.num_experts();
  const int64_t per_row = 4 * d * h1 + h1 * h2 + h2;
  cost.flops_per_sample = 2 * (encoders + o.top_k() * genes * per_row);
  return cost;
}

CheMoEOptions dense_baseline(const CheMoEOptions& options) {
  CheMoEOptions dense = options;
  dense.num_experts(1).top_k(1).balance_weight(0).dense_experts(false);
  dense.expert_hidden(options.expert_hidden() * options.top_k());
  return dense;
}

}  // namespace moelab::models
