#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moelab/nn/moe_layer.h"
#include "moelab/util/runtime.h"
#include "support/naive_moe.h"

using moelab::nn::MoELayer;
using moelab::nn::MoELayerOptions;
using moelab::nn::RouterKind;

namespace {

MoELayer make_layer(int64_t d_model, int64_t d_ff, int64_t experts, int64_t k) {
  MoELayerOptions options(d_model, d_ff, experts);
  options.router().top_k(k);
  MoELayer layer(options);
  layer->to(torch::kDouble);
  return layer;
}

moelab::testing::ExpertWeights weights_of(const MoELayer& layer) {
  return moelab::testing::split_weights(layer->experts);
}

// The layer's fast path against the naive per-token loop over the same routing: outputs and the
// gradients of x, every expert weight and the gate.
void expect_matches_naive(int64_t experts, int64_t k, int64_t tokens) {
  torch::manual_seed(experts * 100 + k * 10 + tokens);
  MoELayer layer = make_layer(5, 7, experts, k);
  at::Tensor x = torch::randn({tokens, 5}, torch::kDouble).requires_grad_(true);
  at::Tensor probe = torch::randn({tokens, 5}, torch::kDouble);
  std::vector<at::Tensor> inputs{x, layer->experts->w_in, layer->experts->w_out,
                                 layer->router->gate->weight};

  auto out = layer->forward(x);
  auto fast_grads =
      torch::autograd::grad({(out.output * probe).sum()}, inputs, {}, false, false, true);
  auto routing = layer->router->forward(x);
  at::Tensor naive = moelab::testing::naive_moe(x, routing.indices, routing.weights, {},
                                                weights_of(layer), moelab::nn::Activation::kSwiGLU);
  ASSERT_TRUE(torch::allclose(out.output, naive, 1e-10, 1e-12))
      << "E=" << experts << " k=" << k << " N=" << tokens;
  if (tokens == 0) return;
  auto naive_grads =
      torch::autograd::grad({(naive * probe).sum()}, inputs, {}, false, false, true);
  for (size_t i = 0; i < inputs.size(); ++i) {
    at::Tensor expected = naive_grads[i].defined() ? naive_grads[i] : torch::zeros_like(inputs[i]);
    at::Tensor actual = fast_grads[i].defined() ? fast_grads[i] : torch::zeros_like(inputs[i]);
    EXPECT_TRUE(torch::allclose(actual, expected, 1e-10, 1e-12))
        << "gradient " << i << " E=" << experts << " k=" << k << " N=" << tokens;
  }
}

}  // namespace

TEST(MoELayerTest, FastPathMatchesNaiveReference) {
  for (auto [experts, k] : std::vector<std::pair<int64_t, int64_t>>{
           {1, 1}, {4, 1}, {4, 2}, {8, 3}, {3, 3}}) {
    expect_matches_naive(experts, k, 12);
  }
}

TEST(MoELayerTest, ExpertsWithoutTokensAndEmptyBatches) {
  expect_matches_naive(16, 1, 3);  // at least 13 of 16 experts get no token
  expect_matches_naive(4, 2, 0);
  MoELayer layer = make_layer(5, 7, 4, 2);
  auto out = layer->forward(torch::zeros({0, 5}, torch::kDouble));
  EXPECT_EQ(out.output.sizes(), at::IntArrayRef({0, 5}));
  EXPECT_EQ(out.stats.tokens_per_expert.sum().item<int64_t>(), 0);
  EXPECT_EQ(out.aux_loss.item<double>(), 0.0);
}

TEST(MoELayerTest, OneExpertTopOneEqualsTheDenseFFN) {
  MoELayer layer = make_layer(6, 10, 1, 1);
  moelab::nn::FeedForward dense(6, 10);
  dense->to(torch::kDouble);
  {
    torch::NoGradGuard no_grad;
    dense->w1->weight.copy_(layer->experts->gate_weight(0));
    dense->w3->weight.copy_(layer->experts->up_weight(0));
    dense->w2->weight.copy_(layer->experts->w_out[0]);
  }
  at::Tensor x = torch::randn({2, 3, 6}, torch::kDouble);
  auto out = layer->forward(x);
  EXPECT_EQ(out.output.sizes(), x.sizes());
  EXPECT_TRUE(torch::allclose(out.output, dense->forward(x), 1e-12, 1e-12));
}

