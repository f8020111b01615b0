#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <fstream>
#include <iostream>
#include <memory>

#include "commands.h"
#include "moelab/config/config.h"
#include "moelab/run/run_config.h"
#include "moelab/train/progress.h"
#include "moelab/util/runtime.h"

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

namespace {

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

void print_system(bool json) {
  const BlasKernel blas = blas_kernel();
  const std::string best = best_blas_core_for_cpu();
  const int threads = at::get_num_threads();
  const double gflops = measure_gemm_gflops(1024);
  const double bf16_gflops = measure_gemm_gflops(1024, at::kBFloat16);
  const bool bf16_pays_off = bf16_gflops > 1.5 * gflops;
  const double read_gbps = measure_memory_read_gbps();
  const bool onednn = at::hasMKLDNN();
  const std::string allocator = allocator_tuned()
                                    ? "glibc malloc, large blocks from the heap (M_MMAP_MAX=0), "
                                      "never trimmed (M_TRIM_THRESHOLD=INT_MAX)"
                                    : "glibc malloc, defaults";
  if (json) {
    std::cout << nlohmann::json{{"cpu", cpu_model()},
                                {"cpu_best_blas_core", best},
                                {"cores", available_cores()},
                                {"memory_bytes", physical_memory_bytes()},
                                {"blas_library", blas.library},
                                {"blas_core", blas.core},
                                {"blas_core_chosen_by", blas.chosen_by},
                                {"blas_note", blas.note},
                                {"threads", threads},
                                {"allocator", allocator},
                                {"onednn", onednn},
                                {"gemm_gflops_1024", gflops},
                                {"gemm_gflops_1024_bf16", bf16_gflops},
                                {"memory_read_gbps", read_gbps}}
                     .dump()
              << "\n";
    return;
  }
  const std::string on_threads = fmt::format("on {} thread{}", threads, threads == 1 ? "" : "s");
  std::cout << fmt::format("CPU               {} ({} cores for this process, {:.1f} GB)\n",
                           cpu_model(), available_cores(),
                           static_cast<double>(physical_memory_bytes()) / 1e9)
            << fmt::format("BLAS library      {}\n",
                           blas.library.empty() ? "none found" : blas.library)
            << fmt::format("BLAS core         {} (chosen by {}){}\n",
                           blas.core.empty() ? "not OpenBLAS" : blas.core, blas.chosen_by,
                           blas.note.empty() ? "" : "; " + blas.note)
            << fmt::format("threads           {} intra-op\n", threads)
            << fmt::format("allocator         {}\n", allocator)
            << fmt::format("oneDNN            {}\n",
                           onednn ? "available (convolutions use it)" : "not built in")
            << fmt::format("GEMM 1024^3 fp32  {:.1f} GFLOP/s {}\n", gflops, on_threads)
            << fmt::format("GEMM 1024^3 bf16  {:.1f} GFLOP/s ({})\n", bf16_gflops,
                           bf16_pays_off ? "faster: train.precision=bf16 pays off on this machine"
                                         : "not faster: train.precision=bf16 would not speed up "
                                           "training here")
            << fmt::format(
                   "memory read       {:.1f} GB/s {} (many small experts are "
                   "bound by it: their weights are read each pass)\n",
                   read_gbps, on_threads);
}

}  // namespace

void register_info_command(CLI::App& app, Action& action) {
  struct Arguments : ConfigArguments {
    bool json = false;
    bool system = false;
  };
  auto args = std::make_shared<Arguments>();
  CLI::App* info = app.add_subcommand(
      "info", "Parameters (total and active per sample) and forward FLOPs per sample of a model");
  add_config_arguments(*info, *args);
  info->add_flag("--json", args->json, "One JSON object instead of text");
  info->add_flag("--system", args->system,
                 "The machine instead of a model: BLAS library and core, threads, allocator, "
                 "oneDNN, and measured GEMM and memory read rates");
  info->callback([args, &action] {
    action = [args] {
      if (args->system) {
        print_system(args->json);
        return;
      }
      const std::optional<YAML::Node> resolved = resolve_or_dump(*args);
      if (!resolved) return;
      std::shared_ptr<models::Model> model;
      try {
        model = run::build_model(run::with_sizes_from_data(*resolved));
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
