#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moelab/nn/gating.h"
#include "moelab/nn/moe_layer.h"
#include "moelab/nn/router.h"
#include "support/naive_moe.h"

using moelab::nn::Router;
using moelab::nn::RouterKind;
using moelab::nn::RouterOptions;
using moelab::nn::ScoreFunction;

namespace {

// A router whose linear gate is the identity, so logits = x and tests can write logits by hand.
Router identity_router(RouterOptions options) {
  Router router(options.d_model(options.num_experts()));
  torch::NoGradGuard no_grad;
  router->gate->weight.copy_(torch::eye(options.num_experts()));
  return router;
}

at::Tensor logits_fixture() {
  return torch::tensor({{1.0, 3.0, 2.0, 0.0}, {0.5, 0.1, 0.2, 4.0}, {2.0, 2.5, -1.0, 0.0}});
}

}  // namespace

TEST(RouterTest, TopKChoosesTheLargestProbabilities) {
  auto router = identity_router(RouterOptions(4, 4).top_k(2));
  auto out = router->forward(logits_fixture());
  EXPECT_TRUE(torch::equal(out.indices, torch::tensor({{1, 2}, {3, 0}, {1, 0}}, torch::kLong)));
  at::Tensor probs = torch::softmax(logits_fixture(), -1);
  EXPECT_TRUE(torch::allclose(out.weights, probs.gather(1, out.indices)));
  EXPECT_TRUE(torch::allclose(out.probs.sum(-1), torch::ones({3})));
}

TEST(RouterTest, TopKRenormalisesAndAppliesTemperature) {
  auto router =
      identity_router(RouterOptions(4, 4).top_k(2).normalize_weights(true).temperature(0.5));
  auto out = router->forward(logits_fixture());
  EXPECT_TRUE(torch::allclose(out.weights.sum(-1), torch::ones({3})));
  // Token 0 chooses experts 1 and 2 with logits 3 and 2 at T = 0.5: weights softmax([6, 4]).
  at::Tensor expected = torch::softmax(torch::tensor({6.0, 4.0}), 0);
  EXPECT_TRUE(torch::allclose(out.weights[0], expected));
}

TEST(RouterTest, KEqualToNumExpertsChoosesEveryExpert) {
  auto router = identity_router(RouterOptions(4, 4).top_k(4));
  auto out = router->forward(logits_fixture());
  EXPECT_TRUE(torch::equal(std::get<0>(out.indices.sort(-1)),
                           torch::arange(4).expand({3, 4})));
}

TEST(RouterTest, SwitchRoutesToOneExpertAndJittersOnlyInTraining) {
  auto router = identity_router(RouterOptions(4, 4).kind(RouterKind::kSwitch).jitter_eps(0.5));
  router->eval();
  auto eval_out = router->forward(logits_fixture());
  EXPECT_TRUE(torch::equal(eval_out.indices, torch::tensor({{1}, {3}, {1}}, torch::kLong)));
  EXPECT_TRUE(torch::allclose(eval_out.logits, logits_fixture()));
  router->train();
  torch::manual_seed(1);
  auto train_out = router->forward(logits_fixture());
  EXPECT_FALSE(torch::allclose(train_out.logits, logits_fixture()));
  // Jitter is multiplicative within [1 - eps, 1 + eps].
  at::Tensor nonzero = logits_fixture() != 0;
  at::Tensor ratio = train_out.logits.masked_select(nonzero) / logits_fixture().masked_select(nonzero);
  EXPECT_LE(ratio.max().item<double>(), 1.5);
  EXPECT_GE(ratio.min().item<double>(), 0.5);
}

TEST(RouterTest, NoisyTopKAddsNoiseOnlyInTrainingAndEstimatesLoad) {
  auto router = identity_router(RouterOptions(4, 4).kind(RouterKind::kNoisyTopK).top_k(2));
  router->eval();
  auto eval_out = router->forward(logits_fixture());
  EXPECT_TRUE(torch::equal(eval_out.indices, torch::tensor({{1, 2}, {3, 0}, {1, 0}}, torch::kLong)));
  EXPECT_TRUE(torch::allclose(eval_out.weights.sum(-1), torch::ones({3})));
  EXPECT_FALSE(eval_out.load.defined());
  router->train();
  torch::manual_seed(0);
  auto train_out = router->forward(logits_fixture());
  EXPECT_FALSE(torch::allclose(train_out.logits, logits_fixture()));
  ASSERT_TRUE(train_out.load.defined());
  // The hard assignments: every token chose exactly k = 2 experts, N * k = 6 in all.
  EXPECT_EQ(torch::bincount(train_out.indices.view({-1}), {}, 4).sum().item<int64_t>(), 3 * 2);
  EXPECT_EQ(train_out.load.sizes(), at::IntArrayRef({4}));
  // The smooth estimate (Shazeer et al. 2017) is a probability per (token, expert); each lies in
  // [0, 1], so the sum is in [0, N * E] and here near N * k.
  EXPECT_GE(train_out.load.min().item<double>(), 0.0);
  EXPECT_LE(train_out.load.max().item<double>(), 3.0);
}