TEST(MoELayerTest, GradientsMatchFiniteDifferences) {
  torch::manual_seed(3);
  MoELayerOptions options(3, 4, 3);
  options.router().top_k(2).normalize_weights(true);
  options.aux().load_balance(0.1).z_loss(0.01).importance_load(0.1).usage_mse(0.1).entropy(0.05);
  MoELayer layer(options);
  layer->to(torch::kDouble);
  at::Tensor x = torch::randn({4, 3}, torch::kDouble).requires_grad_(true);
  std::vector<at::Tensor> inputs{x};
  for (auto& p : layer->parameters()) inputs.push_back(p);
  double error = moelab::testing::max_gradient_error(
      [&](const std::vector<at::Tensor>&) {
        auto out = layer->forward(x);
        return at::cat({out.output.view({-1}), out.aux_loss.view({1})});
      },
      inputs);
  EXPECT_LT(error, 1e-6);
}

TEST(MoELayerTest, CapacityDropsGiveNothingAndAreReported) {
  // One expert, four tokens, capacity factor 0.5: C = 2, tokens 2 and 3 dropped (by position).
  MoELayerOptions options(4, 6, 1);
  options.dispatch().dropless(false).capacity_factor(0.5);
  MoELayer layer(options);
  at::Tensor x = torch::randn({4, 4});
  auto out = layer->forward(x);
  EXPECT_DOUBLE_EQ(out.stats.dropped_fraction, 0.5);
  EXPECT_TRUE(torch::equal(out.stats.kept.view({-1}), torch::tensor({true, true, false, false})));
  EXPECT_TRUE(torch::equal(out.output.narrow(0, 2, 2), torch::zeros({2, 4})));
  EXPECT_FALSE(torch::equal(out.output.narrow(0, 0, 2), torch::zeros({2, 4})));
}

TEST(MoELayerTest, PaddingMaskExcludesTokensFromRoutingLossesAndStats) {
  torch::manual_seed(5);
  MoELayerOptions options(4, 6, 3);
  options.router().top_k(2);
  options.aux().load_balance(1.0).z_loss(1.0);
  MoELayer layer(options);
  at::Tensor x = torch::randn({2, 3, 4});
  at::Tensor mask = torch::tensor({{true, false, true}, {false, true, true}});
  auto masked = layer->forward(x, mask);
  at::Tensor real = x.view({6, 4}).index_select(0, torch::tensor({0, 2, 4, 5}));
  auto alone = layer->forward(real);
  EXPECT_EQ(masked.stats.num_tokens, 4);
  EXPECT_TRUE(torch::allclose(masked.aux_loss, alone.aux_loss));
  EXPECT_TRUE(torch::equal(masked.stats.tokens_per_expert, alone.stats.tokens_per_expert));
  at::Tensor flat = masked.output.view({6, 4});
  EXPECT_TRUE(torch::allclose(flat.index_select(0, torch::tensor({0, 2, 4, 5})), alone.output));
  EXPECT_TRUE(torch::equal(flat[1], torch::zeros({4})));
  EXPECT_TRUE(torch::equal(masked.stats.indices.view({6, 2})[3], torch::tensor({-1, -1})));
  EXPECT_THROWS_WITH(layer->forward(x, torch::ones({6}, torch::kBool)),
                     "padding_mask [6] must have the input's leading shape [2, 3]");
}

