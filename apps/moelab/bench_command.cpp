#include <spdlog/spdlog.h>
#include <stdlib.h>

#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "commands.h"
#include "moelab/config/config.h"
#include "moelab/perf/eager_vision.h"
#include "moelab/perf/layer_benchmark.h"
#include "moelab/run/run.h"
#include "moelab/run/run_config.h"
#include "moelab/train/trainer.h"
#include "moelab/util/errors.h"
#include "moelab/util/runtime.h"

namespace moelab::app {

namespace {

void print_comparison(const perf::LayerComparison& comparison, bool as_json) {
  const std::vector<perf::BenchmarkResult> results{comparison.moe, comparison.dense};
  if (as_json) {
    for (const auto& r : results) {
      std::cout << nlohmann::json{{"name", r.name},
                                  {"median_ms", r.median_ms},
                                  {"tokens_per_s", r.tokens_per_s},
                                  {"gflops", r.gflops}}
                       .dump()
                << "\n";
    }
    std::cout
        << nlohmann::json{{"name", "moe_over_dense"}, {"ratio", comparison.moe_over_dense}}.dump()
        << "\n";
    return;
  }
  std::cout << fmt::format("{:<58} {:>11} {:>13} {:>9}\n", "name", "median_ms", "tokens/s",
                           "GFLOP/s");
  for (const auto& r : results) {
    std::cout << fmt::format("{:<58} {:>11.2f} {:>13.0f} {:>9.1f}\n", r.name, r.median_ms,
                             r.tokens_per_s, r.gflops);
  }
  std::cout << fmt::format("MoE / dense throughput: {:.3f} (median of iterations run in turn)\n",
                           comparison.moe_over_dense);
}

struct BenchTrainArguments : ConfigArguments {
  int64_t steps = 50;
  int64_t warmup = 5;
  int64_t rounds = 1;
  bool json = false;
  bool eager_reference = false;
};

// The eager LibTorch reference of a vision run (perf/eager_vision.h), sized from its config.
perf::EagerVisionOptions eager_vision_options(const YAML::Node& resolved) {
  const YAML::Node model = resolved["model"], train = resolved["train"];
  const std::string name = model["name"].as<std::string>();
  perf::EagerVisionOptions o;
  YAML::Node cnn;
  if (name == "vision_moe") {
    cnn = model["expert"];
    o.num_experts = model["num_experts"].as<int64_t>();
    o.top_k = model["router"]["top_k"].as<int64_t>();
    o.normalize_weights = model["router"]["normalize_weights"].as<bool>();
    o.router_width = model["router_width"].as<int64_t>();
    o.load_balance = model["aux"]["load_balance"].as<double>();
  } else if (name == "cnn") {
    cnn = model;
    o.num_experts = 0;
    o.width_multiplier = model["width_multiplier"].as<double>();
  } else {
    throw ConfigError("--eager-reference: bench train has eager references of vision_moe and cnn runs, not of '" +
                      name + "' (language models: moelab bench lm --eager-reference)");
  }
  o.in_channels = model["in_channels"].as<int64_t>();
  o.image_size = model["image_size"].as<int64_t>();
  o.num_classes = model["num_classes"].as<int64_t>();
  o.width = cnn["width"].as<int64_t>();
  o.depth = cnn["depth"].as<int64_t>();
  o.hidden = cnn["hidden"].as<int64_t>();
  o.batch_size = train["batch_size"].as<int64_t>();
  o.lr = train["optimizer"]["lr"].as<double>();
  o.weight_decay = train["optimizer"]["weight_decay"].as<double>();
  return o;
}

// Trains the config's run for warmup + steps steps in a temporary directory (no periodic
// evaluation or checkpoint) and prints where the timed steps spent their time. With rounds > 1
// it does so that many times, each round followed by the eager reference's steps when asked, and
// prints medians over rounds: each part's, the total's, and the speed over eager's of each round
// (a round's two timings see the same host, whose speed moves between minutes).
void bench_train(const BenchTrainArguments& args) {
  // Sized before the run, so that a config without an eager reference fails at once.
  std::optional<perf::EagerVisionOptions> eager;
  if (args.eager_reference) eager = eager_vision_options(run::resolve_run_config(args.files, args.overrides));
  YAML::Node resolved;
  const std::vector<std::string> names{"data",   "forward",   "backward",   "sync",
                                       "checks", "optimizer", "bookkeeping"};
  std::vector<std::vector<double>> part_ms(names.size());  // [part][round], ms per step
  std::vector<double> totals, eager_ms, speeds;
  train::TrainProfile profile;
  for (int64_t round = 0; round < args.rounds; ++round) {
    profile = profile_training(args, args.warmup, args.steps, resolved);
    const double n = static_cast<double>(std::max<int64_t>(profile.steps, 1));
    const train::StepTimes& t = profile.step;
    const std::vector<double> seconds{t.data,
                                      t.forward,
                                      t.backward,
                                      t.sync,
                                      t.checks,
                                      t.optimizer,
                                      t.observer + profile.bookkeeping};
    double total = 0;
    for (size_t i = 0; i < seconds.size(); ++i) {
      part_ms[i].push_back(1e3 * seconds[i] / n);
      total += 1e3 * seconds[i] / n;
    }
    totals.push_back(total);
    if (eager) {
      eager_ms.push_back(perf::eager_vision_train_ms_per_step(*eager, args.steps, args.warmup));
      speeds.push_back(eager_ms.back() / total);
    }
  }
  const double moelab_ms = median(totals);
  if (args.json) {
    nlohmann::json line{{"model", resolved["model"]["name"].as<std::string>()},
                        {"steps", profile.steps},
                        {"rounds", args.rounds},
                        {"batch_size", resolved["train"]["batch_size"].as<int64_t>()},
                        {"ms_per_step", moelab_ms}};
    for (size_t i = 0; i < names.size(); ++i) line[names[i] + "_ms"] = median(part_ms[i]);
    line["final_evaluation_ms"] = 1e3 * profile.evaluation;
    line["final_checkpoint_ms"] = 1e3 * profile.checkpoint;
    if (eager) {
      line["eager_reference_ms_per_step"] = median(eager_ms);
      line["speed_vs_eager"] = median(speeds);
      line["speed_vs_eager_rounds"] = speeds;
    }
    std::cout << line.dump() << "\n";
    return;
  }
  std::cout << fmt::format(
      "{} steps of {} (batch {}), after {} warm-up steps{}:\n", profile.steps,
      resolved["model"]["name"].as<std::string>(), resolved["train"]["batch_size"].as<int64_t>(),
      args.warmup, args.rounds > 1 ? fmt::format(", medians of {} rounds", args.rounds) : "");
  for (size_t i = 0; i < names.size(); ++i) {
    const double ms = median(part_ms[i]);
    std::cout << fmt::format("  {:<12} {:>9.3f} ms/step  {:>5.1f}%\n", names[i], ms,
                             100 * ms / std::max(moelab_ms, 1e-12));
  }
  std::cout << fmt::format("  {:<12} {:>9.3f} ms/step\n", "total", moelab_ms);
  std::cout << "  (checks: the finite check of every gradient and clipping; bookkeeping: metric "
               "sums, routing statistics, log lines)\n";
  if (eager) {
    std::cout << fmt::format(
        "eager LibTorch reference (the same model and batch, LibTorch's max_pool2d and relu, "
        "the experts in a loop): {:.3f} ms/step; moelab / eager speed = {:.2f}{}\n",
        median(eager_ms), median(speeds),
        args.rounds > 1 ? fmt::format(" (rounds: {:.2f})", fmt::join(speeds, ", ")) : "");
  }
}

}  // namespace

train::TrainProfile profile_training(const ConfigArguments& args, int64_t warmup, int64_t steps,
                                     YAML::Node& resolved) {
  std::vector<std::string> overrides = args.overrides;
  overrides.insert(overrides.end(),
                   {"train.epochs=0", "train.max_steps=" + std::to_string(warmup + steps),
                    "train.eval_every=0", "train.eval_each_epoch=false", "train.checkpoint_every=0",
                    "train.checkpoint_every_minutes=0", "train.max_time=0"});
  resolved = run::resolve_run_config(args.files, overrides);
  std::string pattern = (std::filesystem::temp_directory_path() / "moelab-bench-XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    throw IoError(pattern + ": cannot create a temporary run directory");
  }
  train::TrainProfile profile;
  profile.skip_steps = warmup;
  try {
    auto trainer = run::start_run(resolved, pattern + "/run");
    trainer->set_profile(&profile);
    trainer->run();
  } catch (...) {
    std::filesystem::remove_all(pattern);
    throw;
  }
  std::filesystem::remove_all(pattern);
  return profile;
}

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
  auto precision = std::make_shared<std::string>("fp32");
  layer->add_option("--precision", *precision, "fp32, or bf16 (both sides under bf16 autocast)")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  layer->add_option("--iterations", options->iterations, "Timed iterations")
      ->check(kPositive)
      ->capture_default_str();
  layer->add_option("--warmup", options->warmup, "Untimed iterations first")
      ->capture_default_str();
  layer->add_option("--seed", options->seed, "Seed for weights and inputs")->capture_default_str();
  layer->add_flag("--json", *as_json,
                  "One JSON object per line: name, median_ms, tokens_per_s, gflops; then "
                  "moe_over_dense's ratio");
  layer->callback([=, &action] {
    action = [=] {
      options->backward = *mode == "fwdbwd";
      options->precision = parse_precision(*precision, "bench moe-layer --precision");
      print_comparison(perf::benchmark_moe_layer(*options), *as_json);
    };
  });

