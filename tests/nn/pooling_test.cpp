#include "moelab/nn/pooling.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <limits>

#include "moelab/nn/conv_layout.h"
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

namespace {

// conv3x3_relu_max_pool2x2 against LibTorch's conv2d, relu and max_pool2d: outputs and the
// weights' and bias's gradients.
void expect_first_stage_matches_aten(const at::Tensor& images, int64_t out_channels, bool bias,
                                     double tolerance) {
  const auto options = images.options();
  const at::Tensor w = at::randn({out_channels, images.size(1), 3, 3}, options).requires_grad_();
  const at::Tensor b = bias ? at::randn({out_channels}, options).requires_grad_() : at::Tensor();
  const at::Tensor w_ref = w.detach().clone().requires_grad_();
  const at::Tensor b_ref = bias ? b.detach().clone().requires_grad_() : at::Tensor();
  const at::Tensor y = moelab::nn::conv3x3_relu_max_pool2x2(images, w, b);
  const at::Tensor reference = at::max_pool2d(at::relu(at::conv2d(images, w_ref, b_ref, 1, 1)), 2);
  ASSERT_EQ(y.sizes(), reference.sizes());
  EXPECT_TRUE(at::allclose(y, reference, tolerance, tolerance)) << images.sizes();
  const at::Tensor probe = at::randn(y.sizes(), options);
  (y * probe).sum().backward();
  (reference * probe).sum().backward();
  EXPECT_TRUE(at::allclose(w.grad(), w_ref.grad(), tolerance, tolerance)) << images.sizes();
  if (bias) EXPECT_TRUE(at::allclose(b.grad(), b_ref.grad(), tolerance, tolerance));
}

}  // namespace

TEST(ConvReluMaxPoolTest, FusedFirstStageMatchesConvReluPoolAndGradients) {
  torch::manual_seed(0);
  // More images than one gradient group (16), gray and RGB, odd sides (floor pooling), no bias.
  expect_first_stage_matches_aten(torch::randn({37, 1, 28, 28}, torch::kDouble), 5, true, 1e-10);
  expect_first_stage_matches_aten(torch::randn({5, 3, 7, 9}, torch::kDouble), 4, true, 1e-10);
  expect_first_stage_matches_aten(torch::randn({3, 2, 6, 6}, torch::kDouble), 3, false, 1e-10);
  expect_first_stage_matches_aten(torch::randn({2, 1, 2, 3}, torch::kDouble), 2, true, 1e-10);
  expect_first_stage_matches_aten(torch::randn({20, 1, 28, 28}), 17, true, 1e-4);
}

TEST(ConvReluMaxPoolTest, FusedFirstStageGivesTheSameNumbersOnOneAndTwoThreads) {
  torch::manual_seed(1);
  const at::Tensor images = torch::randn({40, 1, 28, 28});
  const at::Tensor w = torch::randn({16, 1, 3, 3}), b = torch::randn({16});
  const at::Tensor probe = torch::randn({40, 16, 14, 14});
  const int threads = at::get_num_threads();
  std::vector<at::Tensor> results;
  for (int count : {1, 2}) {
    at::set_num_threads(count);
    const at::Tensor wc = w.clone().requires_grad_(), bc = b.clone().requires_grad_();
    const at::Tensor y = moelab::nn::conv3x3_relu_max_pool2x2(images, wc, bc);
    (y * probe).sum().backward();
    results.insert(results.end(), {y.detach(), wc.grad(), bc.grad()});
  }
  at::set_num_threads(threads);
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(at::equal(results[i], results[i + 3])) << i;
}

TEST(ConvReluMaxPoolTest, LaterStagesAndImagesNeedingGradientsTakeTheComposition) {
  torch::manual_seed(2);
  // Images needing their gradient, and 17 -> 33 channels (run channels-last: conv_layout.h).
  for (const auto& sizes : {std::vector<int64_t>{4, 1, 8, 8}, std::vector<int64_t>{4, 17, 6, 6}}) {
    const at::Tensor x = torch::randn(sizes, torch::kDouble).requires_grad_();
    const at::Tensor x_ref = x.detach().clone().requires_grad_();
    const at::Tensor w = torch::randn({33, sizes[1], 3, 3}, torch::kDouble);
    const at::Tensor y = moelab::nn::conv3x3_relu_max_pool2x2(x, w, at::Tensor());
    const at::Tensor reference = at::max_pool2d(at::relu(at::conv2d(x_ref, w, {}, 1, 1)), 2);
    EXPECT_TRUE(at::allclose(y, reference, 1e-10, 1e-10));
    y.sum().backward();
    reference.sum().backward();
    EXPECT_TRUE(at::allclose(x.grad(), x_ref.grad(), 1e-10, 1e-10));
  }
}

TEST(ConvReluMaxPoolTest, ChannelsLastOnlyWhereOneDnnWouldPadChannels) {
  using moelab::nn::in_fast_conv_layout;
  const auto channels_last = at::MemoryFormat::ChannelsLast;
  const at::Tensor odd = torch::randn({2, 17, 6, 6});
  EXPECT_TRUE(in_fast_conv_layout(odd, 33).is_contiguous(channels_last));
  EXPECT_TRUE(at::equal(in_fast_conv_layout(odd, 33), odd));
  EXPECT_TRUE(in_fast_conv_layout(torch::randn({2, 16, 6, 6}), 33).is_contiguous(channels_last));
  const at::Tensor aligned = torch::randn({2, 16, 6, 6});
  EXPECT_TRUE(in_fast_conv_layout(aligned, 32).is_same(aligned));
  const at::Tensor gray = torch::randn({2, 1, 6, 6});  // one channel: read in place in NCHW
  EXPECT_TRUE(in_fast_conv_layout(gray, 17).is_same(gray));
  const at::Tensor precise = torch::randn({2, 17, 6, 6}, torch::kDouble);  // measured: float32
  EXPECT_TRUE(in_fast_conv_layout(precise, 33).is_same(precise));
}

TEST(ConvReluMaxPoolTest, FusedFirstStageRefusesDoubleBackward) {
  const at::Tensor w = torch::randn({2, 1, 3, 3}).requires_grad_();
  const at::Tensor y = moelab::nn::conv3x3_relu_max_pool2x2(torch::randn({2, 1, 6, 6}), w, {});
  EXPECT_THROWS_WITH(torch::autograd::grad({y.sum()}, {w}, {}, true, /*create_graph=*/true),
                     "the fused first stage has no double backward");
}

TEST(ConvReluMaxPoolTest, RejectsWeightsThatDoNotFit) {
  const at::Tensor images = torch::randn({2, 1, 8, 8});
  EXPECT_THROWS_WITH(moelab::nn::conv3x3_relu_max_pool2x2(images, torch::randn({4, 2, 3, 3}), {}),
                     "weight must be (C_out, 1, 3, 3), got [4, 2, 3, 3]");
  EXPECT_THROWS_WITH(
      moelab::nn::conv3x3_relu_max_pool2x2(images, torch::randn({4, 1, 3, 3}), torch::randn({3})),
      "bias must be (4), got [3]");
  EXPECT_THROWS_WITH(
      moelab::nn::conv3x3_relu_max_pool2x2(torch::randn({2, 8, 8}), torch::randn({4, 1, 3, 3}), {}),
      "expected images (N, C, H, W)");
}
