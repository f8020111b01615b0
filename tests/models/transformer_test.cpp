#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moelab/config/config.h"
#include "moelab/models/registry.h"
#include "moelab/models/transformer.h"
#include "moelab/run/run_config.h"
#include "support/fixtures.h"

using moelab::models::TransformerMoEClassifier;
using moelab::models::TransformerMoEClassifierOptions;

namespace {

TransformerMoEClassifierOptions tiny_transformer() {
  TransformerMoEClassifierOptions o;
  o.input_dim(6).num_classes(3).num_layers(3).num_heads(2).dropout(0).attention_dropout(0);
  o.moe().router().d_model(16);
  o.moe().experts().d_model(16).d_ff(24);
  return o;
}

}  // namespace

TEST(TransformerMoEClassifierTest, MoELayerIndicesPlaceTheMoELayers) {
  auto every = TransformerMoEClassifier(tiny_transformer());
  EXPECT_TRUE(every->is_moe_layer(0) && every->is_moe_layer(1) && every->is_moe_layer(2));
  auto some = TransformerMoEClassifier(tiny_transformer().moe_layer_indices(std::vector<int64_t>{1}));
  EXPECT_FALSE(some->is_moe_layer(0));
  EXPECT_TRUE(some->is_moe_layer(1));
  EXPECT_FALSE(some->is_moe_layer(2));
  const at::Tensor x = torch::randn({4, 5, 6});
  const auto out = some->forward_inputs(x);
  EXPECT_EQ(out.outputs.sizes(), (std::vector<int64_t>{4, 3}));
  EXPECT_EQ(out.moe_layers.size(), 1u);
  auto none = TransformerMoEClassifier(tiny_transformer().moe_layer_indices(std::vector<int64_t>{}));
  const auto dense = none->forward_inputs(x);
  EXPECT_TRUE(dense.moe_layers.empty());
  EXPECT_EQ(dense.aux_loss.item<double>(), 0.0);  // no MoE layer, no aux loss
  EXPECT_EQ(none->named_parameters().find("layers.1.fc1.weight")->sizes(),
            (std::vector<int64_t>{24, 16}));
  EXPECT_THROW(TransformerMoEClassifier(tiny_transformer().moe_layer_indices(std::vector<int64_t>{3})),
               c10::Error);
  // d_ff 0 means 4 D.
  auto wide = TransformerMoEClassifier(
      tiny_transformer().moe_layer_indices(std::vector<int64_t>{}).moe(
          [] { auto m = tiny_transformer().moe(); m.experts().d_ff(0); return m; }()));
  EXPECT_EQ(wide->ffn_width(), 64);
}

// The aux loss is the MoE layers' Switch load balance, E * sum_i f_i P_i per layer, summed.
TEST(TransformerMoEClassifierTest, AuxLossIsTheLayersLoadBalanceSummed) {
  auto model = TransformerMoEClassifier(tiny_transformer());
  const auto out = model->forward_inputs(torch::randn({2, 4, 6}));
  ASSERT_EQ(out.moe_layers.size(), 3u);
  double expected = 0;
  for (const auto& layer : out.moe_layers) {
    expected += 0.01 * layer.aux_terms.at("load_balance").item<double>();
  }
  EXPECT_NEAR(out.aux_loss.item<double>(), expected, 1e-6);
  // Uniform routing: all 8 tokens to experts 0 and 1, none to 2 and 3.
  auto options = tiny_transformer();
  options.moe().router().kind(moelab::nn::RouterKind::kUniform);
  options.moe().aux().load_balance(0);  // no gate, nothing to balance (the layer refuses a weight)
  auto uniform = TransformerMoEClassifier(options);
  const auto routed = uniform->forward_inputs(torch::randn({2, 4, 6}));
  EXPECT_TRUE(torch::equal(routed.moe_layers[0].stats.tokens_per_expert,
                           torch::tensor({8, 8, 0, 0}).to(at::kLong)));
}

