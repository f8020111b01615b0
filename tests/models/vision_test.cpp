#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moelab/run/run.h"
#include "moelab/run/run_config.h"
#include "moelab/config/config.h"
#include "moelab/models/registry.h"
#include "moelab/models/vision.h"

using namespace moelab::models;

namespace {

ConvNetOptions small_convnet() {
  return ConvNetOptions().in_channels(1).image_size(8).num_classes(3).width(2).depth(2).hidden(4);
}

VisionMoEOptions small_vision_moe(int64_t experts, int64_t k) {
  VisionMoEOptions o;
  o.expert(small_convnet()).num_experts(experts).router_width(2);
  o.router().top_k(k);
  return o;
}

}  // namespace

TEST(ConvNetTest, ParametersAndFlopsMatchHandCounts) {
  // conv 1->2: 20 params, 2*1*2*9*8*8 = 2304 FLOPs; conv 2->4: 76, 2*2*4*9*4*4 = 2304;
  // fc 16->4: 68, 128; fc 4->3: 15, 24.
  EXPECT_EQ(convnet_parameters(small_convnet()), 179);
  EXPECT_EQ(convnet_flops(small_convnet()), 4760);
  ConvNet net(small_convnet());
  int64_t counted = 0;
  for (const auto& p : net->parameters()) counted += p.numel();
  EXPECT_EQ(counted, 179);
  EXPECT_EQ(net->forward(torch::randn({5, 1, 8, 8})).sizes(), (std::vector<int64_t>{5, 3}));
  // A width multiplier of 1.5 gives 3 and 6 channels and 6 hidden units.
  auto wide = small_convnet().width_multiplier(1.5);
  EXPECT_EQ(stage_channels(wide, 0), 3);
  EXPECT_EQ(stage_channels(wide, 1), 6);
  EXPECT_EQ(hidden_units(wide), 6);
}

TEST(VisionMoETest, HardTop1RunsOnlyTheChosenExpertOnExactlyItsImages) {
  torch::manual_seed(3);
  VisionMoEImpl model(small_vision_moe(3, 1));
  const at::Tensor x = torch::randn({12, 1, 8, 8});
  ModelOutput out = model.forward_inputs(x);
  const at::Tensor chosen = out.moe_layers[0].stats.indices.view({-1});
  const at::Tensor per_expert = at::bincount(chosen, {}, 3);
  const auto& rows = model.last_rows_per_expert();
  for (int64_t e = 0; e < 3; ++e) EXPECT_EQ(rows.at(e), per_expert[e].item<int64_t>()) << e;
  EXPECT_EQ(rows[0] + rows[1] + rows[2], 12);
  // Naive reference: each image through its own expert, scaled by its gate probability.
  torch::NoGradGuard no_grad;
  const at::Tensor probs = torch::softmax(model.router_network->forward(x), -1);
  for (int64_t i = 0; i < 12; ++i) {
    const int64_t e = chosen[i].item<int64_t>();
    EXPECT_EQ(e, probs[i].argmax().item<int64_t>());
    const at::Tensor expected = probs[i][e] * model.experts[e]->forward(x.narrow(0, i, 1))[0];
    EXPECT_TRUE(torch::allclose(out.outputs[i], expected, 1e-5, 1e-6)) << i;
  }
}

TEST(VisionMoETest, TopKMixesTheKExpertsByGateValue) {
  torch::manual_seed(4);
  VisionMoEImpl model(small_vision_moe(4, 2));
  const at::Tensor x = torch::randn({6, 1, 8, 8});
  ModelOutput out = model.forward_inputs(x);
  torch::NoGradGuard no_grad;
  const at::Tensor probs = torch::softmax(model.router_network->forward(x), -1);
  const auto top = probs.topk(2, -1);
  for (int64_t i = 0; i < 6; ++i) {
    at::Tensor expected = torch::zeros({3});
    for (int64_t j = 0; j < 2; ++j) {
      const int64_t e = std::get<1>(top)[i][j].item<int64_t>();
      expected += std::get<0>(top)[i][j] * model.experts[e]->forward(x.narrow(0, i, 1))[0];
    }
    EXPECT_TRUE(torch::allclose(out.outputs[i], expected, 1e-5, 1e-6)) << i;
  }
  int64_t slots = 0;
  for (int64_t r : model.last_rows_per_expert()) slots += r;
  EXPECT_EQ(slots, 12);
}

TEST(VisionMoETest, OneExpertTop1IsTheExpertAlone) {
  VisionMoEImpl model(small_vision_moe(1, 1));
  const at::Tensor x = torch::randn({5, 1, 8, 8});
  const at::Tensor out = model.forward_inputs(x).outputs;
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::allclose(out, model.experts[0]->forward(x), 1e-6, 1e-7));
}

TEST(VisionMoETest, TheRouterLearnsThroughTheGateValue) {
  VisionMoEImpl model(small_vision_moe(3, 1));
  ModelOutput out = model.forward_inputs(torch::randn({8, 1, 8, 8}));
  at::cross_entropy_loss(out.outputs, torch::randint(0, 3, {8}, at::kLong)).backward();
  EXPECT_GT(model.router_network->score->weight.grad().abs().sum().item<double>(), 0.0);
}

