// A CNN stage (3x3 convolution, ReLU, 2x2 max-pooling) forward and backward on 128 images, as
// LibTorch composes it (conv2d, relu, max_pool2d), with moelab's fused ReLU + pooling after
// LibTorch's convolution, and as moelab runs it (nn::conv3x3_relu_max_pool2x2: the first stage
// fused whole; later stages channels-last where oneDNN would pad their channels).
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "moelab/nn/pooling.h"

namespace {

// Args: how (0 LibTorch, 1 LibTorch's conv + moelab's pooling, 2 moelab's stage), C_in, C_out,
// image side. A first stage's images need no gradient; a later stage's input does.
void BM_CnnStage_FwdBwd(benchmark::State& state) {
  const int64_t how = state.range(0), c_in = state.range(1), c_out = state.range(2);
  const int64_t side = state.range(3), batch = 128;
  torch::manual_seed(0);
  const at::Tensor x = torch::randn({batch, c_in, side, side}).requires_grad_(c_in > 4);
  const at::Tensor w = (torch::randn({c_out, c_in, 3, 3}) * 0.3).requires_grad_();
  const at::Tensor b = torch::zeros({c_out}).requires_grad_();
  for (auto _ : state) {
    at::Tensor y;
    if (how == 0) y = at::max_pool2d(at::relu(at::conv2d(x, w, b, 1, 1)), 2);
    if (how == 1) y = moelab::nn::relu_max_pool2x2(at::conv2d(x, w, b, 1, 1));
    if (how == 2) y = moelab::nn::conv3x3_relu_max_pool2x2(x, w, b);
    y.sum().backward();
    for (const at::Tensor& t : {x, w, b}) t.mutable_grad() = at::Tensor();
  }
  state.counters["images/s"] = benchmark::Counter(static_cast<double>(batch * state.iterations()),
                                                  benchmark::Counter::kIsRate);
}

}  // namespace

// The demo's CNN stages: first stages of 16 and 17 channels (experts, dense iso-FLOPs) and 32
// (iso-params); second stages 16 -> 32 and 17 -> 33.
BENCHMARK(BM_CnnStage_FwdBwd)
    ->ArgNames({"how", "Cin", "Cout", "side"})
    ->ArgsProduct({{0, 1, 2}, {1}, {16, 17, 32}, {28}})
    ->ArgsProduct({{0, 1, 2}, {16}, {32}, {14}})
    ->ArgsProduct({{0, 1, 2}, {17}, {33}, {14}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
