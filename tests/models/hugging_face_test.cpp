#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <map>

#include "moelab/models/hugging_face.h"
#include "moelab/util/errors.h"

using moelab::models::MoEDecoder;
using moelab::models::MoEDecoderOptions;

namespace {

MoEDecoderOptions hf_decoder() {
  MoEDecoderOptions o;
  o.vocab_size(40).num_layers(2).num_heads(2).max_length(16).dropout(0).tie_embeddings(false);
  o.moe().router().d_model(8).num_experts(4).top_k(2).normalize_weights(true);
  o.moe().experts().d_model(8).d_ff(12).num_experts(4);
  return o;
}

// Mixtral's forward pass written from its definition (Hugging Face's modeling_mixtral), reading
// only the exported tensors by their Hugging Face names.
at::Tensor mixtral_logits(const std::map<std::string, at::Tensor>& w, const at::Tensor& ids,
                          const nlohmann::json& config) {
  const int64_t d = config["hidden_size"], heads = config["num_attention_heads"],
                layers = config["num_hidden_layers"], experts = config["num_local_experts"],
                k = config["num_experts_per_tok"];
  const double eps = config["rms_norm_eps"], theta = config["rope_theta"];
  const int64_t length = ids.size(0), head_dim = d / heads;
  auto rms = [&](const at::Tensor& x, const at::Tensor& g) {
    return x * torch::rsqrt(x.pow(2).mean(-1, true) + eps) * g;
  };
  auto rope = [&](const at::Tensor& x) {  // (H, L, Dh), rotate half
    const at::Tensor inv = 1.0 / torch::pow(theta, torch::arange(0, head_dim, 2, torch::kDouble) / head_dim);
    const at::Tensor angles = torch::outer(torch::arange(length, torch::kDouble), inv);
    const at::Tensor emb = torch::cat({angles, angles}, -1).to(torch::kFloat);
    const at::Tensor x1 = x.narrow(-1, 0, head_dim / 2), x2 = x.narrow(-1, head_dim / 2, head_dim / 2);
    return x * emb.cos() + torch::cat({-x2, x1}, -1) * emb.sin();
  };
  at::Tensor h = w.at("model.embed_tokens.weight").index_select(0, ids);  // (L, D)
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const at::Tensor x = rms(h, w.at(p + "input_layernorm.weight"));
    auto heads_of = [&](const at::Tensor& t) { return t.view({length, heads, head_dim}).transpose(0, 1); };
    const at::Tensor q = rope(heads_of(torch::mm(x, w.at(p + "self_attn.q_proj.weight").t())));
    const at::Tensor kk = rope(heads_of(torch::mm(x, w.at(p + "self_attn.k_proj.weight").t())));
    const at::Tensor v = heads_of(torch::mm(x, w.at(p + "self_attn.v_proj.weight").t()));
    at::Tensor scores = torch::matmul(q, kk.transpose(1, 2)) / std::sqrt(static_cast<double>(head_dim));
    scores = scores.masked_fill(torch::ones({length, length}, torch::kBool).triu(1), -INFINITY);
    const at::Tensor context = torch::matmul(torch::softmax(scores, -1), v).transpose(0, 1).reshape({length, d});
    h = h + torch::mm(context, w.at(p + "self_attn.o_proj.weight").t());
    const at::Tensor y = rms(h, w.at(p + "post_attention_layernorm.weight"));
    const at::Tensor probs = torch::softmax(torch::mm(y, w.at(p + "block_sparse_moe.gate.weight").t()), -1);
    auto [top, chosen] = probs.topk(k, -1);
    top = top / top.sum(-1, true);
    at::Tensor moe = torch::zeros_like(y);
    for (int64_t t = 0; t < length; ++t) {
      for (int64_t j = 0; j < k; ++j) {
        const std::string e = p + "block_sparse_moe.experts." + std::to_string(chosen[t][j].item<int64_t>()) + ".";
        const at::Tensor row = y[t].unsqueeze(0);
        const at::Tensor hidden = torch::silu(torch::mm(row, w.at(e + "w1.weight").t())) *
                                  torch::mm(row, w.at(e + "w3.weight").t());
        moe[t] += top[t][j] * torch::mm(hidden, w.at(e + "w2.weight").t())[0];
      }
    }
    h = h + moe;
    (void)experts;
  }
  return torch::mm(rms(h, w.at("model.norm.weight")), w.at("lm_head.weight").t());
}

}  // namespace

// Mixtral's own forward pass over the exported tensors gives the model's logits: the names,
// shapes, the experts' split of w_in into w1/w3 and the RoPE layout are what transformers reads.
TEST(HuggingFaceExportTest, MixtralDefinitionReproducesTheModel) {
  torch::manual_seed(0);
  MoEDecoder model(hf_decoder());
  model->eval();
  const auto hf = moelab::models::to_hugging_face(*model, 1);
  EXPECT_EQ(hf.config["architectures"][0], "MixtralForCausalLM");
  EXPECT_EQ(hf.config["num_local_experts"], 4);
  EXPECT_EQ(hf.config["intermediate_size"], 12);
  std::map<std::string, at::Tensor> tensors(hf.tensors.begin(), hf.tensors.end());
  EXPECT_EQ(tensors.size(), 1u + 2 * (6 + 1 + 4 * 3) + 2);
  EXPECT_EQ(tensors.at("model.layers.1.block_sparse_moe.experts.3.w2.weight").sizes(),
            (std::vector<int64_t>{8, 12}));
  EXPECT_EQ(tensors.at("model.layers.0.block_sparse_moe.gate.weight").sizes(), (std::vector<int64_t>{4, 8}));
  const at::Tensor ids = torch::tensor({3, 17, 5, 39, 0, 22, 8}, torch::kLong);
  const at::Tensor expected = model->forward_tokens(ids.unsqueeze(0), {}, nullptr).outputs[0];
  EXPECT_LT((mixtral_logits(tensors, ids, hf.config) - expected).abs().max().item<double>(), 1e-4);
}

TEST(HuggingFaceExportTest, DenseIsLlamaAndTheUnexpressibleIsRefused) {
  MoEDecoder dense(hf_decoder().moe_layer_indices(std::vector<int64_t>{}).tie_embeddings(true));
  const auto llama = moelab::models::to_hugging_face(*dense, 1);
  EXPECT_EQ(llama.config["architectures"][0], "LlamaForCausalLM");
  EXPECT_EQ(llama.config["tie_word_embeddings"], true);
  std::map<std::string, at::Tensor> tensors(llama.tensors.begin(), llama.tensors.end());
  EXPECT_EQ(tensors.at("model.layers.0.mlp.down_proj.weight").sizes(), (std::vector<int64_t>{8, 12}));
  auto message = [](MoEDecoderOptions o) {
    try {
      MoEDecoder m(o);
      moelab::models::to_hugging_face(*m, 1);
    } catch (const moelab::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_EQ(message(hf_decoder().norm(moelab::nn::NormKind::kLayerNorm)),
            "export --format hf: model.norm must be rmsnorm (Mixtral and Llama use RMSNorm)");
  EXPECT_NE(message(hf_decoder().moe_layer_indices(std::vector<int64_t>{1})).find("model.moe_layer_indices"),
            std::string::npos);
  auto plain = hf_decoder();
  plain.moe().router().normalize_weights(false);
  EXPECT_NE(message(plain).find("model.moe.router.normalize_weights"), std::string::npos);
}
