#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "moelab/train/task.h"
#include "moelab/util/errors.h"

namespace {

// Uniform logits over V = 4: every real target costs ln 4 nats.
moelab::models::ModelOutput uniform_logits(int64_t batch, int64_t length) {
  moelab::models::ModelOutput out;
  out.outputs = torch::zeros({batch, length, 4});
  return out;
}

}  // namespace

// Two sequences of 3 targets, one of them padding (-1): 5 real targets, of which 3 begin a word
// (the others continue a word split into subwords). Loss ln 4 per token; perplexity 4; per-word
// perplexity exp(5 ln 4 / 3) = 4^(5/3).
TEST(LanguageModelTaskTest, PerWordPerplexityOnAHandComputedCase) {
  auto task = moelab::train::make_task("language_model");
  EXPECT_EQ(task->metrics()[2].name, "word_perplexity");
  moelab::data::Batch batch({{"token_ids", torch::zeros({2, 3}, torch::kLong)},
                             {"targets", torch::tensor({{1, 2, 3}, {0, 1, -1}}, torch::kLong)},
                             {"target_word_starts", torch::tensor({{1, 0, 1}, {1, 0, 1}}, torch::kBool)}});
  task->check_batch(batch);
  const auto output = uniform_logits(2, 3);
  const at::Tensor loss = task->sample_loss(output, batch);
  // Per sample: summed NLL over the batch's mean real tokens per sample (2.5).
  EXPECT_NEAR(loss[0].item<double>(), 3 * std::log(4.0) / 2.5, 1e-6);
  EXPECT_NEAR(loss[1].item<double>(), 2 * std::log(4.0) / 2.5, 1e-6);
  EXPECT_NEAR(loss.mean().item<double>(), std::log(4.0), 1e-6);
  auto metrics = task->accumulator();
  metrics->add(output, batch, loss.detach());
  metrics->add(output, batch, loss.detach());
  const auto result = metrics->result();
  EXPECT_NEAR(result.values.at("loss"), std::log(4.0), 1e-6);
  EXPECT_NEAR(result.values.at("perplexity"), 4.0, 1e-5);
  EXPECT_NEAR(result.values.at("word_perplexity"), std::pow(4.0, 5.0 / 3.0), 1e-4);
  EXPECT_EQ(result.details.at("tokens").get<int64_t>(), 10);
  EXPECT_EQ(result.details.at("words").get<int64_t>(), 6);
  // The sums round-trip exactly through a checkpoint's metadata.
  auto restored = task->accumulator();
  restored->load_state(metrics->state());
  EXPECT_EQ(restored->result().values, result.values);
  // The loss is differentiable in the logits.
  auto logits = torch::zeros({2, 3, 4}, torch::requires_grad());
  moelab::models::ModelOutput differentiable;
  differentiable.outputs = logits;
  task->sample_loss(differentiable, batch).mean().backward();
  EXPECT_EQ(logits.grad()[1][2].abs().sum().item<double>(), 0.0);  // the padded target
  EXPECT_NEAR(logits.grad()[0][0][1].item<double>(), (0.25 - 1) / 5, 1e-6);
}

TEST(LanguageModelTaskTest, RejectsDataWithoutTokens) {
  auto task = moelab::train::make_task("language_model");
  moelab::data::Batch images({{"inputs", torch::zeros({2, 3})}, {"targets", torch::zeros({2}, torch::kLong)}});
  EXPECT_THROW(task->check_batch(images), moelab::DataError);
}

// The decoder's fused path (hidden states and the output projection, no logits) gives the loss,
// the metrics and the gradients of the logits path.
TEST(LanguageModelTaskTest, FusedProjectionEqualsTheLogitsPath) {
  torch::manual_seed(5);
  auto task = moelab::train::make_task("language_model");
  const at::Tensor hidden0 = torch::randn({2, 3, 6}), weight0 = torch::randn({9, 6});
  moelab::data::Batch batch({{"token_ids", torch::zeros({2, 3}, torch::kLong)},
                             {"targets", torch::tensor({{1, 8, 3}, {0, -1, 2}}, torch::kLong)}});
  auto hidden1 = hidden0.clone().requires_grad_(), weight1 = weight0.clone().requires_grad_();
  auto hidden2 = hidden0.clone().requires_grad_(), weight2 = weight0.clone().requires_grad_();
  moelab::models::ModelOutput fused, logits;
  fused.hidden = hidden1;
  fused.output_weight = weight1;
  logits.outputs = torch::matmul(hidden2, weight2.t());
  const at::Tensor a = task->sample_loss(fused, batch), b = task->sample_loss(logits, batch);
  EXPECT_TRUE(torch::allclose(a, b, 1e-5, 1e-6));
  a.mean().backward();
  b.mean().backward();
  EXPECT_TRUE(torch::allclose(hidden1.grad(), hidden2.grad(), 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(weight1.grad(), weight2.grad(), 1e-5, 1e-6));
  auto m1 = task->accumulator(), m2 = task->accumulator();
  m1->add(fused, batch, a.detach());
  m2->add(logits, batch, b.detach());
  EXPECT_NEAR(m1->result().values.at("loss"), m2->result().values.at("loss"), 1e-6);
}
