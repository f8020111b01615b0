#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>
#include <torch/torch.h>

#include "moelab/models/mlp_moe.h"
#include "moelab/models/registry.h"
#include "moelab/util/errors.h"

using moelab::models::MLPMoE;
using moelab::models::MLPMoEOptions;

namespace {
MLPMoEOptions tiny() {
  MLPMoEOptions options;
  options.input_dim(16).num_classes(4).num_layers(2);
  options.moe() = moelab::nn::MoELayerOptions(32, 64, 4);
  options.moe().router().top_k(2);
  options.moe().aux().load_balance(0.5);
  return options;
}
}  // namespace

TEST(MLPMoETest, ForwardGivesLogitsAndEveryLayersRouting) {
  MLPMoE model(tiny());
  auto out = model->forward_inputs(torch::randn({5, 16}));
  EXPECT_EQ(out.outputs.sizes(), at::IntArrayRef({5, 4}));
  ASSERT_EQ(out.moe_layers.size(), 2u);
  EXPECT_NEAR(out.aux_loss.item<double>(),
              out.moe_layers[0].aux_loss.item<double>() + out.moe_layers[1].aux_loss.item<double>(),
              1e-6);
  out.outputs.sum().backward();
  EXPECT_GT(model->blocks[0]->experts->w_in.grad().abs().sum().item<double>(), 0.0);
  EXPECT_THROW(model->forward_inputs(torch::randn({5, 15})), c10::Error);
}

TEST(MLPMoETest, CostMatchesAHandCount) {
  // input 16*32 + 32; per block: LayerNorm 2*32, router 32*4, experts 4*(2*64*32) + 4*(32*64);
  // final LayerNorm 2*32; head 32*4 + 4.
  const int64_t experts = 4 * (2 * 64 * 32) + 4 * (32 * 64);
  const int64_t block = 2 * 32 + 32 * 4 + experts;
  const int64_t total = (16 * 32 + 32) + 2 * block + 2 * 32 + (32 * 4 + 4);
  MLPMoE model(tiny());
  auto cost = model->cost();
  EXPECT_EQ(cost.parameters_total, total);
  EXPECT_EQ(cost.parameters_active, total - 2 * experts / 2);  // top-2 of 4 experts
  // MACs: input 16*32, head 32*4, per block router 32*4 + 2 experts * 3*32*64.
  EXPECT_EQ(cost.flops_per_sample, 2 * (16 * 32 + 32 * 4 + 2 * (32 * 4 + 2 * 3 * 32 * 64)));
}

TEST(MLPMoETest, RegistryBuildsByNameAndRejectsUnknownNames) {
  const auto& entry = moelab::models::find_model("mlp_moe");
  auto model = entry.build(YAML::Load("{input_dim: 8, num_classes: 3, num_layers: 1}"), "model");
  EXPECT_EQ(model->forward_inputs(torch::randn({2, 8})).outputs.sizes(), at::IntArrayRef({2, 3}));
  EXPECT_TRUE(entry.defaults()["moe"]["router"]["top_k"]);
  try {
    moelab::models::find_model("mlp-moe");
    FAIL() << "expected ConfigError";
  } catch (const moelab::ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "model.name: unknown model 'mlp-moe'; did you mean 'mlp_moe'? (registered: mlp_moe vision_moe cnn resnet18 transformer_moe_classifier moe_decoder chemoe)");
  }
}

TEST(MoELayerCostTest, ActiveParametersAndMacsCountKExperts) {
  moelab::nn::MoELayerOptions options(8, 16, 4);
  options.router().top_k(2);
  options.num_shared_experts(1).shared_gate(true);
  moelab::nn::MoELayer layer(options);
  const int64_t router = 8 * 4, expert = 3 * 8 * 16, shared = 3 * 8 * 16, gate = 8;
  EXPECT_EQ(layer->active_parameters(), router + 2 * expert + shared + gate);
  EXPECT_EQ(layer->active_macs_per_token(), router + 2 * expert + shared + gate);
  moelab::nn::MoELayerOptions ec(8, 16, 4);
  ec.router().kind(moelab::nn::RouterKind::kExpertChoice).top_k(1).capacity_factor(2.0);
  EXPECT_EQ(moelab::nn::MoELayer(ec)->active_parameters(), router + 2 * expert);
}
