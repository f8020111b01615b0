#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moelab/data/perturbation.h"
#include "moelab/models/chemoe.h"

using moelab::models::CheMoE;
using moelab::models::CheMoEGate;
using moelab::models::CheMoEOptions;

namespace {

CheMoEOptions small(int64_t experts, int64_t k) {
  return CheMoEOptions().num_genes(5).input_dim(12).num_cell_lines(3).d_model(4).num_experts(experts).top_k(k)
      .encoder_hidden(6).expert_hidden(8).expert_hidden2(5);
}

moelab::data::Batch batch(int64_t b, const CheMoEOptions& o, uint64_t seed = 0) {
  torch::manual_seed(seed);
  return moelab::data::Batch({{moelab::data::kInputs, torch::rand({b, o.input_dim()}).round()},
                              {moelab::data::kBasal, torch::randn({b, o.num_genes()})},
                              {moelab::data::kCellLine, torch::randint(0, o.num_cell_lines(), {b}, torch::kLong)}});
}

// The published computation, row by row: expert(x) on x = [g_b, gene_j] for every (b, j), every
// expert, weighted by the sample's gate weights (zero off its top k).
at::Tensor naive_forward(CheMoE& model, const moelab::data::Batch& in, at::Tensor* gate_weights) {
  const auto& o = model->options;
  const at::Tensor g = torch::cat({model->molecule_encoder->forward(in.at(moelab::data::kInputs)),
                                   model->cell_embedding->forward(in.at(moelab::data::kCellLine)),
                                   model->basal_encoder->forward(in.at(moelab::data::kBasal))}, 1);
  at::Tensor logits = model->gate->forward(g);
  if (model->gate_norm) logits = model->gate_norm->forward(logits);
  const int64_t b = g.size(0), genes = o.num_genes();
  // Original gate's formula: softmax over all, keep the top k, renormalise.
  const at::Tensor probs = torch::softmax(logits, 1);
  const auto top = probs.topk(o.top_k(), 1);
  const at::Tensor kept = std::get<0>(top) / std::get<0>(top).sum(1, true);
  *gate_weights = torch::zeros_like(probs).scatter(1, std::get<1>(top), kept);
  at::Tensor out = torch::zeros({b, genes});
  for (int64_t e = 0; e < o.num_experts(); ++e) {
    auto& x = model->experts[e];
    for (int64_t s = 0; s < b; ++s) {
      for (int64_t j = 0; j < genes; ++j) {
        at::Tensor row = torch::cat({g[s], model->gene_embedding->weight[j]}).unsqueeze(0);  // (1, 4d)
        row = torch::relu(x->norm1->forward(x->first->forward(row)));
        row = torch::relu(x->norm2->forward(x->second->forward(row)));
        out[s][j] += (*gate_weights)[s][e] * x->out->forward(row).squeeze();
      }
    }
  }
  return out;
}

}  // namespace

TEST(CheMoETest, ForwardEqualsThePublishedRowByRowComputation) {
  for (CheMoEGate gate : {CheMoEGate::kTopKSoftmax, CheMoEGate::kOriginal}) {
    torch::manual_seed(1);
    CheMoE model(small(3, 2).gate(gate));
    model->eval();
    const auto in = batch(4, model->options);
    const auto out = model->forward(in);
    at::Tensor weights;
    const at::Tensor expected = naive_forward(model, in, &weights);
    ASSERT_EQ(out.outputs.sizes(), at::IntArrayRef({4, 5}));
    EXPECT_TRUE(torch::allclose(out.outputs, expected, 1e-5, 1e-5)) << (out.outputs - expected).abs().max();
    // Balance term: mean over experts of (batch-mean weight - 1/E)^2, weight 0.01.
    const double balance = (weights.mean(0) - 1.0 / 3).pow(2).mean().item<double>();
    ASSERT_EQ(out.model_terms.size(), 1u);
    EXPECT_NEAR(out.model_terms[0].value.item<double>(), balance, 1e-6);
    EXPECT_NEAR(out.aux_loss.item<double>(), 0.01 * balance, 1e-8);
    // One routing record: samples as tokens, their k experts and weights.
    ASSERT_EQ(out.moe_layers.size(), 1u);
    const auto& stats = out.moe_layers[0].stats;
    EXPECT_EQ(stats.indices.sizes(), at::IntArrayRef({4, 2}));
    EXPECT_TRUE(torch::allclose(weights.gather(1, stats.indices), stats.weights, 1e-6, 1e-6));
    EXPECT_EQ(stats.tokens_per_expert.sum().item<int64_t>(), 8);
  }
}

