// Subcommands of the moelab tool. Each registers its options on the CLI11 app and runs through
// the library; none holds model logic of its own.
#pragma once

#include <CLI/CLI.hpp>

#include <yaml-cpp/yaml.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "moelab/train/trainer.h"

namespace moelab::app {

/// A check of a numeric option that names what it wants ("--steps: must be > 0, got 0").
/// CLI11 2.1's PositiveNumber and NonNegativeNumber are ranges up to DBL_MAX and print that
/// 309-digit bound when they refuse a value.
inline CLI::Validator number_check(std::function<bool(double)> accepts, const std::string& wanted,
                                   const std::string& description) {
  return CLI::Validator(
      [accepts, wanted](std::string& input) -> std::string {
        double value = 0;
        if (!CLI::detail::lexical_cast(input, value))
          return "expected a number, got '" + input + "'";
        return accepts(value) ? std::string() : "must be " + wanted + ", got " + input;
      },
      description);
}
inline const CLI::Validator kPositive =
    number_check([](double v) { return v > 0; }, "> 0", "POSITIVE");
inline const CLI::Validator kNonNegative =
    number_check([](double v) { return v >= 0; }, ">= 0", "NONNEGATIVE");

/// What the chosen subcommand will do once parsing has finished and the runtime is set up.
using Action = std::function<void()>;

/// The process's command line as main received it (a launcher runs it again in more processes).
const std::vector<std::string>& command_line();

/// Thrown by an action to end the tool with this exit status and no further message (the
/// message came from elsewhere, e.g. a launched rank).
struct ExitStatus {
  int status;
};

/// The config arguments every config-driven command takes: stacked files, overrides, dump.
struct ConfigArguments {
  std::vector<std::string> files, overrides;
  bool dump_config = false;
};

/// Registers -c/--config (repeatable, one file each), positional key=value overrides and
/// --dump-config on `command`.
void add_config_arguments(CLI::App& command, ConfigArguments& args);

/// The resolved config; with --dump-config it is printed instead and nullopt returned.
std::optional<YAML::Node> resolve_or_dump(const ConfigArguments& args);

/// Trains the config's run for warmup + steps steps in a temporary directory (no evaluation or
/// checkpoint), timing the steps after the warm-up; `resolved` gets the config it ran.
train::TrainProfile profile_training(const ConfigArguments& args, int64_t warmup, int64_t steps,
                                     YAML::Node& resolved);

/// `moelab bench ...`: micro-benchmarks of library components.
void register_bench_command(CLI::App& app, Action& action);

/// `moelab data simulate-perturbation ...`: writes data sets.
void register_data_commands(CLI::App& app, Action& action);

/// `moelab info -c CONFIG ...`: a model's size and cost, or the resolved config.
void register_info_command(CLI::App& app, Action& action);

/// Commands on runs: `moelab train -c CONFIG ...`, `moelab resume RUN_DIR`,
/// `moelab eval RUN_DIR_OR_CHECKPOINT`, `moelab export RUN_DIR --out DIR`.
void register_run_commands(CLI::App& app, Action& action);

/// Language-model commands: `moelab generate RUN --prompt TEXT ...`, `moelab tokenizer train
/// -c CONFIG --vocab-size N --out DIR`, `moelab bench lm -c CONFIG` (on the bench command).
void register_language_model_commands(CLI::App& app, Action& action);

}  // namespace moelab::app
