#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moelab/nn/aux_losses.h"

using namespace moelab::nn;

TEST(AuxLossesTest, LoadBalanceMatchesHandComputedValue) {
  // E = 2, two tokens. P = mean probs = [0.7, 0.3]; f = counts / total = [3/4, 1/4].
  // loss = 2 * (0.75 * 0.7 + 0.25 * 0.3) = 1.2
  at::Tensor probs = torch::tensor({{0.8, 0.2}, {0.6, 0.4}}, torch::kDouble);
  at::Tensor counts = torch::tensor({3, 1}, torch::kLong);
  EXPECT_NEAR(load_balance_loss(probs, counts).item<double>(), 1.2, 1e-12);
  // Uniform routing gives exactly 1.
  EXPECT_NEAR(load_balance_loss(torch::full({4, 4}, 0.25), torch::tensor({2, 2, 2, 2})).item<double>(),
              1.0, 1e-6);
}

TEST(AuxLossesTest, CvSquaredUsesTheUnbiasedVariance) {
  // [1, 2, 3]: mean 2, unbiased var 1 -> 0.25.
  EXPECT_NEAR(cv_squared(torch::tensor({1.0, 2.0, 3.0}, torch::kDouble)).item<double>(), 0.25,
              1e-9);
  EXPECT_EQ(cv_squared(torch::tensor({5.0})).item<double>(), 0.0);
  EXPECT_NEAR(importance_load_loss(torch::tensor({1.0, 2.0, 3.0}, torch::kDouble),
                                   torch::tensor({2, 2, 2}))
                  .item<double>(),
              0.25, 1e-9);
}

TEST(AuxLossesTest, UsageMseMatchesHandComputedValue) {
  // mean probs = [0.7, 0.3], uniform 0.5: ((0.2)^2 + (0.2)^2) / 2 = 0.04.
  at::Tensor probs = torch::tensor({{0.8, 0.2}, {0.6, 0.4}}, torch::kDouble);
  EXPECT_NEAR(usage_mse_loss(probs).item<double>(), 0.04, 1e-12);
}

TEST(AuxLossesTest, EntropyAndZLossMatchHandComputedValues) {
  at::Tensor probs = torch::tensor({{0.5, 0.5}, {1.0, 0.0}}, torch::kDouble);
  EXPECT_NEAR(routing_entropy(probs).item<double>(), std::log(2.0) / 2, 1e-12);
  at::Tensor logits = torch::tensor({{0.0, 0.0}, {1.0, 1.0}}, torch::kDouble);
  // logsumexp: log 2 and 1 + log 2.
  const double expected = (std::pow(std::log(2.0), 2) + std::pow(1 + std::log(2.0), 2)) / 2;
  EXPECT_NEAR(router_z_loss(logits).item<double>(), expected, 1e-12);
  EXPECT_NEAR(distribution_entropy(torch::tensor({1.0, 1.0, 1.0, 1.0})).item<double>(),
              std::log(4.0), 1e-12);
}

TEST(AuxLossesTest, EntropyGradientIsFiniteAtZeroProbability) {
  at::Tensor probs = torch::tensor({{1.0, 0.0}}, torch::kDouble).requires_grad_(true);
  routing_entropy(probs).backward();
  EXPECT_TRUE(torch::isfinite(probs.grad()).all().item<bool>());
}

TEST(AuxLossesTest, EmptyBatchGivesZero) {
  at::Tensor none = torch::zeros({0, 4});
  EXPECT_EQ(load_balance_loss(none, torch::zeros({4}, torch::kLong)).item<double>(), 0.0);
  EXPECT_EQ(usage_mse_loss(none).item<double>(), 0.0);
  EXPECT_EQ(routing_entropy(none).item<double>(), 0.0);
  EXPECT_EQ(router_z_loss(none).item<double>(), 0.0);
}
