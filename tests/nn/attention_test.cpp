#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "moelab/nn/attention.h"
#include "moelab/nn/positional_encoding.h"

using moelab::nn::KVCache;
using moelab::nn::MultiheadAttention;
using moelab::nn::MultiheadAttentionOptions;

namespace {

// Attention written out per sequence, head, query and key in float64, from the module's
// weights: the reference the batched module must match.
at::Tensor naive_attention(MultiheadAttention& attention, const at::Tensor& x,
                           const at::Tensor& key_mask) {
  const auto& o = attention->options;
  const int64_t batch = x.size(0), length = x.size(1), heads = o.num_heads();
  const int64_t dh = o.d_model() / heads;
  auto project = [](const torch::nn::Linear& linear, const at::Tensor& in) {
    at::Tensor out = at::matmul(in, linear->weight.to(at::kDouble).t());
    return linear->bias.defined() ? out + linear->bias.to(at::kDouble) : out;
  };
  const at::Tensor xd = x.to(at::kDouble);
  at::Tensor q = project(attention->q_proj, xd), k = project(attention->k_proj, xd),
             v = project(attention->v_proj, xd);
  at::Tensor context = at::zeros({batch, length, o.d_model()}, at::kDouble);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      at::Tensor qh = q[b].narrow(1, h * dh, dh), kh = k[b].narrow(1, h * dh, dh),
                 vh = v[b].narrow(1, h * dh, dh);  // (L, Dh)
      if (o.rope()) {
        qh = moelab::nn::apply_rotary(qh, 0, o.rope_base());
        kh = moelab::nn::apply_rotary(kh, 0, o.rope_base());
      }
      for (int64_t i = 0; i < length; ++i) {
        std::vector<double> scores;
        double top = -1e300;
        for (int64_t j = 0; j < length; ++j) {
          const bool visible = (!key_mask.defined() || key_mask[b][j].item<bool>()) &&
                               (!o.causal() || j <= i);
          const double score = visible ? (qh[i] * kh[j]).sum().item<double>() / std::sqrt(dh) : -1e30;
          scores.push_back(score);
          top = std::max(top, score);
        }
        double total = 0;
        for (double& s : scores) total += (s = std::exp(s - top));
        at::Tensor row = at::zeros({dh}, at::kDouble);
        for (int64_t j = 0; j < length; ++j) row += vh[j] * (scores[j] / total);
        context[b][i].narrow(0, h * dh, dh).copy_(row);
      }
    }
  }
  return project(attention->out_proj, context);
}

MultiheadAttention small_attention(bool causal, bool rope) {
  torch::manual_seed(7);
  return MultiheadAttention(MultiheadAttentionOptions(8, 2).causal(causal).rope(rope));
}

}  // namespace

TEST(MultiheadAttentionTest, MatchesANaiveReferenceWithMasksCausalityAndRope) {
  for (bool causal : {false, true}) {
    for (bool rope : {false, true}) {
      MultiheadAttention attention = small_attention(causal, rope);
      torch::manual_seed(1);
      const at::Tensor x = torch::randn({2, 5, 8});
      const at::Tensor mask = torch::tensor({1, 1, 1, 1, 1, 1, 1, 1, 0, 0}).view({2, 5}).to(at::kBool);
      const at::Tensor got = attention->forward(x, mask);
      const at::Tensor expected = naive_attention(attention, x, mask);
      EXPECT_TRUE(at::allclose(got.to(at::kDouble), expected, 1e-5, 1e-5))
          << "causal " << causal << " rope " << rope << "\n" << (got - expected).abs().max();
    }
  }
}

TEST(MultiheadAttentionTest, MaskedAndFuturePositionsDoNotReachTheOutput) {
  MultiheadAttention attention = small_attention(/*causal=*/true, /*rope=*/true);
  torch::manual_seed(2);
  const at::Tensor x = torch::randn({1, 6, 8});
  const at::Tensor mask = torch::tensor({1, 1, 0, 1, 1, 1}).view({1, 6}).to(at::kBool);
  const at::Tensor before = attention->forward(x, mask);
  at::Tensor changed = x.clone();
  changed[0][2] += 100.0;  // a padding position
  changed[0][5] -= 50.0;   // the last position: no earlier query sees it
  const at::Tensor after = attention->forward(changed, mask);
  EXPECT_TRUE(at::allclose(before.narrow(1, 0, 2), after.narrow(1, 0, 2), 0, 1e-6));
  EXPECT_TRUE(at::allclose(before.narrow(1, 3, 2), after.narrow(1, 3, 2), 0, 1e-6));
  // A sequence of padding only stays finite.
  const at::Tensor none = attention->forward(x, at::zeros({1, 6}, at::kBool));
  EXPECT_TRUE(at::isfinite(none).all().item<bool>());
}

TEST(MultiheadAttentionTest, TheKeyValueCacheGivesTheFullPassOnePositionAtATime) {
  MultiheadAttention attention = small_attention(/*causal=*/true, /*rope=*/true);
  torch::manual_seed(3);
  const at::Tensor x = torch::randn({2, 7, 8});
  const at::Tensor full = attention->forward(x);
  KVCache cache;
  std::vector<at::Tensor> steps;
  steps.push_back(attention->forward(x.narrow(1, 0, 3), {}, &cache));  // a prompt of 3
  for (int64_t t = 3; t < 7; ++t) steps.push_back(attention->forward(x.narrow(1, t, 1), {}, &cache));
  EXPECT_EQ(cache.length(), 7);
  EXPECT_TRUE(at::allclose(at::cat(steps, 1), full, 1e-5, 1e-5))
      << (at::cat(steps, 1) - full).abs().max();
}

