#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moelab/nn/activation.h"

using moelab::nn::Activation;

TEST(ActivationTest, BackwardMatchesAutograd) {
  for (Activation a : {Activation::kReLU, Activation::kGELU, Activation::kSiLU}) {
    at::Tensor h = torch::randn({7, 5}, torch::kDouble).requires_grad_(true);
    at::Tensor g = torch::randn({7, 5}, torch::kDouble);
    moelab::nn::activate(h, a).backward(g);
    at::Tensor manual = moelab::nn::activate_backward(g, h.detach(), a);
    EXPECT_TRUE(torch::allclose(h.grad(), manual)) << moelab::nn::to_string(a);
  }
}

TEST(ActivationTest, ParsesNamesAndRejectsUnknownOnes) {
  EXPECT_EQ(moelab::nn::parse_activation("swiglu"), Activation::kSwiGLU);
  EXPECT_EQ(moelab::nn::to_string(moelab::nn::parse_activation("gelu")), "gelu");
  try {
    moelab::nn::parse_activation("tanh");
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown name 'tanh'"), std::string::npos);
  }
}
