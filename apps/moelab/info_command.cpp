#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <iostream>
#include <memory>

#include "commands.h"
#include "moelab/config/config.h"
#include "moelab/run/run_config.h"
#include "moelab/train/progress.h"

namespace moelab::app {


void add_config_arguments(CLI::App& command, ConfigArguments& args) {
  // allow_extra_args(false): one file per -c, so overrides are not taken for files.
  command.add_option("-c,--config", args.files, "Config file; repeat to stack them (later wins)")
      ->allow_extra_args(false);
  command.add_option("overrides", args.overrides, "key.sub=value overrides, applied last");
  command.add_flag("--dump-config", args.dump_config, "Print the resolved config and exit");
  command.footer("Precedence: built-in defaults < config files (in order) < key=value overrides.");
}

std::optional<YAML::Node> resolve_or_dump(const ConfigArguments& args) {
  YAML::Node resolved = run::resolve_run_config(args.files, args.overrides);
  if (!args.dump_config) return resolved;
  std::cout << YAML::Dump(resolved) << "\n";
  return std::nullopt;
}

void register_info_command(CLI::App& app, Action& action) {
  struct Arguments : ConfigArguments {
    bool json = false;
  };
  auto args = std::make_shared<Arguments>();
  CLI::App* info = app.add_subcommand(
      "info", "Parameters (total and active per sample) and forward FLOPs per sample of a model");
  add_config_arguments(*info, *args);
  info->add_flag("--json", args->json, "One JSON object instead of text");
  info->callback([args, &action] {
    action = [args] {
      const std::optional<YAML::Node> resolved = resolve_or_dump(*args);
      if (!resolved) return;
      std::shared_ptr<models::Model> model;
      try {
        model = run::build_model(*resolved);
      } catch (const ConfigError& e) {
        throw config::with_origin(e, args->files, args->overrides);
      }
      const models::ModelCost cost = model->cost();
      const std::string name = (*resolved)["model"]["name"].as<std::string>();
      if (args->json) {
        std::cout << nlohmann::json{{"model", name},
                                    {"parameters_total", cost.parameters_total},
                                    {"parameters_active", cost.parameters_active},
                                    {"flops_per_sample", cost.flops_per_sample}}
                         .dump()
                  << "\n";
        return;
      }
      std::cout << fmt::format("model                        {}\n", name)
                << fmt::format("parameters, total            {:>14}\n", train::format_thousands(cost.parameters_total))
                << fmt::format("parameters, active/sample    {:>14}\n", train::format_thousands(cost.parameters_active))
                << fmt::format("FLOPs/sample, forward        {:>14}\n", train::format_thousands(cost.flops_per_sample));
    };
  });
}

}  // namespace moelab::app