TEST(TransformerMoEClassifierTest, PaddingChangesNothingAtRealPositions) {
  torch::manual_seed(0);
  auto model = TransformerMoEClassifier(tiny_transformer());
  model->eval();
  const at::Tensor x = torch::randn({2, 5, 6});
  const at::Tensor mask = torch::tensor({1, 1, 1, 0, 0, 1, 1, 1, 1, 1}).view({2, 5}).to(at::kBool);
  moelab::data::Batch batch({{moelab::data::kInputs, x}, {moelab::data::kPaddingMask, mask}});
  const auto before = model->forward(batch);
  at::Tensor changed = x.clone();
  changed[0][3] += 10.0;
  changed[0][4] -= 7.0;
  batch.set(moelab::data::kInputs, changed);
  const auto after = model->forward(batch);
  EXPECT_TRUE(torch::allclose(before.outputs, after.outputs, 1e-5, 1e-5));
  // The first sequence as three real positions alone gives the same output.
  const auto alone = model->forward_inputs(x.narrow(0, 0, 1).narrow(1, 0, 3));
  EXPECT_TRUE(torch::allclose(alone.outputs[0], before.outputs[0], 1e-5, 1e-5));
  // Padding never reaches the routing statistics: 3 + 5 real positions routed per layer.
  EXPECT_EQ(before.moe_layers[0].stats.num_tokens, 8);
}

TEST(TransformerMoEClassifierTest, PositionsMakeTheOrderMatterAndLearnedOnesTrain) {
  torch::manual_seed(1);
  const at::Tensor x = torch::randn({1, 4, 6});
  const at::Tensor reversed = x.flip(1);
  for (auto kind : {moelab::nn::PositionKind::kNone, moelab::nn::PositionKind::kSinusoidal,
                    moelab::nn::PositionKind::kLearned}) {
    auto model = TransformerMoEClassifier(tiny_transformer().positions(kind));
    model->eval();
    const bool same = torch::allclose(model->forward_inputs(x).outputs,
                                      model->forward_inputs(reversed).outputs, 1e-5, 1e-5);
    // Without positions the encoder and the mean are order-blind.
    EXPECT_EQ(same, kind == moelab::nn::PositionKind::kNone) << moelab::nn::to_string(kind);
  }
  auto learned = TransformerMoEClassifier(tiny_transformer().positions(moelab::nn::PositionKind::kLearned));
  learned->forward_inputs(x).outputs.sum().backward();
  EXPECT_GT(learned->learned_positions->weight.grad().abs().sum().item<double>(), 0);
}

TEST(TransformerMoEClassifierTest, ConfigRoundTripsAndRejectsBadIndices) {
  auto config = moelab::run::resolve_run_config(
      {}, {"model.name=transformer_moe_classifier", "model.moe_layer_indices=[0]",
           "model.positions=learned", "model.moe.d_ff=0"});
  auto model = std::dynamic_pointer_cast<moelab::models::TransformerMoEClassifierImpl>(
      moelab::run::build_model(config));
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->options.moe_layer_indices(), std::vector<int64_t>{0});
  EXPECT_EQ(model->options.positions(), moelab::nn::PositionKind::kLearned);
  EXPECT_EQ(model->resolved_sizes()["d_ff"], 256);
  const YAML::Node written = moelab::models::to_yaml(model->options);
  EXPECT_TRUE(written["moe_layer_indices"].IsSequence());
  EXPECT_TRUE(moelab::models::to_yaml(TransformerMoEClassifierOptions())["moe_layer_indices"].IsNull());
  const std::string message = moelab::testing::error_message<moelab::ConfigError>([] {
    moelab::run::resolve_run_config(
        {}, {"model.name=transformer_moe_classifier", "model.moe_layer_indices=every"});
  });
  EXPECT_NE(message.find("model.moe_layer_indices: expected a list of layer indices"),
            std::string::npos) << message;
}
