#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moelab/nn/dispatch.h"
#include "support/naive_moe.h"

using moelab::nn::DispatchOptions;
using moelab::nn::DropPolicy;
using moelab::nn::plan_token_choice;

namespace {
at::Tensor longs(std::initializer_list<int64_t> values) {
  return torch::tensor(std::vector<int64_t>(values), torch::kLong);
}
}  // namespace

TEST(DispatchTest, DroplessPlanSortsSlotsByExpertInTokenOrder) {
  // N = 3, k = 2, E = 3. Slots: t0 -> {2, 0}, t1 -> {0, 1}, t2 -> {2, 1}.
  at::Tensor indices = torch::tensor({{2, 0}, {0, 1}, {2, 1}}, torch::kLong);
  at::Tensor weights = torch::tensor({{0.6, 0.4}, {0.7, 0.3}, {0.5, 0.5}});
  auto plan = plan_token_choice(indices, weights, 3);
  EXPECT_TRUE(torch::equal(plan.expert, longs({0, 0, 1, 1, 2, 2})));
  EXPECT_TRUE(torch::equal(plan.token, longs({0, 1, 1, 2, 0, 2})));
  EXPECT_TRUE(torch::allclose(plan.weight, torch::tensor({0.4, 0.7, 0.3, 0.5, 0.6, 0.5})));
  EXPECT_EQ(plan.counts_host, (std::vector<int64_t>{2, 2, 2}));
  EXPECT_EQ(plan.num_dropped, 0);
  EXPECT_EQ(plan.capacity, -1);
  EXPECT_TRUE(plan.kept.all().item<bool>());
  EXPECT_TRUE(torch::equal(plan.token_offsets, longs({0, 2, 4, 6})));
}

TEST(DispatchTest, CapacityDropsByPositionFirstChoicesFirst) {
  // N = 4, k = 2, E = 2, capacity_factor 0.5: C = ceil(0.5 * 2 * 4 / 2) = 2.
  // All first choices queue before any second choice, each in token order.
  // Expert 0's queue: t0, t1, t3 (first choices), then t2: t0 and t1 fit.
  // Expert 1's queue: t2 (first choice), then t0, t1, t3: t2 and t0 fit.
  at::Tensor indices = torch::tensor({{0, 1}, {0, 1}, {1, 0}, {0, 1}}, torch::kLong);
  at::Tensor weights = torch::full({4, 2}, 0.5);
  auto plan = plan_token_choice(indices, weights, 2,
                                DispatchOptions().dropless(false).capacity_factor(0.5));
  EXPECT_EQ(plan.capacity, 2);
  EXPECT_TRUE(torch::equal(plan.expert, longs({0, 0, 1, 1})));
  EXPECT_TRUE(torch::equal(plan.token, longs({0, 1, 2, 0})));
  EXPECT_EQ(plan.num_assigned, 8);
  EXPECT_EQ(plan.num_dropped, 4);
  EXPECT_TRUE(torch::equal(plan.kept, torch::tensor({{true, true}, {true, false},
                                                     {true, false}, {false, false}})));
}

TEST(DispatchTest, CapacityDropsByScoreKeepTheHeaviestSlots) {
  // E = 1, N = 4, k = 1, capacity_factor 0.5: C = 2. Weights decide: t3 (0.9) and t1 (0.8).
  at::Tensor indices = torch::zeros({4, 1}, torch::kLong);
  at::Tensor weights = torch::tensor({{0.1}, {0.8}, {0.3}, {0.9}});
  auto plan = plan_token_choice(
      indices, weights, 1,
      DispatchOptions().dropless(false).capacity_factor(0.5).drop_policy(DropPolicy::kScore));
  EXPECT_TRUE(torch::equal(plan.token, longs({3, 1})));
  EXPECT_TRUE(torch::equal(plan.kept.view({-1}), torch::tensor({false, true, false, true})));
}

TEST(DispatchTest, CapacityFactorFollowsTutel) {
  // cf > 0: fixed; 0: the largest load; < 0: the smaller of the two.
  EXPECT_EQ(moelab::nn::expert_capacity(1.0, 10, 2, 4, 9), 5);
  EXPECT_EQ(moelab::nn::expert_capacity(1.25, 10, 2, 4, 9), 7);
  EXPECT_EQ(moelab::nn::expert_capacity(0.0, 10, 2, 4, 9), 9);
  EXPECT_EQ(moelab::nn::expert_capacity(-4.0, 10, 2, 4, 9), 9);
  EXPECT_EQ(moelab::nn::expert_capacity(-1.0, 10, 2, 4, 9), 5);
  // capacity_factor 0 never drops.
  at::Tensor indices = torch::zeros({5, 1}, torch::kLong);
  auto plan = plan_token_choice(indices, torch::ones({5, 1}), 3,
                                DispatchOptions().dropless(false).capacity_factor(0));
  EXPECT_EQ(plan.capacity, 5);
  EXPECT_EQ(plan.num_dropped, 0);
}

