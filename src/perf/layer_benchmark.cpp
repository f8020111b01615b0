#include "moelab/perf/layer_benchmark.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <fmt/format.h>
#include <functional>
#include <optional>

#include "moelab/nn/feed_forward.h"
#include "moelab/nn/moe_layer.h"
#include "moelab/util/errors.h"

namespace moelab::perf {

namespace {

double median_ms(const std::function<void()>& step, int warmup, int iterations) {
  for (int i = 0; i < warmup; ++i) step();
  std::vector<double> times;
  for (int i = 0; i < iterations; ++i) {
    const auto start = std::chrono::steady_clock::now();
    step();
    times.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
            .count());
  }
  std::sort(times.begin(), times.end());
  const size_t mid = times.size() / 2;
  return times.size() % 2 ? times[mid] : 0.5 * (times[mid - 1] + times[mid]);
}

void clear_grads(torch::nn::Module& module) {
  for (auto& p : module.parameters()) p.mutable_grad() = at::Tensor();
}

}  // namespace

std::vector<BenchmarkResult> benchmark_moe_layer(const LayerBenchmarkOptions& o) {
  auto require = [](bool ok, const std::string& message) {
    if (!ok) throw ConfigError("bench moe-layer: " + message);
  };
  require(o.tokens >= 1 && o.d_model >= 1 && o.d_ff >= 1 && o.experts >= 1,
          "tokens, d_model, d_ff and experts must be >= 1");
  require(o.top_k >= 1 && o.top_k <= o.experts,
          fmt::format("top_k ({}) must be in [1, experts={}]", o.top_k, o.experts));
  require(o.iterations >= 1 && o.warmup >= 0, "iterations must be >= 1 and warmup >= 0");
  try {
    nn::parse_router_kind(o.router);
  } catch (const c10::Error& e) {
    require(false, e.what_without_backtrace());
  }
  torch::manual_seed(o.seed);

  nn::MoELayerOptions layer_options(o.d_model, o.d_ff, o.experts);
  layer_options.router().top_k(o.top_k).kind(nn::parse_router_kind(o.router)).seed(o.seed);
  nn::MoELayer moe(layer_options);
  nn::FeedForward dense(o.d_model, o.d_ff);

  const at::Tensor x = torch::randn({o.tokens, o.d_model}).requires_grad_(o.backward);
  const at::Tensor dense_x =
      torch::randn({o.tokens * o.top_k, o.d_model}).requires_grad_(o.backward);
  const at::Tensor grad = torch::randn({o.tokens, o.d_model});
  const at::Tensor dense_grad = torch::randn({o.tokens * o.top_k, o.d_model});

  auto moe_step = [&] {
    auto out = moe->forward(x);
    if (o.backward) {
      out.output.backward(grad);
      clear_grads(*moe);
      x.mutable_grad() = at::Tensor();
    }
  };
  auto dense_step = [&] {
    auto out = dense->forward(dense_x);
    if (o.backward) {
      out.backward(dense_grad);
      clear_grads(*dense);
      dense_x.mutable_grad() = at::Tensor();
    }
  };
  std::optional<torch::NoGradGuard> no_grad;
  if (!o.backward) no_grad.emplace();

  const double macs = 3.0 * o.d_model * o.d_ff * o.tokens * o.top_k;  // SwiGLU: three GEMMs
  const double flops = 2.0 * macs * (o.backward ? 3.0 : 1.0);
  const std::string mode = o.backward ? "fwdbwd" : "fwd";
  const std::string shape = fmt::format("T={}/D={}/F={}/E={}/k={}/{}", o.tokens, o.d_model,
                                        o.d_ff, o.experts, o.top_k, mode);
  auto result = [&](std::string name, double ms) {
    return BenchmarkResult{std::move(name), ms, o.tokens / (ms / 1e3), flops / (ms / 1e3) / 1e9};
  };
  const double moe_ms = median_ms(moe_step, o.warmup, o.iterations);
  const double dense_ms = median_ms(dense_step, o.warmup, o.iterations);
  return {result("moe_layer/" + o.router + "/" + shape, moe_ms),
          result("dense_ffn_ref/" + shape, dense_ms)};
}

}  // namespace moelab::perf
