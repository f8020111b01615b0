// Micro-benchmarks of the MoE layer's pieces, each beside the dense reference of the same active
// FLOPs so the figures read as ratios. `make bench` runs them; `moelab bench moe-layer` is the
// one-shot version of the first pair.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "moelab/nn/dispatch.h"
#include "moelab/nn/feed_forward.h"
#include "moelab/nn/moe_layer.h"
#include "moelab/util/runtime.h"

namespace {

constexpr int64_t kDModel = 512;
constexpr int64_t kDFF = 1024;

void set_expert_flops(benchmark::State& state, int64_t rows, double passes) {
  const double flops = 2.0 * 3.0 * kDModel * kDFF * rows * passes;
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}

// Args: tokens, experts, top_k.
void BM_MoELayer_FwdBwd(benchmark::State& state) {
  const int64_t tokens = state.range(0), experts = state.range(1), k = state.range(2);
  torch::manual_seed(0);
  moelab::nn::MoELayerOptions options(kDModel, kDFF, experts);
  options.router().top_k(k);
  moelab::nn::MoELayer moe(options);
  at::Tensor x = torch::randn({tokens, kDModel}).requires_grad_(true);
  at::Tensor grad = torch::randn({tokens, kDModel});
  for (auto _ : state) {
    moe->forward(x).output.backward(grad);
    for (auto& p : moe->parameters()) p.mutable_grad() = at::Tensor();
    x.mutable_grad() = at::Tensor();
  }
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(tokens * state.iterations()),
                         benchmark::Counter::kIsRate);
  set_expert_flops(state, tokens * k, 3.0);
}

// The dense reference: one SwiGLU FFN over tokens * top_k rows. Args: tokens, top_k.
void BM_DenseFFN_FwdBwd(benchmark::State& state) {
  const int64_t tokens = state.range(0), k = state.range(1);
  torch::manual_seed(0);
  moelab::nn::FeedForward dense(kDModel, kDFF);
  at::Tensor x = torch::randn({tokens * k, kDModel}).requires_grad_(true);
  at::Tensor grad = torch::randn({tokens * k, kDModel});
  for (auto _ : state) {
    dense->forward(x).backward(grad);
    for (auto& p : dense->parameters()) p.mutable_grad() = at::Tensor();
    x.mutable_grad() = at::Tensor();
  }
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(tokens * state.iterations()),
                         benchmark::Counter::kIsRate);
  set_expert_flops(state, tokens * k, 3.0);
}

// Planning alone (sort by expert, by-token index). Args: tokens, experts, top_k.
void BM_Dispatch_PlanTokenChoice(benchmark::State& state) {
  const int64_t tokens = state.range(0), experts = state.range(1), k = state.range(2);
  torch::manual_seed(0);
  at::Tensor indices = std::get<1>(torch::rand({tokens, experts}).topk(k, -1));
  at::Tensor weights = torch::rand({tokens, k});
  for (auto _ : state) {
    benchmark::DoNotOptimize(moelab::nn::plan_token_choice(indices, weights, experts));
  }
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(tokens * state.iterations()),
                         benchmark::Counter::kIsRate);
}

}  // namespace

BENCHMARK(BM_MoELayer_FwdBwd)
    ->ArgNames({"T", "E", "k"})
    ->ArgsProduct({{4096}, {8, 64}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_DenseFFN_FwdBwd)
    ->ArgNames({"T", "k"})
    ->ArgsProduct({{4096}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_Dispatch_PlanTokenChoice)
    ->ArgNames({"T", "E", "k"})
    ->ArgsProduct({{4096}, {8, 64}, {2}})
    ->Unit(benchmark::kMicrosecond);

int main(int argc, char** argv) {
  moelab::init_runtime();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
