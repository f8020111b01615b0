#include "moelab/perf/eager_decoder.h"

#include <torch/torch.h>

#include "moelab/util/runtime.h"

#include <chrono>
#include <cmath>

namespace moelab::perf {

namespace {

namespace F = torch::nn::functional;

struct EagerBlock : torch::nn::Module {
  EagerBlock(const EagerDecoderOptions& o) : o_(o) {
    const int64_t d = o.d_model;
    norm1 = register_parameter("norm1", torch::ones({d}));
    norm2 = register_parameter("norm2", torch::ones({d}));
    q = register_module("q", torch::nn::Linear(torch::nn::LinearOptions(d, d).bias(false)));
    k = register_module("k", torch::nn::Linear(torch::nn::LinearOptions(d, d).bias(false)));
    v = register_module("v", torch::nn::Linear(torch::nn::LinearOptions(d, d).bias(false)));
    o_proj = register_module("o", torch::nn::Linear(torch::nn::LinearOptions(d, d).bias(false)));
    const int64_t n = std::max<int64_t>(o.num_experts, 1);
    if (o.num_experts > 0) gate = register_module("gate", torch::nn::Linear(torch::nn::LinearOptions(d, n).bias(false)));
    for (int64_t e = 0; e < n; ++e) {
      w1.push_back(register_module("w1_" + std::to_string(e), torch::nn::Linear(torch::nn::LinearOptions(d, o.d_ff).bias(false))));
      w3.push_back(register_module("w3_" + std::to_string(e), torch::nn::Linear(torch::nn::LinearOptions(d, o.d_ff).bias(false))));
      w2.push_back(register_module("w2_" + std::to_string(e), torch::nn::Linear(torch::nn::LinearOptions(o.d_ff, d).bias(false))));
    }
  }
  static torch::Tensor rms(const torch::Tensor& x, const torch::Tensor& g) {
    return x * torch::rsqrt(x.pow(2).mean(-1, true) + 1e-5) * g;
  }
  torch::Tensor rope(const torch::Tensor& x) const {  // (B, H, L, Dh)
    const int64_t length = x.size(2), dh = x.size(3);
    const auto inv = 1.0 / torch::pow(10000.0, torch::arange(0, dh, 2, torch::kFloat) / dh);
    const auto angles = torch::outer(torch::arange(length, torch::kFloat), inv);
    const auto emb = torch::cat({angles, angles}, -1);
    const auto x1 = x.narrow(-1, 0, dh / 2), x2 = x.narrow(-1, dh / 2, dh / 2);
    return x * emb.cos() + torch::cat({-x2, x1}, -1) * emb.sin();
  }
  torch::Tensor residual_dropout(const torch::Tensor& x) const {
    return F::dropout(x, F::DropoutFuncOptions().p(o_.dropout));
  }
  torch::Tensor ffn(int64_t e, const torch::Tensor& x) {
    return w2[e]->forward(F::silu(w1[e]->forward(x)) * w3[e]->forward(x));
  }
  torch::Tensor forward(torch::Tensor h) {
    const int64_t b = h.size(0), l = h.size(1), d = h.size(2), heads = o_.num_heads, dh = d / heads;
    auto split = [&](const torch::Tensor& t) { return t.view({b, l, heads, dh}).transpose(1, 2); };
    const auto x = rms(h, norm1);
    const auto qh = rope(split(q->forward(x))), kh = rope(split(k->forward(x))), vh = split(v->forward(x));
    auto scores = torch::matmul(qh, kh.transpose(-2, -1)) / std::sqrt(static_cast<double>(dh));
    scores = scores.masked_fill(torch::ones({l, l}, torch::kBool).triu(1), -1e30);
    const auto weights = F::dropout(torch::softmax(scores, -1), F::DropoutFuncOptions().p(o_.attention_dropout));
    const auto context = torch::matmul(weights, vh).transpose(1, 2).reshape({b, l, d});
    h = h + residual_dropout(o_proj->forward(context));
    const auto y = rms(h, norm2).reshape({b * l, d});
    torch::Tensor out;
    if (o_.num_experts == 0) {
      out = ffn(0, y);
    } else {
      // Hugging Face's Mixtral: softmax, top-k, renormalise; then expert by expert.
      const auto probs = torch::softmax(gate->forward(y), -1);
      auto [weights, chosen] = probs.topk(o_.top_k, -1);
      weights = weights / weights.sum(-1, true);
      out = torch::zeros_like(y);
      for (int64_t e = 0; e < o_.num_experts; ++e) {
        const auto hit = chosen.eq(e);
        const auto rows = hit.any(-1).nonzero().squeeze(1);
        if (rows.numel() == 0) continue;
        const auto weight = (weights * hit).sum(-1).index_select(0, rows).unsqueeze(1);
        out = out.index_add(0, rows, (ffn(e, y.index_select(0, rows)) * weight).to(out.scalar_type()));
      }
    }
    return h + residual_dropout(out.view({b, l, d}));
  }
  EagerDecoderOptions o_;
  torch::Tensor norm1, norm2;
  torch::nn::Linear q{nullptr}, k{nullptr}, v{nullptr}, o_proj{nullptr}, gate{nullptr};
  std::vector<torch::nn::Linear> w1, w2, w3;
};

}  // namespace

double eager_decoder_train_tokens_per_s(const EagerDecoderOptions& o, int64_t steps, int64_t warmup) {
  torch::manual_seed(static_cast<int64_t>(o.seed));
  auto embedding = torch::nn::Embedding(o.vocab_size, o.d_model);
  std::vector<std::shared_ptr<EagerBlock>> blocks;
  std::vector<torch::Tensor> parameters = embedding->parameters();
  for (int64_t l = 0; l < o.num_layers; ++l) {
    blocks.push_back(std::make_shared<EagerBlock>(o));
    for (const auto& p : blocks.back()->parameters()) parameters.push_back(p);
  }
  auto final_norm = torch::ones({o.d_model}, torch::requires_grad());
  parameters.push_back(final_norm);
  torch::optim::AdamW optimizer(parameters, torch::optim::AdamWOptions(1e-3));
  double seconds = 0;
  for (int64_t step = 0; step < warmup + steps; ++step) {
    const auto tokens = torch::randint(o.vocab_size, {o.batch_size, o.block_length + 1}, torch::kLong);
    const auto start = std::chrono::steady_clock::now();
    torch::Tensor loss;
    {
      AutocastScope autocast(o.bf16_autocast ? Precision::kBFloat16 : Precision::kFloat32);
      auto h = F::dropout(embedding->forward(tokens.narrow(1, 0, o.block_length)),
                          F::DropoutFuncOptions().p(o.dropout));
      for (auto& block : blocks) h = block->forward(h);
      const auto logits = torch::matmul(EagerBlock::rms(h, final_norm), embedding->weight.t());
      loss = F::cross_entropy(logits.reshape({-1, o.vocab_size}).to(torch::kFloat),
                              tokens.narrow(1, 1, o.block_length).reshape({-1}));
    }
    optimizer.zero_grad();
    loss.backward();
    torch::nn::utils::clip_grad_norm_(parameters, 1.0);
    optimizer.step();
    if (step >= warmup) seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  return static_cast<double>(steps * o.batch_size * o.block_length) / std::max(seconds, 1e-9);
}

}  // namespace moelab::perf
