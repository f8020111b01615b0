// The language model's training step and its pieces at the Brown study's sizes (4 blocks, D 256,
// 4 heads, 128 positions, batch 32, vocabulary 14,115, 8 SwiGLU experts of width 256, top-2):
// forward + backward of the whole decoder with the fused projection + cross-entropy, and of that
// loss alone, so a change to either reads as its share of a step. Arg bf16: 1 = under bf16
// autocast (the study's precision), 0 = float32. Tokens/s counters.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <functional>
#include <memory>

#include "moelab/data/batch.h"
#include "moelab/models/decoder.h"
#include "moelab/nn/attention.h"
#include "moelab/nn/feed_forward.h"
#include "moelab/nn/linear_cross_entropy.h"
#include "moelab/nn/moe_layer.h"
#include "moelab/nn/norm.h"
#include "moelab/util/runtime.h"

namespace language_model_bench {

constexpr int64_t kBatch = 32, kLength = 128, kDModel = 256, kVocab = 14115;

moelab::Precision precision_arg(const benchmark::State& state) {
  return state.range(0) ? moelab::Precision::kBFloat16 : moelab::Precision::kFloat32;
}

void count_tokens(benchmark::State& state, int64_t tokens) {
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(tokens * state.iterations()),
                                                  benchmark::Counter::kIsRate);
}

// Args: bf16, experts (0 = dense blocks of the iso-FLOPs width 515).
void BM_Decoder_TrainStep(benchmark::State& state) {
  torch::manual_seed(0);
  const int64_t experts = state.range(1);
  moelab::models::MoEDecoderOptions options;
  options.vocab_size(kVocab).num_layers(4).num_heads(4).max_length(kLength).dropout(0.1);
  options.moe(moelab::nn::MoELayerOptions(kDModel, experts ? 256 : 515, std::max<int64_t>(experts, 1)));
  options.moe().router().top_k(2).normalize_weights(true);
  if (experts == 0) options.moe_layer_indices(std::vector<int64_t>{});
  moelab::models::MoEDecoder model(options);
  model->train();
  const at::Tensor tokens = torch::randint(0, kVocab, {kBatch, kLength + 1}, torch::kLong);
  const moelab::data::Batch batch({{moelab::data::kTokenIds, tokens.narrow(1, 0, kLength)},
                                   {moelab::data::kTargets, tokens.narrow(1, 1, kLength).contiguous()}});
  for (auto _ : state) {
    model->zero_grad();
    moelab::AutocastScope autocast(precision_arg(state));
    const auto out = model->forward(batch);
    const at::Tensor nll = moelab::nn::linear_cross_entropy(out.hidden.reshape({-1, kDModel}), out.output_weight,
                                                            batch.at(moelab::data::kTargets).reshape({-1}));
    (nll.mean() + out.aux_loss).backward();
  }
  count_tokens(state, kBatch * kLength);
}

// The projection to the vocabulary and the cross-entropy, forward + backward. Args: bf16.
void BM_LinearCrossEntropy_FwdBwd(benchmark::State& state) {
  torch::manual_seed(0);
  const int64_t rows = kBatch * kLength;
  const at::Tensor hidden = torch::randn({rows, kDModel}).requires_grad_();
  const at::Tensor weight = (0.02 * torch::randn({kVocab, kDModel})).requires_grad_();
  const at::Tensor targets = torch::randint(0, kVocab, {rows}, torch::kLong);
  for (auto _ : state) {
    hidden.mutable_grad() = at::Tensor();
    weight.mutable_grad() = at::Tensor();
    moelab::AutocastScope autocast(precision_arg(state));
    moelab::nn::linear_cross_entropy(hidden, weight, targets).mean().backward();
  }
  count_tokens(state, rows);
}

// One block's pieces, forward + backward on (B, L, D) activations, so the step's time splits into
// its parts. Args: bf16, piece (0 rmsnorm, 1 causal attention with RoPE, 2 MoE layer E=8 top-2,
// 3 the iso-FLOPs dense SwiGLU FFN).
void BM_DecoderPiece_FwdBwd(benchmark::State& state) {
  torch::manual_seed(0);
  const at::Tensor x = torch::randn({kBatch, kLength, kDModel}).requires_grad_();
  const at::Tensor grad = torch::randn({kBatch, kLength, kDModel});
  std::function<at::Tensor(const at::Tensor&)> piece;
  std::shared_ptr<torch::nn::Module> module;
  switch (state.range(1)) {
    case 0: {
      auto norm = moelab::nn::Norm(moelab::nn::NormOptions(moelab::nn::NormKind::kRMSNorm, kDModel));
      module = norm.ptr();
      piece = [norm](const at::Tensor& in) mutable { return norm->forward(in); };
      break;
    }
    case 1: {
      auto attention = moelab::nn::MultiheadAttention(
          moelab::nn::MultiheadAttentionOptions(kDModel, 4).bias(false).causal(true).rope(true));
      module = attention.ptr();
      piece = [attention](const at::Tensor& in) mutable { return attention->forward(in, at::Tensor(), nullptr); };
      break;
    }
    case 2: {
      moelab::nn::MoELayerOptions options(kDModel, 256, 8);
      options.router().top_k(2).normalize_weights(true);
      auto moe = moelab::nn::MoELayer(options);
      module = moe.ptr();
      piece = [moe](const at::Tensor& in) mutable { return moe->forward(in).output; };
      break;
    }
    default: {
      auto ffn = moelab::nn::FeedForward(kDModel, 515);
      module = ffn.ptr();
      piece = [ffn](const at::Tensor& in) mutable { return ffn->forward(in); };
    }
  }
  for (auto _ : state) {
    at::Tensor out;
    {
      moelab::AutocastScope autocast(precision_arg(state));
      out = piece(x);
    }
    out.backward(grad.to(out.scalar_type()));
    for (auto& p : module->parameters()) p.mutable_grad() = at::Tensor();
    x.mutable_grad() = at::Tensor();
  }
  count_tokens(state, kBatch * kLength);
}

}  // namespace language_model_bench

BENCHMARK(language_model_bench::BM_Decoder_TrainStep)
    ->ArgNames({"bf16", "E"})
    ->ArgsProduct({{1, 0}, {8, 0}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(language_model_bench::BM_DecoderPiece_FwdBwd)
    ->ArgNames({"bf16", "piece"})
    ->ArgsProduct({{1, 0}, {0, 1, 2, 3}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(language_model_bench::BM_LinearCrossEntropy_FwdBwd)
    ->ArgNames({"bf16"})
    ->Arg(1)
    ->Arg(0)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