TEST(MoELayerTest, AuxLossIsTheWeightedSumOfReportedTerms) {
  torch::manual_seed(9);
  MoELayerOptions options(4, 6, 4);
  options.router().top_k(2);
  options.aux().load_balance(0.5).z_loss(0.25);
  MoELayer layer(options);
  auto out = layer->forward(torch::randn({10, 4}));
  const auto& t = out.aux_terms;
  EXPECT_NEAR(out.aux_loss.item<double>(),
              0.5 * t.at("load_balance").item<double>() + 0.25 * t.at("z_loss").item<double>(),
              1e-6);
  // Every registered term is reported by name; terms with weight 0 without a graph.
  EXPECT_EQ(t.size(), moelab::nn::aux_term_registry().size());
  EXPECT_GT(t.at("usage_mse").item<double>(), 0.0);
  EXPECT_FALSE(t.at("usage_mse").requires_grad());
  EXPECT_TRUE(t.at("load_balance").requires_grad());
  EXPECT_NEAR(t.at("entropy").item<double>(), out.stats.token_entropy.item<double>(), 1e-6);
}

TEST(MoELayerTest, StatisticsDescribeTheRouting) {
  torch::manual_seed(2);
  MoELayer layer = make_layer(4, 6, 4, 2);
  auto out = layer->forward(torch::randn({10, 4}, torch::kDouble));
  const auto& s = out.stats;
  EXPECT_EQ(s.tokens_per_expert.sum().item<int64_t>(), 20);
  EXPECT_NEAR(s.usage.sum().item<double>(), 1.0, 1e-12);
  EXPECT_NEAR(s.gate_mass.sum().item<double>(), s.weights.sum().item<double>() / 10, 1e-9);
  at::Tensor counted = torch::bincount(s.indices.view({-1}), {}, 4);
  EXPECT_TRUE(torch::equal(counted, s.tokens_per_expert));
  EXPECT_LE(s.usage_entropy.item<double>(), std::log(4.0) + 1e-12);
  EXPECT_EQ(s.dropped_fraction, 0.0);
}

TEST(MoELayerTest, SameSeedSameRouting) {
  auto run = [](uint64_t seed) {
    torch::manual_seed(seed);
    MoELayerOptions options(4, 6, 8);
    options.router().kind(RouterKind::kNoisyTopK).top_k(2);
    MoELayer layer(options);
    layer->train();
    at::Tensor x = torch::randn({16, 4});
    return layer->forward(x);
  };
  auto a = run(11), b = run(11), c = run(12);
  EXPECT_TRUE(torch::equal(a.stats.indices, b.stats.indices));
  EXPECT_TRUE(torch::equal(a.output, b.output));
  EXPECT_FALSE(torch::equal(a.output, c.output));
}

TEST(MoELayerTest, SharedExpertsAreAddedToEveryToken) {
  torch::manual_seed(4);
  MoELayerOptions options(4, 6, 3);
  options.num_shared_experts(2).shared_d_ff(5).shared_gate(true);
  MoELayer layer(options);
  ASSERT_TRUE(layer->shared);
  EXPECT_EQ(layer->shared->options.d_ff(), 10);
  at::Tensor x = torch::randn({5, 4});
  auto out = layer->forward(x);
  auto routing = layer->router->forward(x);
  at::Tensor routed = moelab::testing::naive_moe(x, routing.indices, routing.weights, {},
                                                 weights_of(layer),
                                                 moelab::nn::Activation::kSwiGLU);
  at::Tensor shared = layer->shared->forward(x) * torch::sigmoid(layer->shared_gate->forward(x));
  EXPECT_TRUE(torch::allclose(out.output, routed + shared, 1e-5, 1e-6));
}

TEST(MoELayerTest, ExpertChoiceRoutesThroughTheSamePath) {
  torch::manual_seed(6);
  MoELayerOptions options(4, 6, 4);
  options.router().kind(RouterKind::kExpertChoice).top_k(2);
  MoELayer layer(options);
  at::Tensor x = torch::randn({8, 4});
  auto out = layer->forward(x);
  // C = ceil(1 * 2 * 8 / 4) = 4 tokens per expert.
  EXPECT_TRUE(torch::equal(out.stats.tokens_per_expert, torch::full({4}, 4, torch::kLong)));
  EXPECT_EQ(out.stats.indices.sizes(), at::IntArrayRef({8, 4}));
  at::Tensor naive = moelab::testing::naive_moe(x, out.stats.indices, out.stats.weights,
                                                out.stats.kept, weights_of(layer),
                                                moelab::nn::Activation::kSwiGLU);
  EXPECT_TRUE(torch::allclose(out.output, naive, 1e-5, 1e-6));
}

