#include "moelab/perf/layer_benchmark.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <functional>
#include <optional>

#include "moelab/nn/feed_forward.h"
#include "moelab/nn/moe_layer.h"
#include "moelab/util/errors.h"

namespace moelab::perf {

namespace {

void clear_grads(torch::nn::Module& module) {
  for (auto& p : module.parameters()) p.mutable_grad() = at::Tensor();
}

void check(const LayerBenchmarkOptions& o) {
  auto require = [](bool ok, const std::string& message) {
    if (!ok) throw ConfigError("bench moe-layer: " + message);
  };
  require(o.tokens >= 1 && o.d_model >= 1 && o.d_ff >= 1 && o.experts >= 1,
          "tokens, d_model, d_ff and experts must be >= 1");
  require(o.top_k >= 1 && o.top_k <= o.experts,
          fmt::format("top_k ({}) must be in [1, experts={}]", o.top_k, o.experts));
  require(o.iterations >= 1 && o.warmup >= 0, "iterations must be >= 1 and warmup >= 0");
  check_precision_supported(o.precision, "bench moe-layer --precision");
  try {
    nn::parse_router_kind(o.router);
  } catch (const c10::Error& e) {
    require(false, e.what_without_backtrace());
  }
}

std::string shape_name(const LayerBenchmarkOptions& o) {
  return fmt::format("T={}/D={}/F={}/E={}/k={}/{}{}", o.tokens, o.d_model, o.d_ff, o.experts,
                     o.top_k, o.backward ? "fwdbwd" : "fwd",
                     o.precision == Precision::kBFloat16 ? "/bf16" : "");
}

double expert_flops(const LayerBenchmarkOptions& o) {
  const double macs = 3.0 * o.d_model * o.d_ff * o.tokens * o.top_k;  // SwiGLU: three GEMMs
  return 2.0 * macs * (o.backward ? 3.0 : 1.0);
}

// A module's forward (and backward against a fixed gradient) on a fixed input, gradients
// dropped after each step so every step does the same work.
template <typename Module, typename Forward>
std::function<void()> timed_step(Module module, at::Tensor x, bool backward, Precision precision,
                                 Forward forward) {
  const at::Tensor grad = torch::randn_like(x.detach());
  return [module, x, grad, backward, precision, forward]() mutable {
    std::optional<torch::NoGradGuard> no_grad;
    if (!backward) no_grad.emplace();
    at::Tensor out;
    {
      AutocastScope autocast(precision);
      out = forward(module, x);
    }
    if (!backward) return;
    out.backward(grad);
    clear_grads(*module);
    x.mutable_grad() = at::Tensor();
  };
}

}  // namespace

BenchmarkCase moe_layer_case(const LayerBenchmarkOptions& o) {
  check(o);
  torch::manual_seed(o.seed);
  nn::MoELayerOptions layer_options(o.d_model, o.d_ff, o.experts);
  layer_options.router().top_k(o.top_k).kind(nn::parse_router_kind(o.router)).seed(o.seed);
  nn::MoELayer moe(layer_options);
  const at::Tensor x = torch::randn({o.tokens, o.d_model}).requires_grad_(o.backward);
  return {"moe_layer/" + o.router + "/" + shape_name(o),
          timed_step(moe, x, o.backward, o.precision,
                     [](nn::MoELayer& m, const at::Tensor& in) { return m->forward(in).output; }),
          expert_flops(o), o.tokens};
}

BenchmarkCase dense_reference_case(const LayerBenchmarkOptions& o) {
  check(o);
  torch::manual_seed(o.seed + 1);
  nn::FeedForward dense(o.d_model, o.d_ff);
  const at::Tensor x = torch::randn({o.tokens * o.top_k, o.d_model}).requires_grad_(o.backward);
  return {"dense_ffn_ref/" + shape_name(o),
          timed_step(dense, x, o.backward, o.precision,
                     [](nn::FeedForward& m, const at::Tensor& in) { return m->forward(in); }),
          expert_flops(o), o.tokens};
}

LayerComparison benchmark_moe_layer(const LayerBenchmarkOptions& o) {
  const BenchmarkCase moe = moe_layer_case(o), dense = dense_reference_case(o);
  // The two run in turn, one iteration each, so that both see the same host: on a shared
  // machine the speed moves by tens of percent within a minute, and two medians taken one after
  // the other compared two different machines. The ratio is the median of each pair's.
  for (int i = 0; i < o.warmup; ++i) {
    moe.step();
    dense.step();
  }
  std::vector<double> moe_ms, dense_ms, ratios;
  for (int i = 0; i < o.iterations; ++i) {
    moe_ms.push_back(1e3 * seconds_of(moe.step));
    dense_ms.push_back(1e3 * seconds_of(dense.step));
    ratios.push_back(dense_ms.back() / moe_ms.back());
  }
  auto result = [](const BenchmarkCase& c, const std::vector<double>& times) {
    const double ms = median(times);
    return BenchmarkResult{c.name, ms, c.tokens / (ms / 1e3), c.flops_per_step / (ms / 1e3) / 1e9};
  };
  return {result(moe, moe_ms), result(dense, dense_ms), median(ratios)};
}

}  // namespace moelab::perf
