// Subcommands of the moelab tool. Each registers its options on the CLI11 app and runs through
// the library; none holds model logic of its own.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace moelab::app {

/// What the chosen subcommand will do once parsing has finished and the runtime is set up.
using Action = std::function<void()>;

/// `moelab bench ...`: micro-benchmarks of library components.
void register_bench_command(CLI::App& app, Action& action);

/// `moelab info -c CONFIG ...`: a model's size and cost, or the resolved config.
void register_info_command(CLI::App& app, Action& action);

/// `moelab train -c CONFIG ...` and `moelab resume RUN_DIR`.
void register_train_commands(CLI::App& app, Action& action);

}  // namespace moelab::app