TEST(MultiheadAttentionTest, GradientsMatchFiniteDifferences) {
  MultiheadAttention attention = small_attention(/*causal=*/true, /*rope=*/true);
  attention->to(at::kDouble);
  torch::manual_seed(4);
  const at::Tensor x = torch::randn({1, 4, 8}, at::kDouble).requires_grad_(true);
  const at::Tensor mask = torch::tensor({1, 1, 1, 0}).view({1, 4}).to(at::kBool);
  const at::Tensor w = torch::randn({1, 4, 8}, at::kDouble);
  (attention->forward(x, mask) * w).sum().backward();
  const double eps = 1e-6;
  for (int64_t index : {0, 5, 13, 22, 31}) {
    at::Tensor plus = x.detach().clone(), minus = x.detach().clone();
    plus.view(-1)[index] += eps;
    minus.view(-1)[index] -= eps;
    const double numeric = ((attention->forward(plus, mask) * w).sum().item<double>() -
                            (attention->forward(minus, mask) * w).sum().item<double>()) / (2 * eps);
    EXPECT_NEAR(x.grad().view(-1)[index].item<double>(), numeric, 1e-6) << index;
  }
  const at::Tensor weight_grad = attention->q_proj->weight.grad();
  ASSERT_TRUE(weight_grad.defined());
  EXPECT_GT(weight_grad.abs().sum().item<double>(), 0);
}

TEST(MultiheadAttentionTest, RejectsBadWidthsAndMasks) {
  EXPECT_THROW(MultiheadAttention(MultiheadAttentionOptions(10, 4)), c10::Error);
  EXPECT_THROW(MultiheadAttention(MultiheadAttentionOptions(6, 2).rope(true)), c10::Error);
  MultiheadAttention attention(MultiheadAttentionOptions(8, 2));
  try {
    attention->forward(torch::randn({2, 3, 8}), torch::ones({2, 4}, at::kBool));
    FAIL() << "a mask of the wrong length was accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("key_mask must be (B, S) = (2, 3), got [2, 4]"),
              std::string::npos) << e.what();
  }
}

// RoPE rotates q and k so that their dot product depends on the distance between the positions
// only; position 0 is left as it is.
TEST(RotaryTest, DotProductsDependOnTheDistanceOnly) {
  torch::manual_seed(5);
  const at::Tensor q = torch::randn({1, 8}, at::kDouble), k = torch::randn({1, 8}, at::kDouble);
  auto at_position = [](const at::Tensor& v, int64_t p) {
    return moelab::nn::apply_rotary(v, p, 10000.0);
  };
  const double d1 = (at_position(q, 7) * at_position(k, 4)).sum().item<double>();
  const double d2 = (at_position(q, 13) * at_position(k, 10)).sum().item<double>();
  EXPECT_NEAR(d1, d2, 1e-10);
  EXPECT_TRUE(at::allclose(at_position(q, 0), q));
  // Position 1, first pair (i = 0): a rotation by exactly 1 radian.
  const at::Tensor unit = torch::zeros({1, 4}, at::kDouble).index_put_({0, 0}, 1.0);
  const at::Tensor rotated = at_position(unit, 1);
  EXPECT_NEAR(rotated[0][0].item<double>(), std::cos(1.0), 1e-12);
  EXPECT_NEAR(rotated[0][2].item<double>(), std::sin(1.0), 1e-12);
}

TEST(PositionalEncodingTest, SinusoidalTableHasTheClosedFormValues) {
  const at::Tensor table = moelab::nn::sinusoidal_positions(3, 6);
  ASSERT_EQ(table.sizes(), (std::vector<int64_t>{3, 6}));
  // Position 0: sin 0 = 0 in even columns, cos 0 = 1 in odd ones.
  EXPECT_TRUE(at::allclose(table[0], torch::tensor({0.f, 1.f, 0.f, 1.f, 0.f, 1.f})));
  // Position 2, column 2 (i = 1): sin(2 / 10000^(2/6)); column 5 (i = 2): cos(2 / 10000^(4/6)).
  EXPECT_NEAR(table[2][2].item<double>(), std::sin(2.0 / std::pow(10000.0, 2.0 / 6)), 1e-6);
  EXPECT_NEAR(table[2][5].item<double>(), std::cos(2.0 / std::pow(10000.0, 4.0 / 6)), 1e-6);
  EXPECT_TRUE(at::allclose(moelab::nn::sinusoidal_positions(2, 6, /*offset=*/1), table.narrow(0, 1, 2)));
  EXPECT_EQ(moelab::nn::sinusoidal_positions(2, 5).sizes(), (std::vector<int64_t>{2, 5}));  // odd D
}

TEST(PositionalEncodingTest, LearnedPositionsStartSmallAndStopAtTheirLength) {
  torch::manual_seed(6);
  moelab::nn::LearnedPositions positions(moelab::nn::LearnedPositionsOptions(4096, 64));
  EXPECT_NEAR(positions->weight.std().item<double>(), 0.02, 0.001);
  EXPECT_EQ(positions->forward(3, 2).sizes(), (std::vector<int64_t>{3, 64}));
  EXPECT_THROW(positions->forward(3, 4094), c10::Error);
  EXPECT_EQ(moelab::nn::parse_position_kind("rope"), moelab::nn::PositionKind::kRope);
  EXPECT_EQ(moelab::nn::to_string(moelab::nn::PositionKind::kSinusoidal), "sinusoidal");
  EXPECT_THROW(moelab::nn::parse_position_kind("alibi"), c10::Error);
}
