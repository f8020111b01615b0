#include <fmt/format.h>

#include <chrono>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <memory>

#include "commands.h"
#include "moelab/config/run_config.h"
#include "moelab/train/trainer.h"

namespace moelab::app {

namespace {

std::string default_run_dir() {
  const std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", std::localtime(&now));
  return std::string("runs/run-") + stamp;
}

void print_summary(const train::TrainSummary& s, const std::string& run_dir) {
  std::cout << fmt::format(
      "step {}: train loss {:.4f}, val loss {:.4f}, val accuracy {:.4f}, skipped steps {}\n"
      "run directory: {}\n",
      s.steps, s.final_train_loss, s.val_loss, s.val_accuracy, s.skipped_steps, run_dir);
}

}  // namespace

void register_train_commands(CLI::App& app, Action& action) {
  struct Arguments : ConfigArguments {
    std::string run_dir;
  };
  auto args = std::make_shared<Arguments>();
  CLI::App* train = app.add_subcommand("train", "Train a model described by config files");
  add_config_arguments(*train, *args);
  train->add_option("--run-dir", args->run_dir, "Run directory (default runs/run-<time>)");
  train->callback([args, &action] {
    action = [args] {
      const std::optional<YAML::Node> resolved = resolve_or_dump(*args);
      if (!resolved) return;
      const std::string run_dir = args->run_dir.empty() ? default_run_dir() : args->run_dir;
      train::Trainer trainer(*resolved, run_dir);
      print_summary(trainer.run(), run_dir);
    };
  });

  auto resume_dir = std::make_shared<std::string>();
  CLI::App* resume = app.add_subcommand("resume", "Continue a run from its newest checkpoint");
  resume->add_option("run_dir", *resume_dir, "The run directory")->required();
  resume->callback([resume_dir, &action] {
    action = [resume_dir] {
      auto trainer = train::Trainer::resume(*resume_dir);
      print_summary(trainer->run(), *resume_dir);
    };
  });
}

}  // namespace moelab::app