  auto train_args = std::make_shared<BenchTrainArguments>();
  CLI::App* train = bench->add_subcommand(
      "train", "Milliseconds per training step of a config's run, split into data, forward, "
               "backward, checks, optimizer and bookkeeping (no evaluation or checkpoint)");
  add_config_arguments(*train, *train_args);
  train->add_option("--steps", train_args->steps, "Timed steps")
      ->check(kPositive)
      ->capture_default_str();
  train->add_option("--warmup", train_args->warmup, "Untimed steps first")
      ->check(kNonNegative)
      ->capture_default_str();
  train
      ->add_option("--rounds", train_args->rounds,
                   "Times to repeat the measurement (each round: moelab's steps, then the eager "
                   "reference's); medians over rounds")
      ->check(CLI::Range(int64_t{1}, int64_t{1000}))
      ->capture_default_str();
  train->add_flag("--json", train_args->json, "One JSON object");
  train->add_flag("--eager-reference", train_args->eager_reference,
                  "Also time the same model written in plain eager LibTorch (vision_moe and cnn runs), "
                  "on the same batch size and threads");
  train->callback([train_args, &action] {
    action = [train_args] {
      try {
        bench_train(*train_args);
      } catch (const ConfigError& e) {
        throw config::with_origin(e, train_args->files, train_args->overrides);
      }
    };
  });
}

}  // namespace moelab::app
