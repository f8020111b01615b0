// Micro-benchmarks of the MoE layer's pieces, each beside the dense reference of the same active
// FLOPs so the figures read as ratios. `make bench` runs them; `moelab bench moe-layer` is the
// one-shot version of the first pair.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "moelab/nn/dispatch.h"
#include "moelab/perf/layer_benchmark.h"
#include "moelab/util/runtime.h"

namespace {

constexpr int64_t kDModel = 512;
constexpr int64_t kDFF = 1024;

// Times one case of the library's layer benchmark (the same cases `moelab bench moe-layer` runs).
void run_case(benchmark::State& state, const moelab::perf::BenchmarkCase& c) {
  for (auto _ : state) c.step();
  state.counters["tokens/s"] = benchmark::Counter(
      static_cast<double>(c.tokens * state.iterations()), benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] = benchmark::Counter(c.flops_per_step * state.iterations() / 1e9,
                                                 benchmark::Counter::kIsRate);
}

moelab::perf::LayerBenchmarkOptions layer_options(int64_t tokens, int64_t experts, int64_t k) {
  moelab::perf::LayerBenchmarkOptions o;
  o.tokens = tokens;
  o.d_model = kDModel;
  o.d_ff = kDFF;
  o.experts = experts;
  o.top_k = k;
  return o;
}

// Args: tokens, experts, top_k.
void BM_MoELayer_FwdBwd(benchmark::State& state) {
  run_case(state, moelab::perf::moe_layer_case(
                      layer_options(state.range(0), state.range(1), state.range(2))));
}

// The dense reference: one SwiGLU FFN over tokens * top_k rows. Args: tokens, top_k.
void BM_DenseFFN_FwdBwd(benchmark::State& state) {
  run_case(state, moelab::perf::dense_reference_case(
                      layer_options(state.range(0), state.range(1), state.range(1))));
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
  moelab::select_blas_kernel(argv);  // the kernel the tool would use
  moelab::init_runtime();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