TEST(RouterTest, NoisyLoadEstimateMatchesHandComputedValue) {
  // One token, E = 3, k = 1: clean = noisy = [0, 1, 2], unit noise. Expert 2 is in (threshold =
  // second best = 1): P = Phi((2 - 1) / 1). Experts 0, 1 are out (threshold = best = 2):
  // Phi((0 - 2)) and Phi((1 - 2)).
  at::Tensor clean = torch::tensor({{0.0, 1.0, 2.0}}, torch::kDouble);
  at::Tensor load = moelab::nn::noisy_top_k_load(clean, clean, torch::ones_like(clean), 1);
  auto phi = [](double z) { return 0.5 * (1 + std::erf(z / std::sqrt(2.0))); };
  EXPECT_TRUE(torch::allclose(load, torch::tensor({phi(-2), phi(-1), phi(1)}, torch::kDouble)));
}

TEST(RouterTest, AuxFreeBiasChoosesButDoesNotWeight) {
  auto router = identity_router(RouterOptions(4, 4).kind(RouterKind::kAuxFree).top_k(1));
  at::Tensor x = torch::tensor({{1.0, 0.9, -1.0, -1.0}});
  EXPECT_EQ(router->forward(x).indices.item<int64_t>(), 0);
  {
    torch::NoGradGuard no_grad;
    router->expert_bias.copy_(torch::tensor({0.0, 0.5, 0.0, 0.0}));
  }
  auto out = router->forward(x);
  EXPECT_EQ(out.indices.item<int64_t>(), 1);
  EXPECT_NEAR(out.weights.item<double>(), 1.0 / (1.0 + std::exp(-0.9)), 1e-6);
}

TEST(RouterTest, AuxFreeSoftmaxScoresCompeteAcrossExperts) {
  auto router = identity_router(RouterOptions(4, 4)
                                    .kind(RouterKind::kAuxFree)
                                    .top_k(1)
                                    .score_function(ScoreFunction::kSoftmax));
  at::Tensor x = torch::tensor({{1.0, 0.9, -1.0, -1.0}});
  {
    torch::NoGradGuard no_grad;
    router->expert_bias.copy_(torch::tensor({0.0, 0.5, 0.0, 0.0}));
  }
  auto out = router->forward(x);
  EXPECT_EQ(out.indices.item<int64_t>(), 1);
  const double sum = std::exp(1.0) + std::exp(0.9) + 2 * std::exp(-1.0);
  EXPECT_NEAR(out.weights.item<double>(), std::exp(0.9) / sum, 1e-6);
  EXPECT_TRUE(torch::allclose(out.probs, torch::softmax(x, -1)));
  EXPECT_EQ(moelab::nn::parse_score_function("softmax"), ScoreFunction::kSoftmax);
  EXPECT_THROW(moelab::nn::parse_score_function("tanh"), c10::Error);
  // Other kinds have their own score function; setting one on them is refused, not ignored.
  EXPECT_THROW(Router(RouterOptions(4, 4).score_function(ScoreFunction::kSoftmax)), c10::Error);
}

TEST(RouterTest, AuxFreeBiasMovesTowardsBalance) {
  auto router = identity_router(
      RouterOptions(4, 4).kind(RouterKind::kAuxFree).top_k(1).bias_update_rate(0.1));
  router->train();
  // Every token prefers expert 0: its bias must fall, the idle experts' rise.
  router->forward(torch::tensor({{2.0, 0.0, 0.0, 0.0}, {3.0, 1.0, 0.0, 0.0}}));
  EXPECT_TRUE(torch::equal(router->load_count, torch::tensor({2.0f, 0.0f, 0.0f, 0.0f})));
  router->update_bias();
  EXPECT_TRUE(torch::allclose(router->expert_bias, torch::tensor({-0.1f, 0.1f, 0.1f, 0.1f})));
  EXPECT_EQ(router->load_count.sum().item<double>(), 0.0);
  // The step scales with rate_scale (the trainer's lr / peak lr); 0 freezes the bias.
  router->forward(torch::tensor({{0.0, 0.0, 0.0, 5.0}, {0.0, 0.0, 0.0, 5.0}}));
  router->update_bias(0.5);
  EXPECT_TRUE(torch::allclose(router->expert_bias, torch::tensor({-0.05f, 0.15f, 0.15f, 0.05f})));
  router->forward(torch::tensor({{5.0, 0.0, 0.0, 0.0}}));
  router->update_bias(0.0);
  EXPECT_TRUE(torch::allclose(router->expert_bias, torch::tensor({-0.05f, 0.15f, 0.15f, 0.05f})));
  EXPECT_THROW(router->update_bias(-1.0), c10::Error);
  // Evaluation does not count load.
  router->eval();
  router->forward(torch::tensor({{2.0, 0.0, 0.0, 0.0}}));
  EXPECT_EQ(router->load_count.sum().item<double>(), 0.0);
}