TEST(DispatchTest, ExpertChoicePlan) {
  at::Tensor tokens = torch::tensor({{0, 2}, {3, 0}}, torch::kLong);
  auto plan = moelab::nn::plan_expert_choice(tokens, torch::tensor({{0.9, 0.5}, {0.8, 0.1}}), 4);
  EXPECT_TRUE(torch::equal(plan.expert, longs({0, 0, 1, 1})));
  EXPECT_TRUE(torch::equal(plan.token, longs({0, 2, 3, 0})));
  EXPECT_EQ(plan.counts_host, (std::vector<int64_t>{2, 2}));
  // Token 1 is chosen by no expert; token 0 by both.
  EXPECT_TRUE(torch::equal(plan.token_offsets, longs({0, 2, 2, 3, 4})));
}

TEST(DispatchTest, GatherThenCombineWithIdentityExpertsReturnsTheInput) {
  // Weights that sum to 1 per token and identity experts: combine(gather(x)) == x.
  at::Tensor x = torch::randn({6, 5}, torch::kDouble);
  at::Tensor indices = torch::tensor({{0, 1}, {1, 2}, {2, 0}, {0, 1}, {1, 2}, {2, 0}}, torch::kLong);
  at::Tensor weights = torch::rand({6, 2}, torch::kDouble);
  weights = weights / weights.sum(-1, true);
  auto plan = plan_token_choice(indices, weights, 3);
  at::Tensor y = moelab::nn::combine_rows(moelab::nn::gather_rows(x, plan), plan.weight, plan);
  EXPECT_TRUE(torch::allclose(y, x));
}

TEST(DispatchTest, GatherAndCombineGradientsMatchFiniteDifferences) {
  at::Tensor indices = torch::tensor({{0, 1}, {1, 1}, {2, 0}, {0, 2}}, torch::kLong);
  // Token 1 chose expert 1 twice: its gradient must sum both slots.
  auto plan = plan_token_choice(indices, torch::ones({4, 2}, torch::kDouble), 3);
  at::Tensor x = torch::randn({4, 3}, torch::kDouble).requires_grad_(true);
  at::Tensor w = torch::rand({plan.num_slots()}, torch::kDouble).requires_grad_(true);
  double error = moelab::testing::max_gradient_error(
      [&](const std::vector<at::Tensor>& in) {
        at::Tensor rows = moelab::nn::gather_rows(in[0], plan);
        return moelab::nn::combine_rows(rows * rows, in[1], plan);
      },
      {x, w});
  EXPECT_LT(error, 1e-7);
}

TEST(DispatchTest, TokensWithoutSlotsGetZerosAndAnEmptyBatchWorks) {
  auto plan = moelab::nn::plan_expert_choice(torch::tensor({{2}}, torch::kLong),
                                             torch::tensor({{0.5}}), 3);
  at::Tensor y = moelab::nn::combine_rows(torch::ones({1, 2}), plan.weight, plan);
  EXPECT_TRUE(torch::equal(y, torch::tensor({{0.0f, 0.0f}, {0.0f, 0.0f}, {0.5f, 0.5f}})));

  auto empty = plan_token_choice(torch::zeros({0, 2}, torch::kLong), torch::zeros({0, 2}), 4);
  EXPECT_EQ(empty.num_slots(), 0);
  EXPECT_EQ(empty.counts_host, (std::vector<int64_t>{0, 0, 0, 0}));
  at::Tensor rows = moelab::nn::gather_rows(torch::zeros({0, 3}), empty);
  EXPECT_EQ(rows.sizes(), at::IntArrayRef({0, 3}));
  EXPECT_EQ(moelab::nn::combine_rows(rows, empty.weight, empty).sizes(), at::IntArrayRef({0, 3}));
}

TEST(DispatchTest, RejectsBadInput) {
  EXPECT_THROWS_WITH(plan_token_choice(torch::tensor({{0, 4}}, torch::kLong), torch::ones({1, 2}), 4),
                     "expert indices must be in [0, 4), got values in [0, 4]");
  EXPECT_THROWS_WITH(plan_token_choice(torch::zeros({2, 2}, torch::kLong), torch::ones({2, 1}), 4),
                     "must match indices");
  EXPECT_THROWS_WITH(plan_token_choice(torch::zeros({2, 2}), torch::ones({2, 2}), 4),
                     "indices must be int64");
  auto plan = plan_token_choice(torch::zeros({2, 1}, torch::kLong), torch::ones({2, 1}), 2);
  EXPECT_THROWS_WITH(moelab::nn::gather_rows(torch::zeros({3, 4}), plan),
                     "input has 3 rows but the plan routes 2 tokens");
  EXPECT_THROWS_WITH(moelab::nn::parse_drop_policy("random"), "unknown drop_policy 'random'");
}
