#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <iostream>
#include <memory>

#include "commands.h"
#include "moelab/perf/layer_benchmark.h"

namespace moelab::app {

namespace {

void print_results(const std::vector<perf::BenchmarkResult>& results, bool as_json) {
  if (as_json) {
    for (const auto& r : results) {
      std::cout << nlohmann::json{{"name", r.name},
                                  {"median_ms", r.median_ms},
                                  {"tokens_per_s", r.tokens_per_s},
                                  {"gflops", r.gflops}}
                       .dump()
                << "\n";
    }
    return;
  }
  std::cout << fmt::format("{:<58} {:>11} {:>13} {:>9}\n", "name", "median_ms", "tokens/s",
                           "GFLOP/s");
  for (const auto& r : results) {
    std::cout << fmt::format("{:<58} {:>11.2f} {:>13.0f} {:>9.1f}\n", r.name, r.median_ms,
                             r.tokens_per_s, r.gflops);
  }
  if (results.size() == 2) {
    std::cout << fmt::format("MoE / dense throughput: {:.3f}\n",
                             results[1].median_ms / results[0].median_ms);
  }
}

}  // namespace

void register_bench_command(CLI::App& app, Action& action) {
  CLI::App* bench = app.add_subcommand("bench", "Micro-benchmarks of library components");
  bench->require_subcommand(1);

  auto options = std::make_shared<perf::LayerBenchmarkOptions>();
  auto mode = std::make_shared<std::string>("fwdbwd");
  auto as_json = std::make_shared<bool>(false);
  CLI::App* layer = bench->add_subcommand(
      "moe-layer",
      "Median time of the MoE layer (SwiGLU experts) and of the dense SwiGLU FFN over k*T rows "
      "(same active FLOPs), and their throughput ratio");
  layer->add_option("--tokens", options->tokens, "Tokens T per batch")->capture_default_str();
  layer->add_option("--d-model", options->d_model, "Model width D")->capture_default_str();
  layer->add_option("--d-ff", options->d_ff, "Expert hidden width F")->capture_default_str();
  layer->add_option("--experts", options->experts, "Experts E")->capture_default_str();
  layer->add_option("--top-k", options->top_k, "Experts per token k")->capture_default_str();
  layer->add_option("--mode", *mode, "fwd or fwdbwd")
      ->check(CLI::IsMember({"fwd", "fwdbwd"}))
      ->capture_default_str();
  layer->add_option("--router", options->router, "Router kind")->capture_default_str();
  layer->add_option("--iterations", options->iterations, "Timed iterations")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  layer->add_option("--warmup", options->warmup, "Untimed iterations first")
      ->capture_default_str();
  layer->add_option("--seed", options->seed, "Seed for weights and inputs")->capture_default_str();
  layer->add_flag("--json", *as_json, "One JSON object per line: name, median_ms, tokens_per_s, "
                                      "gflops");
  layer->callback([=, &action] {
    action = [=] {
      options->backward = *mode == "fwdbwd";
      print_results(perf::benchmark_moe_layer(*options), *as_json);
    };
  });
}

}  // namespace moelab::app