TEST(MoELayerTest, EveryRouterKindRunsForwardAndBackward) {
  for (RouterKind kind : {RouterKind::kTopK, RouterKind::kNoisyTopK, RouterKind::kSwitch,
                          RouterKind::kAuxFree, RouterKind::kGroupLimited,
                          RouterKind::kExpertChoice, RouterKind::kRandom, RouterKind::kHash}) {
    MoELayerOptions options(4, 6, 4);
    options.router().kind(kind).top_k(kind == RouterKind::kSwitch ? 1 : 2);
    if (kind == RouterKind::kGroupLimited) options.router().num_groups(2).topk_groups(1);
    MoELayer layer(options);
    layer->train();
    at::Tensor x = torch::randn({2, 6, 4}).requires_grad_(true);
    at::Tensor ids = torch::arange(12).view({2, 6});
    auto out = layer->forward(x, {}, ids);
    (out.output.sum() + out.aux_loss).backward();
    EXPECT_TRUE(torch::isfinite(x.grad()).all().item<bool>()) << moelab::nn::to_string(kind);
    EXPECT_GT(layer->experts->w_in.grad().abs().sum().item<double>(), 0.0)
        << moelab::nn::to_string(kind);
    if (moelab::nn::has_learned_gate(kind)) {  // the router learns too
      ASSERT_TRUE(layer->router->gate->weight.grad().defined()) << moelab::nn::to_string(kind);
      EXPECT_GT(layer->router->gate->weight.grad().abs().sum().item<double>(), 0.0)
          << moelab::nn::to_string(kind);
    }
    layer->update_routing_bias();
  }
}

TEST(MoELayerTest, RoutingBiasMovesTowardTheUnderLoadedExperts) {
  MoELayerOptions options(4, 6, 4);
  options.router().kind(RouterKind::kAuxFree).top_k(1).bias_update_rate(0.01);
  MoELayer layer(options);
  layer->train();
  {
    torch::NoGradGuard no_grad;
    layer->router->gate->weight.zero_();
    layer->router->gate->weight[2].fill_(1.0);  // every token of ones prefers expert 2
  }
  layer->forward(torch::ones({16, 4}));
  EXPECT_TRUE(torch::equal(layer->router->load_count,
                           torch::tensor({0.0, 0.0, 16.0, 0.0}).to(layer->router->load_count.dtype())));
  layer->update_routing_bias(/*rate_scale=*/0.5);
  // Over-loaded expert 2 down by rate * scale, the idle ones up by the same step.
  const at::Tensor expected = torch::tensor({0.005, 0.005, -0.005, 0.005});
  EXPECT_TRUE(torch::allclose(layer->router->expert_bias.to(at::kFloat), expected, 0, 1e-7))
      << layer->router->expert_bias;
  EXPECT_EQ(layer->router->load_count.sum().item<double>(), 0.0);  // the count starts over
}

TEST(MoELayerTest, ModuleExpertsRunInsideTheLayer) {
  std::vector<torch::nn::AnyModule> modules;
  for (int e = 0; e < 3; ++e) modules.emplace_back(torch::nn::Linear(4, 4));
  MoELayerOptions options(4, 1, 3);
  options.router().top_k(1);
  MoELayer layer(options, modules);
  at::Tensor x = torch::randn({6, 4});
  auto out = layer->forward(x);
  auto routing = layer->router->forward(x);
  for (int64_t t = 0; t < 6; ++t) {
    const int64_t e = routing.indices[t][0].item<int64_t>();
    at::Tensor expected =
        routing.weights[t][0] *
        layer->module_experts->expert(e).get<torch::nn::Linear>()->forward(x[t].unsqueeze(0))[0];
    EXPECT_TRUE(torch::allclose(out.output[t], expected, 1e-5, 1e-6));
  }
}

