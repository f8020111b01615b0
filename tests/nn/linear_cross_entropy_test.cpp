#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moelab/nn/linear_cross_entropy.h"
#include "moelab/util/runtime.h"

namespace {

// The unfused reference: logits, then cross-entropy, rows without a target at 0.
at::Tensor reference_nll(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets) {
  const at::Tensor nll = torch::nn::functional::cross_entropy(
      torch::mm(hidden, weight.t()), targets.clamp_min(0),
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  return nll * targets.ge(0);
}

}  // namespace

// Values and gradients equal the unfused form, for a mean-style loss (the precomputed weight
// gradient) and for rows weighted differently (the recomputed one), with chunks that do not
// divide the rows.
TEST(LinearCrossEntropyTest, MatchesTheUnfusedFormAndItsGradients) {
  torch::manual_seed(0);
  const at::Tensor targets = torch::tensor({3, -1, 0, 6, 2, 2, -1, 5, 1, 4, 0}, torch::kLong);
  for (bool uniform : {true, false}) {
    const at::Tensor h0 = torch::randn({11, 5}), w0 = torch::randn({7, 5});
    const at::Tensor upstream = uniform ? torch::full({11}, 0.25) : torch::rand({11});
    auto h1 = h0.clone().requires_grad_(), w1 = w0.clone().requires_grad_();
    auto h2 = h0.clone().requires_grad_(), w2 = w0.clone().requires_grad_();
    const at::Tensor fused = moelab::nn::linear_cross_entropy(h1, w1, targets, /*chunk_rows=*/4);
    const at::Tensor plain = reference_nll(h2, w2, targets);
    EXPECT_TRUE(torch::allclose(fused, plain, 1e-5, 1e-6));
    EXPECT_EQ(fused[1].item<float>(), 0.0f);
    (fused * upstream).sum().backward();
    (plain * upstream).sum().backward();
    EXPECT_TRUE(torch::allclose(h1.grad(), h2.grad(), 1e-5, 1e-6)) << "uniform " << uniform;
    EXPECT_TRUE(torch::allclose(w1.grad(), w2.grad(), 1e-5, 1e-6)) << "uniform " << uniform;
  }
  // Without gradients (evaluation) the values are the same.
  torch::NoGradGuard no_grad;
  const at::Tensor h = torch::randn({11, 5}), w = torch::randn({7, 5});
  EXPECT_TRUE(torch::allclose(moelab::nn::linear_cross_entropy(h, w, targets, 3), reference_nll(h, w, targets),
                              1e-5, 1e-6));
  EXPECT_THROW(moelab::nn::linear_cross_entropy(h, torch::randn({7, 4}), targets), c10::Error);
}

// Under bf16 autocast the GEMMs run in bf16 (float32 accumulation) and the softmax in float32:
// values and gradients stay within bf16 rounding of the float32 form, and the gradients come
// back in the parameters' type. (The bf16 path used to fail: a float32 out= buffer for bf16 rows.)
TEST(LinearCrossEntropyTest, Bf16AutocastKeepsFloat32SoftmaxAndGradients) {
  torch::manual_seed(1);
  const at::Tensor targets = torch::tensor({3, -1, 0, 6, 2, 2, -1, 5, 1, 4, 0}, torch::kLong);
  for (bool uniform : {true, false}) {
    const at::Tensor h0 = torch::randn({11, 16}), w0 = torch::randn({7, 16}) * 0.2;
    const at::Tensor upstream = uniform ? torch::full({11}, 0.5) : torch::rand({11});
    auto h1 = h0.clone().requires_grad_(), w1 = w0.clone().requires_grad_();
    auto h2 = h0.clone().requires_grad_(), w2 = w0.clone().requires_grad_();
    at::Tensor fused;
    {
      moelab::AutocastScope autocast(moelab::Precision::kBFloat16);
      fused = moelab::nn::linear_cross_entropy(h1, w1, targets, /*chunk_rows=*/4);
    }
    const at::Tensor plain = reference_nll(h2, w2, targets);
    EXPECT_EQ(fused.scalar_type(), at::kFloat);
    EXPECT_TRUE(torch::allclose(fused, plain, 3e-2, 3e-2)) << (fused - plain).abs().max();
    EXPECT_FALSE(torch::equal(fused, plain)) << "the GEMM did not run in bf16";
    EXPECT_EQ(fused[1].item<float>(), 0.0f);
    (fused * upstream).sum().backward();
    (plain * upstream).sum().backward();
    ASSERT_EQ(h1.grad().scalar_type(), at::kFloat);
    ASSERT_EQ(w1.grad().scalar_type(), at::kFloat);
    EXPECT_TRUE(torch::allclose(h1.grad(), h2.grad(), 3e-2, 3e-2)) << "uniform " << uniform;
    EXPECT_TRUE(torch::allclose(w1.grad(), w2.grad(), 3e-2, 3e-2)) << "uniform " << uniform;
  }
}

// A vocabulary that fills whole vectors of the row kernel and leaves a tail (37 = 2 x 16 + 5),
// float32 and bf16, every row kernel version: agreement with the unfused form; a target outside
// the vocabulary is refused with its value.
TEST(LinearCrossEntropyTest, WholeVectorsAndTailsOfTheRowKernel) {
  torch::manual_seed(2);
  const at::Tensor targets = torch::tensor({36, -1, 0, 17, 16, 31, -1, 5, 32, 4, 15, 20, 1}, torch::kLong);
  for (auto precision : {moelab::Precision::kFloat32, moelab::Precision::kBFloat16}) {
    const at::Tensor h0 = torch::randn({13, 24}), w0 = torch::randn({37, 24}) * 0.3;
    auto h1 = h0.clone().requires_grad_(), w1 = w0.clone().requires_grad_();
    auto h2 = h0.clone().requires_grad_(), w2 = w0.clone().requires_grad_();
    at::Tensor fused;
    {
      moelab::AutocastScope autocast(precision);
      fused = moelab::nn::linear_cross_entropy(h1, w1, targets, /*chunk_rows=*/5);
    }
    const at::Tensor plain = reference_nll(h2, w2, targets);
    const double tolerance = precision == moelab::Precision::kFloat32 ? 1e-5 : 5e-2;
    EXPECT_TRUE(torch::allclose(fused, plain, tolerance, tolerance)) << (fused - plain).abs().max();
    EXPECT_EQ(fused[6].item<float>(), 0.0f);
    fused.mean().backward();
    plain.mean().backward();
    EXPECT_TRUE(torch::allclose(h1.grad(), h2.grad(), tolerance, tolerance)) << (h1.grad() - h2.grad()).abs().max();
    EXPECT_TRUE(torch::allclose(w1.grad(), w2.grad(), tolerance, tolerance)) << (w1.grad() - w2.grad()).abs().max();
  }
  try {
    moelab::nn::linear_cross_entropy(torch::randn({2, 24}), torch::randn({37, 24}), torch::tensor({3, 37}, torch::kLong));
    ADD_FAILURE() << "a target outside the vocabulary was accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("target 37 is outside the vocabulary of 37"), std::string::npos) << e.what();
  }
}
