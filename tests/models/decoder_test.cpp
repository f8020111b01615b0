#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "moelab/models/decoder.h"
#include "moelab/models/generation.h"
#include "moelab/nn/norm.h"

using moelab::models::MoEDecoder;
using moelab::models::MoEDecoderOptions;

namespace {

MoEDecoderOptions tiny_decoder(moelab::nn::PositionKind positions = moelab::nn::PositionKind::kRope) {
  MoEDecoderOptions o;
  o.vocab_size(50).num_layers(3).num_heads(2).max_length(32).positions(positions).dropout(0);
  o.moe().router().d_model(16).num_experts(4);
  o.moe().experts().d_model(16).d_ff(24).num_experts(4);
  return o;
}

at::Tensor random_tokens(int64_t batch, int64_t length, int64_t vocab = 50) {
  return torch::randint(vocab, {batch, length}, torch::kLong);
}

}  // namespace

TEST(DecoderTest, RmsNormMatchesItsDefinition) {
  moelab::nn::Norm norm(moelab::nn::NormOptions(moelab::nn::NormKind::kRMSNorm, 2).eps(1e-12));
  // x = (3, 4): mean square 12.5, so y = x / sqrt(12.5).
  const at::Tensor y = norm->forward(torch::tensor({{3.0f, 4.0f}}));
  EXPECT_NEAR(y[0][0].item<double>(), 3 / std::sqrt(12.5), 1e-6);
  EXPECT_NEAR(y[0][1].item<double>(), 4 / std::sqrt(12.5), 1e-6);
  EXPECT_EQ(norm->named_parameters().size(), 1u);  // a scale, no shift
  moelab::nn::Norm layer(moelab::nn::NormOptions(moelab::nn::NormKind::kLayerNorm, 2));
  EXPECT_EQ(layer->named_parameters().size(), 2u);
  EXPECT_THROW(moelab::nn::parse_norm_kind("batchnorm"), std::exception);
}

// A token never sees the tokens after it: changing position 5 leaves logits 0..4 unchanged.
TEST(DecoderTest, IsCausal) {
  torch::manual_seed(0);
  for (auto positions : {moelab::nn::PositionKind::kRope, moelab::nn::PositionKind::kLearned}) {
    MoEDecoder model(tiny_decoder(positions));
    model->eval();
    at::Tensor tokens = random_tokens(2, 8);
    const at::Tensor before = model->forward_tokens(tokens, {}, nullptr).outputs;
    tokens[0][5] = (tokens[0][5].item<int64_t>() + 1) % 50;
    const at::Tensor after = model->forward_tokens(tokens, {}, nullptr).outputs;
    EXPECT_TRUE(torch::allclose(before.narrow(1, 0, 5), after.narrow(1, 0, 5), 1e-6, 1e-6));
    EXPECT_FALSE(torch::allclose(before[0].narrow(0, 5, 1), after[0].narrow(0, 5, 1)));
  }
}

// Token by token with the key/value cache gives the logits of one full pass at every position.
TEST(DecoderTest, CachedAndUncachedLogitsAgree) {
  torch::manual_seed(1);
  for (auto positions : {moelab::nn::PositionKind::kRope, moelab::nn::PositionKind::kLearned,
                         moelab::nn::PositionKind::kSinusoidal, moelab::nn::PositionKind::kNone}) {
    MoEDecoder model(tiny_decoder(positions));
    model->eval();
    const at::Tensor tokens = random_tokens(2, 10);
    const at::Tensor full = model->forward_tokens(tokens, {}, nullptr).outputs;  // (2, 10, V)
    std::vector<moelab::nn::KVCache> caches;
    // A 3-token prompt, then one token at a time.
    std::vector<at::Tensor> pieces{model->forward_tokens(tokens.narrow(1, 0, 3), {}, &caches).outputs};
    for (int64_t t = 3; t < 10; ++t) {
      pieces.push_back(model->forward_tokens(tokens.narrow(1, t, 1), {}, &caches).outputs);
    }
    EXPECT_EQ(caches.size(), 3u);
    EXPECT_EQ(caches[0].length(), 10);
    const at::Tensor cached = torch::cat(pieces, 1);
    EXPECT_LT((cached - full).abs().max().item<double>(), 1e-5) << moelab::nn::to_string(positions);
  }
}

// Padding is masked out of attention and out of routing: no statistic counts it, and the real
// positions' logits do not depend on what the padding holds.
TEST(DecoderTest, PaddingEntersNoRoutingStatistic) {
  torch::manual_seed(2);
  MoEDecoder model(tiny_decoder());
  model->eval();
  at::Tensor tokens = random_tokens(2, 6);
  const at::Tensor mask = torch::tensor({{1, 1, 1, 1, 0, 0}, {1, 1, 1, 1, 1, 1}}, torch::kBool);
  const auto out = model->forward_tokens(tokens, mask, nullptr);
  ASSERT_EQ(out.moe_layers.size(), 3u);
  for (const auto& layer : out.moe_layers) {
    EXPECT_EQ(layer.stats.num_tokens, 10);
    EXPECT_EQ(layer.stats.tokens_per_expert.sum().item<int64_t>(), 10 * 2);
  }
  tokens[0][4] = (tokens[0][4].item<int64_t>() + 7) % 50;
  const auto changed = model->forward_tokens(tokens, mask, nullptr);
  EXPECT_TRUE(torch::allclose(out.outputs[0].narrow(0, 0, 4), changed.outputs[0].narrow(0, 0, 4), 1e-6, 1e-6));
}