TEST(MoELayerTest, RejectsInvalidOptionsAndShapes) {
  MoELayer layer(MoELayerOptions(8, 16, 4));
  EXPECT_THROWS_WITH(layer->forward(torch::randn({3, 7})),
                     "input's last dim (7) must equal d_model (8)");
  MoELayerOptions random(8, 16, 4);
  random.router().kind(RouterKind::kRandom);
  random.aux().load_balance(0.01);
  EXPECT_THROWS_WITH(MoELayer(random), "random router has no learned gate");
  MoELayerOptions ec(8, 16, 4);
  ec.router().kind(RouterKind::kExpertChoice);
  ec.dispatch().dropless(false);
  EXPECT_THROWS_WITH(MoELayer(ec), "expert_choice routing has its own capacity");
  MoELayerOptions mismatch(8, 16, 4);
  mismatch.experts().num_experts(5);
  EXPECT_THROWS_WITH(MoELayer(mismatch), "experts.num_experts (5) must equal router.num_experts (4)");
  MoELayerOptions gate(8, 16, 4);
  gate.shared_gate(true);
  EXPECT_THROWS_WITH(MoELayer(gate), "shared_gate needs num_shared_experts > 0");
  MoELayerOptions topk(8, 16, 4);
  topk.router().top_k(9);
  EXPECT_THROWS_WITH(MoELayer(topk), "top_k (9) must be in [1, num_experts=4]");
}

TEST(MoELayerTest, ComposesWithTorchModules) {
  // A MoE layer held by a parent module: parameters register under stable names.
  struct Block : torch::nn::Module {
    Block() {
      proj = register_module("proj", torch::nn::Linear(4, 4));
      moe = register_module("moe", MoELayer(MoELayerOptions(4, 8, 2)));
    }
    torch::nn::Linear proj{nullptr};
    MoELayer moe{nullptr};
  };
  Block block;
  auto names = block.named_parameters().keys();
  for (const char* expected : {"proj.weight", "moe.router.gate.weight", "moe.experts.w_in",
                               "moe.experts.w_out"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), expected), names.end()) << expected;
  }
  at::Tensor y = block.moe->forward(block.proj->forward(torch::randn({3, 4}))).output;
  EXPECT_EQ(y.sizes(), at::IntArrayRef({3, 4}));
}

// Under bf16 autocast the router decides in float32 (the same experts as without autocast) and
// the routed and shared experts compute in bf16: float32 output within bf16 rounding, float32
// gradients for every parameter.
TEST(MoELayerTest, Bf16AutocastRoutesInFloat32AndComputesExpertsInBf16) {
  torch::manual_seed(3);
  MoELayerOptions options(16, 32, 4);
  options.router().top_k(2);
  options.num_shared_experts(1);
  MoELayer layer(options);
  const at::Tensor x = torch::randn({24, 16});
  const auto exact = layer->forward(x);
  moelab::nn::MoEOutput low;
  {
    moelab::AutocastScope autocast(moelab::Precision::kBFloat16);
    low = layer->forward(x);
  }
  EXPECT_TRUE(torch::equal(low.stats.indices, exact.stats.indices));
  EXPECT_EQ(low.output.scalar_type(), at::kFloat);
  EXPECT_TRUE(torch::allclose(low.output, exact.output, 3e-2, 3e-2))
      << (low.output - exact.output).abs().max();
  EXPECT_FALSE(torch::equal(low.output, exact.output)) << "the experts did not run in bf16";
  (low.output.square().sum() + low.aux_loss).backward();
  for (const auto& p : layer->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_EQ(p.value().grad().scalar_type(), at::kFloat) << p.key();
    EXPECT_TRUE(torch::isfinite(p.value().grad()).all().item<bool>()) << p.key();
  }
}