TEST(CheMoETest, SparseDispatchEqualsDenseExpertsInValuesAndGradients) {
  torch::manual_seed(2);
  CheMoE sparse(small(8, 2));
  CheMoE dense(small(8, 2).dense_experts(true));
  moelab::models::copy_state(*sparse, *dense);
  sparse->eval();
  dense->eval();
  const auto in = batch(6, sparse->options, 3);
  const auto a = sparse->forward(in), b = dense->forward(in);
  EXPECT_TRUE(torch::allclose(a.outputs, b.outputs, 1e-5, 1e-6));
  (a.outputs.pow(2).sum() + a.aux_loss).backward();
  (b.outputs.pow(2).sum() + b.aux_loss).backward();
  const auto pa = sparse->named_parameters(), pb = dense->named_parameters();
  for (const auto& item : pa) {
    const at::Tensor ga = item.value().grad(), gb = pb[item.key()].grad();
    // An expert no sample chose gets no gradient from sparse dispatch, zeros from dense.
    const at::Tensor za = ga.defined() ? ga : torch::zeros_like(item.value());
    const at::Tensor zb = gb.defined() ? gb : torch::zeros_like(item.value());
    EXPECT_TRUE(torch::allclose(za, zb, 1e-4, 1e-5)) << item.key();
  }
}

TEST(CheMoETest, ResidualAddsTheBasalExpression) {
  torch::manual_seed(4);
  CheMoE absolute(small(4, 2));
  CheMoE residual(small(4, 2).residual(true));
  moelab::models::copy_state(*absolute, *residual);
  absolute->eval();
  residual->eval();
  const auto in = batch(3, absolute->options);
  EXPECT_TRUE(torch::allclose(residual->forward(in).outputs,
                              absolute->forward(in).outputs + in.at(moelab::data::kBasal), 1e-6, 1e-6));
}

TEST(CheMoETest, InitialisationIsKaimingWithZeroBiasesAndSmallEmbeddings) {
  torch::manual_seed(0);
  CheMoE model(CheMoEOptions().num_genes(978).input_dim(1024).num_cell_lines(10));
  const auto& first = model->experts[0]->first;  // (256, 512): std sqrt(2 / 512)
  EXPECT_NEAR(first->weight.std().item<double>(), std::sqrt(2.0 / 512), 0.002);
  EXPECT_EQ(first->bias.abs().sum().item<double>(), 0.0);
  EXPECT_NEAR(model->gene_embedding->weight.std().item<double>(), 0.02, 0.001);
  EXPECT_NEAR(model->cell_embedding->weight.std().item<double>(), 0.02, 0.006);
  for (const auto& p : model->named_parameters()) {
    if (p.key().size() > 5 && p.key().substr(p.key().size() - 5) == ".bias") {
      EXPECT_EQ(p.value().abs().sum().item<double>(), 0.0) << p.key();
    }
  }
}

TEST(CheMoETest, TheDenseBaselineHasTheSameFlopsPerSample) {
  const CheMoEOptions moe = CheMoEOptions().num_genes(978).input_dim(1024).num_cell_lines(10).num_experts(8);
  const CheMoEOptions dense = moelab::models::dense_baseline(moe);
  EXPECT_EQ(dense.num_experts(), 1);
  EXPECT_EQ(dense.expert_hidden(), 512);
  const double a = static_cast<double>(CheMoE(moe)->cost().flops_per_sample);
  const double b = static_cast<double>(CheMoE(dense)->cost().flops_per_sample);
  EXPECT_NEAR(b / a, 1.0, 1e-3);
  EXPECT_GT(CheMoE(moe)->cost().parameters_total, CheMoE(dense)->cost().parameters_total);
}

TEST(CheMoETest, RejectsBadOptionsAndInputsWithTheValues) {
  auto message = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const c10::Error& e) {
      return std::string(e.what_without_backtrace());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(message([] { CheMoE(small(4, 5)); }).find("CheMoE: top_k (5) must be in [1, num_experts=4]"),
            std::string::npos);
  EXPECT_EQ(message([] { CheMoE model(CheMoEOptions{}); }),
            "CheMoE: num_genes (0) must be >= 1 (0 takes the data's only when built from a config)");
  CheMoE model(small(4, 2));
  auto in = batch(3, model->options);
  in.set(moelab::data::kBasal, torch::zeros({3, 4}));
  EXPECT_NE(message([&] { model->forward(in); }).find("CheMoE: basal must be (B=3, 5) expression, got [3, 4]"),
            std::string::npos);
  in = batch(3, model->options);
  in.set(moelab::data::kCellLine, torch::tensor({0, 1, 3}, torch::kLong));
  EXPECT_NE(message([&] { model->forward(in); }).find("cell_line indices must be in [0, 3), got [0, 3]"),
            std::string::npos);
}
