#include <gtest/gtest.h>
#include <torch/torch.h>

#include <limits>

#include "moelab/nn/pooling.h"
#include "moelab/util/runtime.h"
#include "support/naive_moe.h"

namespace {

// relu_max_pool2x2 against LibTorch's max_pool2d(relu(x), 2): outputs and input gradients equal.
void expect_pooling_matches_aten(const at::Tensor& input) {
  const at::Tensor x = input.clone().requires_grad_(true), reference_x = input.clone().requires_grad_(true);
  const at::Tensor y = moelab::nn::relu_max_pool2x2(x);
  const at::Tensor reference = at::max_pool2d(at::relu(reference_x), 2);
  ASSERT_EQ(y.sizes(), reference.sizes());
  EXPECT_TRUE(at::equal(y.isnan(), reference.isnan()));
  EXPECT_TRUE(at::equal(y.nan_to_num(), reference.nan_to_num()));
  const at::Tensor probe = at::randn(y.sizes(), y.options());
  (y * probe).sum().backward();
  (reference * probe).sum().backward();
  EXPECT_TRUE(at::equal(x.grad().nan_to_num(), reference_x.grad().nan_to_num())) << input.sizes();
}

}  // namespace

TEST(ReluMaxPoolTest, EqualsReluThenMaxPoolWithItsGradient) {
  torch::manual_seed(0);
  expect_pooling_matches_aten(torch::randn({3, 4, 8, 10}));
  // Float rows in groups of 4 windows, the last group past the row end above the last row pair:
  // 14 and 7 windows (the vision CNN's), 15 with an odd width, 4 and 3 exactly.
  expect_pooling_matches_aten(torch::randn({4, 8, 28, 28}));
  expect_pooling_matches_aten(torch::randn({4, 8, 14, 14}));
  expect_pooling_matches_aten(torch::randn({2, 3, 9, 31}));
  expect_pooling_matches_aten(torch::randn({2, 3, 8, 8}));
  expect_pooling_matches_aten(torch::randn({2, 3, 6, 7}));
  expect_pooling_matches_aten(torch::randn({2, 3, 7, 9}));  // floor: the last row and column left out
  expect_pooling_matches_aten(torch::randn({2, 3, 6, 6}, torch::kDouble));
  // Ties (the first maximum in row-major order takes the gradient) and all-negative windows.
  expect_pooling_matches_aten(torch::randint(-2, 3, {4, 5, 8, 8}).to(torch::kFloat));
  expect_pooling_matches_aten(-torch::rand({1, 2, 4, 4}));
}

TEST(ReluMaxPoolTest, NaNWinsItsWindowAsInLibTorch) {
  at::Tensor x = torch::randn({1, 1, 4, 6});
  x[0][0][0][1] = std::numeric_limits<float>::quiet_NaN();
  x[0][0][3][4] = std::numeric_limits<float>::quiet_NaN();
  expect_pooling_matches_aten(x);
  at::Tensor wide = torch::randn({2, 2, 8, 18});  // windows in groups of 4
  wide[1][0][2][9] = std::numeric_limits<float>::quiet_NaN();
  wide[0][1][7][17] = std::numeric_limits<float>::quiet_NaN();
  expect_pooling_matches_aten(wide);
}

TEST(ReluMaxPoolTest, TwoThreadsAndBf16GiveTheSameNumbers) {
  const int threads = at::get_num_threads();
  const at::Tensor x = torch::randn({8, 16, 28, 28});
  at::set_num_threads(1);
  const at::Tensor one = moelab::nn::relu_max_pool2x2(x);
  at::set_num_threads(2);
  const at::Tensor two = moelab::nn::relu_max_pool2x2(x);
  at::set_num_threads(threads);
  EXPECT_TRUE(at::equal(one, two));
  const at::Tensor half = x.to(torch::kBFloat16);
  EXPECT_TRUE(at::equal(moelab::nn::relu_max_pool2x2(half), at::max_pool2d(at::relu(half), 2)));
}

TEST(ReluMaxPoolTest, RejectsWhatIsNotAnImageBatch) {
  EXPECT_THROWS_WITH(moelab::nn::relu_max_pool2x2(torch::randn({3, 4, 5})), "expected (N, C, H, W)");
  EXPECT_THROWS_WITH(moelab::nn::relu_max_pool2x2(torch::randn({1, 1, 1, 4})), "has no 2x2 window");
}