TEST(RouterTest, GroupLimitedKeepsOnlyTheBestGroups) {
  // Groups {0,1} {2,3} {4,5}; group scores are the best expert in each. Token: the best single
  // experts are 0 (0.9) and 4 (0.8), but with topk_groups = 1 only group {0,1} survives.
  auto router = identity_router(RouterOptions(6, 6)
                                    .kind(RouterKind::kGroupLimited)
                                    .top_k(2)
                                    .num_groups(3)
                                    .topk_groups(1));
  at::Tensor logits = torch::tensor({{0.9, 0.1, 0.3, 0.2, 0.8, 0.001}}).log();
  auto out = router->forward(logits);
  EXPECT_TRUE(torch::equal(out.indices, torch::tensor({{0, 1}}, torch::kLong)));
  auto two_groups = moelab::nn::select_top_k(torch::tensor({{0.9, 0.1, 0.3, 0.2, 0.8, 0.0}}), 2,
                                             {}, 3, 2, false);
  EXPECT_TRUE(torch::equal(two_groups.indices, torch::tensor({{0, 4}}, torch::kLong)));
}

TEST(RouterTest, ExpertChoiceGivesEachExpertItsTopTokens) {
  // N = 4 tokens, E = 2, k = 1, capacity factor 1: C = ceil(1 * 1 * 4 / 2) = 2 per expert.
  auto router = identity_router(RouterOptions(2, 2).kind(RouterKind::kExpertChoice));
  at::Tensor x = torch::tensor({{2.0, 0.0}, {0.0, 2.0}, {1.0, 0.0}, {0.0, 3.0}});
  auto out = router->forward(x);
  ASSERT_TRUE(out.is_expert_choice());
  EXPECT_TRUE(torch::equal(out.expert_tokens, torch::tensor({{0, 2}, {3, 1}}, torch::kLong)));
  EXPECT_TRUE(torch::allclose(out.expert_weights,
                              out.probs.t().gather(1, out.expert_tokens)));
  EXPECT_EQ(moelab::nn::expert_choice_capacity(1.25, 2, 10, 4), 7);  // ceil(6.25)
  EXPECT_EQ(moelab::nn::expert_choice_capacity(8.0, 2, 10, 4), 10);  // at most N
}

TEST(RouterTest, RandomRoutingIsSeededAndDistinct) {
  auto make = [](uint64_t seed) {
    return Router(RouterOptions(8, 8).kind(RouterKind::kRandom).top_k(3).seed(seed));
  };
  at::Tensor x = torch::randn({50, 8});
  auto a = make(7)->forward(x), b = make(7)->forward(x), c = make(8)->forward(x);
  EXPECT_TRUE(torch::equal(a.indices, b.indices));
  EXPECT_FALSE(torch::equal(a.indices, c.indices));
  EXPECT_TRUE(torch::allclose(a.weights, torch::full({50, 3}, 1.0 / 3)));
  at::Tensor sorted = std::get<0>(a.indices.sort(-1));
  EXPECT_TRUE((sorted.narrow(1, 1, 2) != sorted.narrow(1, 0, 2)).all().item<bool>());
  EXPECT_TRUE(make(0)->parameters().empty());
}

TEST(RouterTest, RandomRoutingStateTravelsInTheGeneratorBuffer) {
  auto make = [](uint64_t seed) {
    return Router(RouterOptions(8, 8).kind(RouterKind::kRandom).top_k(2).seed(seed));
  };
  at::Tensor x = torch::randn({20, 8});
  Router straight = make(3);
  straight->forward(x);
  const at::Tensor second = straight->forward(x).indices;
  // A router restored from a checkpoint taken after one draw continues the same sequence.
  Router saved = make(3);
  saved->forward(x);
  Router restored = make(99);
  restored->generator_state.copy_(saved->named_buffers()["generator_state"]);
  EXPECT_TRUE(torch::equal(restored->forward(x).indices, second));
}

