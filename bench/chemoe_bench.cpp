// CheMoE training steps with sparse dispatch (a sample's G gene rows reach only its k experts)
// beside the published dense evaluation of every expert on every row, and the dropout both use
// beside LibTorch's. Samples/s counters; the bar is sparse >= 2x dense at E = 8, k = 2.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "moelab/data/perturbation.h"
#include "moelab/models/chemoe.h"
#include "moelab/nn/dropout.h"

namespace {

// Args: dense (0/1), experts, top_k. LINCS sizes: 978 genes, Morgan 1024 bits, 10 cell lines,
// batch 32, the published widths, dropout 0.1.
void BM_CheMoE_TrainStep(benchmark::State& state) {
  const bool dense = state.range(0) != 0;
  const int64_t batch = 32;
  torch::manual_seed(0);
  moelab::models::CheMoE model(moelab::models::CheMoEOptions()
                                   .num_genes(978).input_dim(1024).num_cell_lines(10)
                                   .num_experts(state.range(1)).top_k(state.range(2)).dense_experts(dense));
  model->train();
  const moelab::data::Batch in({{moelab::data::kInputs, torch::rand({batch, 1024}).round()},
                                {moelab::data::kBasal, torch::randn({batch, 978})},
                                {moelab::data::kCellLine, torch::randint(0, 10, {batch}, torch::kLong)}});
  const at::Tensor target = torch::randn({batch, 978});
  for (auto _ : state) {
    model->zero_grad();
    const auto out = model->forward(in);
    ((out.outputs - target).pow(2).mean() + out.aux_loss).backward();
  }
  state.counters["samples/s"] =
      benchmark::Counter(static_cast<double>(batch * state.iterations()), benchmark::Counter::kIsRate);
}

// Args: millions of elements, 0 = LibTorch's at::dropout, 1 = moelab's.
void BM_Dropout_Forward(benchmark::State& state) {
  const at::Tensor x = torch::randn({state.range(0) << 20});
  for (auto _ : state) {
    benchmark::DoNotOptimize(state.range(1) ? moelab::nn::dropout(x, 0.1, true) : at::dropout(x, 0.1, true));
  }
  state.counters["elements/s"] =
      benchmark::Counter(static_cast<double>(x.numel() * state.iterations()), benchmark::Counter::kIsRate);
}

}  // namespace

BENCHMARK(BM_CheMoE_TrainStep)
    ->ArgNames({"dense", "E", "k"})
    ->ArgsProduct({{0, 1}, {8}, {2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_Dropout_Forward)
    ->ArgNames({"M", "moelab"})
    ->ArgsProduct({{16}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