TEST(DecoderTest, PlacesMoELayersAndTiesTheOutputToTheEmbedding) {
  MoEDecoder model(tiny_decoder().moe_layer_indices(std::vector<int64_t>{1}));
  EXPECT_FALSE(model->is_moe_layer(0));
  EXPECT_TRUE(model->is_moe_layer(1));
  const auto out = model->forward_tokens(random_tokens(2, 5), {}, nullptr);
  EXPECT_EQ(out.outputs.sizes(), (std::vector<int64_t>{2, 5, 50}));
  EXPECT_EQ(out.moe_layers.size(), 1u);
  EXPECT_TRUE(model->output_weight().is_same(model->embedding->weight));
  // Dense blocks are one expert: SwiGLU of the experts' width, no biases.
  const auto params = model->named_parameters();
  EXPECT_EQ(params.find("blocks.0.ffn.w3.weight")->sizes(), (std::vector<int64_t>{24, 16}));
  EXPECT_EQ(params.find("blocks.0.ffn.w1.bias"), nullptr);
  MoEDecoder untied(tiny_decoder().tie_embeddings(false));
  EXPECT_FALSE(untied->output_weight().is_same(untied->embedding->weight));
  EXPECT_THROW(MoEDecoder(tiny_decoder().moe_layer_indices(std::vector<int64_t>{3})), c10::Error);
  EXPECT_THROW(MoEDecoder(tiny_decoder().vocab_size(0)), c10::Error);
  // Token ids outside the vocabulary are named, not an index error deep in the embedding.
  EXPECT_THROW(model->forward_tokens(torch::full({1, 2}, 50, torch::kLong), {}, nullptr), c10::Error);
}

// GPT-2's initialisation: N(0, 0.02^2), the residual projections N(0, (0.02 / sqrt(2 L))^2).
TEST(DecoderTest, InitialisesLikeGpt2) {
  torch::manual_seed(3);
  MoEDecoderOptions o = tiny_decoder();
  o.vocab_size(2000).num_layers(8);
  o.moe().router().d_model(64);
  o.moe().experts().d_model(64).d_ff(256);
  MoEDecoder model(o);
  const auto params = model->named_parameters();
  EXPECT_NEAR(params.find("embedding.weight")->std().item<double>(), 0.02, 0.001);
  EXPECT_NEAR(params.find("blocks.0.attention.q_proj.weight")->std().item<double>(), 0.02, 0.002);
  const double residual = 0.02 / std::sqrt(16.0);
  EXPECT_NEAR(params.find("blocks.0.attention.out_proj.weight")->std().item<double>(), residual, 0.0005);
  EXPECT_NEAR(params.find("blocks.0.moe.experts.w_out")->std().item<double>(), residual, 0.0005);
  EXPECT_EQ(params.find("blocks.0.norm1.weight")->sum().item<double>(), 64.0);
}

TEST(GenerationTest, TopKAndTopPKeepTheRightTokens) {
  moelab::models::GenerationOptions o;
  const at::Tensor logits = torch::log(torch::tensor({0.5, 0.3, 0.15, 0.05}));
  o.top_k = 2;
  at::Tensor p = moelab::models::sampling_distribution(logits, o);
  EXPECT_NEAR(p[0].item<double>(), 0.625, 1e-6);
  EXPECT_NEAR(p[1].item<double>(), 0.375, 1e-6);
  EXPECT_EQ(p[2].item<double>(), 0.0);
  o.top_k = 0;
  o.top_p = 0.85;  // 0.5 + 0.3 < 0.85: the third token is kept, the fourth not
  p = moelab::models::sampling_distribution(logits, o);
  EXPECT_NEAR(p[2].item<double>(), 0.15 / 0.95, 1e-6);
  EXPECT_EQ(p[3].item<double>(), 0.0);
  o.top_p = 1;
  o.temperature = 0;  // greedy
  p = moelab::models::sampling_distribution(logits, o);
  EXPECT_EQ(p[0].item<double>(), 1.0);
  EXPECT_EQ(p.sum().item<double>(), 1.0);
}

TEST(GenerationTest, IsSeededAndStopsAtTheStopToken) {
  torch::manual_seed(4);
  MoEDecoder model(tiny_decoder(moelab::nn::PositionKind::kLearned));
  moelab::models::GenerationOptions o;
  o.max_new_tokens = 40;  // past max_length 32: the context is rebuilt from its last half
  o.seed = 9;
  std::vector<int32_t> seen;
  const auto a = moelab::models::generate(*model, {1, 2, 3}, o, [&](int32_t id) { seen.push_back(id); });
  const auto b = moelab::models::generate(*model, {1, 2, 3}, o);
  EXPECT_EQ(a.size(), 40u);
  EXPECT_EQ(a, b);
  EXPECT_EQ(seen, a);
  o.stop_token = a[4];
  const auto stopped = moelab::models::generate(*model, {1, 2, 3}, o);
  EXPECT_LE(stopped.size(), 5u);
  EXPECT_EQ(stopped.back(), a[4]);
}