TEST(RouterTest, HashRoutingDependsOnlyOnTheId) {
  Router router(RouterOptions(4, 5).kind(RouterKind::kHash).top_k(2));
  at::Tensor ids = torch::tensor({3, 17, 3, 42}, torch::kLong);
  auto out = router->forward(torch::randn({4, 4}), ids);
  EXPECT_TRUE(torch::equal(out.indices[0], out.indices[2]));
  EXPECT_EQ(((out.indices.select(1, 0) + 1) % 5 - out.indices.select(1, 1)).abs().sum().item<int64_t>(), 0);
  EXPECT_THROWS_WITH(router->forward(torch::randn({4, 4})), "needs token ids");
}

TEST(RouterTest, RejectsInvalidOptions) {
  EXPECT_THROWS_WITH(Router(RouterOptions(8, 4).top_k(5)), "top_k (5) must be in [1, num_experts=4]");
  EXPECT_THROWS_WITH(Router(RouterOptions(8, 4).top_k(0)), "top_k (0)");
  EXPECT_THROWS_WITH(Router(RouterOptions(8, 0)), "num_experts (0) must be >= 1");
  EXPECT_THROWS_WITH(Router(RouterOptions(8, 4).temperature(0)), "temperature (0)");
  EXPECT_THROWS_WITH(Router(RouterOptions(8, 4).kind(RouterKind::kSwitch).top_k(2)),
                     "switch router routes to one expert");
  EXPECT_THROWS_WITH(Router(RouterOptions(8, 6).kind(RouterKind::kGroupLimited).num_groups(4)),
                     "num_groups (4) must divide num_experts (6)");
  EXPECT_THROWS_WITH(Router(RouterOptions(8, 6).kind(RouterKind::kGroupLimited)),
                     "group_limited needs num_groups > 1");
  EXPECT_THROWS_WITH(Router(RouterOptions(8, 6).num_groups(2)), "num_groups (2) applies only");
  EXPECT_THROWS_WITH(moelab::nn::parse_router_kind("top2"), "unknown kind 'top2'");
  EXPECT_EQ(moelab::nn::parse_router_kind("expert_choice"), RouterKind::kExpertChoice);
}

TEST(RouterTest, RejectsWrongInputShape) {
  Router router(RouterOptions(8, 4));
  EXPECT_THROWS_WITH(router->forward(torch::randn({3, 7})), "input must be (N, d_model=8)");
}

// A gate network over images (N, 1, 2, 2): flatten then Linear(4, 3).
struct ImageGateImpl : torch::nn::Module {
  ImageGateImpl() { linear = register_module("linear", torch::nn::Linear(4, 3)); }
  at::Tensor forward(const at::Tensor& x) { return linear->forward(x.flatten(1)); }
  torch::nn::Linear linear{nullptr};
};

TEST(RouterTest, CustomGateNetworkReplacesTheLinearGate) {
  Router router(RouterOptions(0, 3).top_k(1),
                torch::nn::AnyModule(std::make_shared<ImageGateImpl>()));
  auto out = router->forward(torch::randn({5, 1, 2, 2}));
  EXPECT_EQ(out.indices.sizes(), at::IntArrayRef({5, 1}));
  EXPECT_EQ(router->named_parameters().size(), 2u);  // the gate network's weight and bias
}

TEST(RouterTest, UniformRoutingSendsEveryTokenToTheFirstKExpertsAtEqualWeight) {
  Router router(RouterOptions(8, 6).kind(RouterKind::kUniform).top_k(2));
  EXPECT_TRUE(router->parameters().empty());
  const auto out = router->forward(torch::randn({5, 8}));
  EXPECT_TRUE(torch::equal(out.indices, torch::tensor({0, 1}).to(at::kLong).expand({5, 2})));
  EXPECT_TRUE(torch::allclose(out.weights, torch::full({5, 2}, 0.5)));
  EXPECT_EQ(moelab::nn::parse_router_kind("uniform"), RouterKind::kUniform);
  // Through the layer: each token's output is the mean of experts 0 and 1 on it.
  moelab::nn::MoELayerOptions options(8, 16, 6);
  options.router().kind(RouterKind::kUniform).top_k(2);
  moelab::nn::MoELayer layer(options);
  const at::Tensor x = torch::randn({4, 8});
  auto expert = [&](int64_t e) {  // expert e alone on every row
    std::vector<int64_t> counts(6, 0);
    counts[e] = x.size(0);
    return layer->experts->forward(x, counts);
  };
  const at::Tensor expected = 0.5 * (expert(0) + expert(1));
  EXPECT_TRUE(torch::allclose(layer->forward(x).output, expected, 1e-5, 1e-5));
}