TEST(VisionMoETest, CostCountsTheRouterAndKExperts) {
  VisionMoEImpl model(small_vision_moe(4, 2));
  const ModelCost cost = model.cost();
  int64_t router_params = 0;
  for (const auto& p : model.router_network->parameters()) router_params += p.numel();
  EXPECT_EQ(cost.parameters_total, router_params + 4 * 179);
  EXPECT_EQ(cost.parameters_active, router_params + 2 * 179);
  // Router: conv 1->2 stride 2 on 8x8 -> 4x4: 2*1*2*9*16 = 576; conv 2->4 -> 2x2: 2*2*4*9*4 =
  // 576; score 4->4: 32.
  EXPECT_EQ(model.router_network->flops(), 576 + 576 + 32);
  EXPECT_EQ(cost.flops_per_sample, 1184 + 2 * 4760);
}

TEST(VisionMoETest, DenseBaselinesMatchFlopsAndParametersWithinFivePercent) {
  const ConvNetOptions expert = ConvNetOptions().width(16).depth(2).hidden(64);
  for (int64_t experts : {4, 8}) {
    VisionMoEOptions options;
    options.expert(expert).num_experts(experts);
    const ModelCost moe = VisionMoEImpl(options).cost();
    ConvNetOptions iso_flops = expert;
    iso_flops.width_multiplier(match_width_multiplier(expert, MatchTarget::kFlops, moe.flops_per_sample));
    ConvNetOptions iso_params = expert;
    iso_params.width_multiplier(
        match_width_multiplier(expert, MatchTarget::kParameters, moe.parameters_total));
    EXPECT_NEAR(convnet_flops(iso_flops), moe.flops_per_sample, 0.05 * moe.flops_per_sample);
    EXPECT_NEAR(convnet_parameters(iso_params), moe.parameters_total, 0.05 * moe.parameters_total);
    EXPECT_GT(iso_params.width_multiplier(), iso_flops.width_multiplier());
  }
}

TEST(ResNet18Test, HasTheKnownParameterCountAndShapes) {
  // The CIFAR ResNet-18 with 10 classes has 11,173,962 parameters.
  EXPECT_EQ(ResNet18Impl(ResNet18Options()).cost().parameters_total, 11173962);
  ResNet18Impl narrow(ResNet18Options().width(4));
  EXPECT_EQ(narrow.forward_inputs(torch::randn({2, 3, 32, 32})).outputs.sizes(), (std::vector<int64_t>{2, 10}));
  EXPECT_THROW(narrow.forward_inputs(torch::randn({2, 1, 28, 28})), c10::Error);
}

TEST(VisionRegistryTest, ConfigBuildsEachVisionModel) {
  for (const char* name : {"vision_moe", "cnn", "resnet18"}) {
    auto config = moelab::run::resolve_run_config({}, {std::string("model.name=") + name});
    EXPECT_NE(moelab::run::build_model(config), nullptr) << name;
  }
  auto config = moelab::run::resolve_run_config(
      {}, {"model.name=vision_moe", "model.num_experts=8", "model.router.top_k=2",
           "model.expert.width=8"});
  auto model = std::dynamic_pointer_cast<VisionMoEImpl>(moelab::run::build_model(config));
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->options.num_experts(), 8);
  EXPECT_EQ(model->experts[0]->options.width(), 8);
}

// The up-front memory check's estimates, from the options alone, against the built models.
TEST(ModelRegistryTest, ParameterEstimatesMatchTheBuiltModels) {
  for (const auto& entry : moelab::models::model_registry()) {
    ASSERT_TRUE(entry.estimate_parameters) << entry.name;
    ASSERT_TRUE(entry.estimate_activations) << entry.name;
    std::vector<std::string> overrides{"model.name=" + entry.name};
    if (entry.name == "moe_decoder") overrides.push_back("model.vocab_size=300");  // 0 = the data's
    if (entry.name == "chemoe") {
      for (const char* size : {"model.num_genes=50", "model.input_dim=64", "model.num_cell_lines=3"}) {
        overrides.push_back(size);
      }
    }
    auto config = moelab::run::resolve_run_config({}, overrides);
    YAML::Node section = moelab::config::clone(config["model"]);
    section.remove("name");
    const double built = static_cast<double>(moelab::run::build_model(config)->cost().parameters_total);
    // vision_moe leaves out its tiny router; the others are exact.
    EXPECT_NEAR(entry.estimate_parameters(section), built, entry.name == "vision_moe" ? 0.02 * built : 0.5)
        << entry.name;
    EXPECT_GT(entry.estimate_activations(section), 0) << entry.name;
  }
  // Activations grow with the image area: a ResNet-18 on 64x64 keeps ~4x what it keeps on 32x32.
  const double small = resnet18_activations(ResNet18Options()),
               large = resnet18_activations(ResNet18Options().image_size(64));
  EXPECT_NEAR(large / small, 4.0, 0.1);
}
