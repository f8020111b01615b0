#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moelab/nn/dropout.h"



TEST(DropoutTest, DropsAboutPAndScalesTheRestAndIsTheIdentityOutsideTraining) {
  torch::manual_seed(0);
  const at::Tensor x = torch::ones({1 << 20});
  const at::Tensor y = moelab::nn::dropout(x, 0.25, /*training=*/true);
  const double dropped = y.eq(0).to(torch::kDouble).mean().item<double>();
  EXPECT_NEAR(dropped, 0.25, 0.003);  // 1M draws: sd 0.0004
  EXPECT_TRUE(torch::allclose(y.masked_select(y.ne(0)), torch::full({1}, 1 / 0.75)));
  EXPECT_TRUE(moelab::nn::dropout(x, 0.25, /*training=*/false).is_same(x));
  EXPECT_TRUE(moelab::nn::dropout(x, 0.0, /*training=*/true).is_same(x));
  EXPECT_THROW(moelab::nn::dropout(x, 1.0, true), c10::Error);
  EXPECT_THROW(moelab::nn::dropout(x, -0.1, true), c10::Error);
}

TEST(DropoutTest, TheMaskIsAFunctionOfTheSeedAloneWhateverTheThreadsOrType) {
  const int threads = at::get_num_threads();
  torch::manual_seed(7);
  at::set_num_threads(1);
  const at::Tensor one = moelab::nn::dropout(torch::ones({100000}), 0.5, true);
  torch::manual_seed(7);
  at::set_num_threads(2);
  const at::Tensor two = moelab::nn::dropout(torch::ones({100000}), 0.5, true);
  at::set_num_threads(threads);
  EXPECT_TRUE(torch::equal(one, two));
  // Neighbouring elements are not correlated (a hash per element, not a shared stream).
  const at::Tensor kept = one.ne(0).to(torch::kDouble);
  const double both = (kept.slice(0, 0, -1) * kept.slice(0, 1)).mean().item<double>();
  EXPECT_NEAR(both, 0.25, 0.01);
  EXPECT_TRUE(torch::equal(moelab::nn::dropout_mask(1000, 0.3, 11, torch::kFloat).ne(0),
                           moelab::nn::dropout_mask(1000, 0.3, 11, torch::kDouble).ne(0)));
  EXPECT_TRUE(torch::equal(moelab::nn::dropout_mask(1000, 0.3, 11, torch::kFloat).ne(0),
                           moelab::nn::dropout_mask(1000, 0.3, 11, torch::kBFloat16).ne(0)));
  EXPECT_FALSE(torch::equal(moelab::nn::dropout_mask(1000, 0.3, 11, torch::kFloat),
                            moelab::nn::dropout_mask(1000, 0.3, 12, torch::kFloat)));
}

TEST(DropoutTest, TheGradientIsTheForwardMaskRegeneratedFromTheSeed) {
  torch::manual_seed(3);
  const at::Tensor x = torch::randn({37, 129}, torch::requires_grad());
  const at::Tensor y = moelab::nn::dropout(x.t(), 0.4, true);  // a non-contiguous input
  const at::Tensor upstream = torch::randn({129, 37});
  y.backward(upstream);
  // d(y)/d(x) is 1/(1-p) where y kept x, 0 where it dropped it.
  const at::Tensor mask = y.ne(0).to(torch::kFloat) / 0.6;
  EXPECT_TRUE(torch::allclose(x.grad(), (upstream * mask).t()));
  EXPECT_TRUE(torch::allclose(y, x.t() * mask));
}
