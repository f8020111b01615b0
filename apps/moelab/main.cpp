// The moelab command-line tool: parses arguments, sets up the runtime, and hands over to the
// library. Errors raised anywhere below are caught here and printed as one line.
// Exit codes: 0 success, 1 usage or configuration error, 2 runtime error.
#include <c10/util/Exception.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <iostream>

#include "commands.h"
#include "moelab/io/file.h"
#include "moelab/util/errors.h"
#include "moelab/util/runtime.h"

namespace {
constexpr int kExitUsage = 1;
constexpr int kExitRuntime = 2;

// c10::Error's what() carries a C++ stack trace; users need the message alone. A message that
// quotes a huge value is cut to a readable length.
std::string first_line(const std::string& message) {
  constexpr size_t kMaxLength = 400;
  std::string line = message.substr(0, message.find('\n'));
  if (line.size() > kMaxLength) {
    line = line.substr(0, kMaxLength) + "... (" + std::to_string(line.size()) + " characters)";
  }
  return line;
}
}  // namespace

namespace moelab::app {
namespace {
std::vector<std::string> the_command_line;
}
const std::vector<std::string>& command_line() { return the_command_line; }
}  // namespace moelab::app

int main(int argc, char** argv) {
  moelab::app::the_command_line.assign(argv, argv + argc);
  // First: it may restart the process on a better OpenBLAS core (util/runtime.h).
  moelab::select_blas_kernel(argv);
  CLI::App app{"moelab: build, train, analyse and run Mixture-of-Experts models"};
  app.set_version_flag("--version", std::string("moelab ") + MOELAB_VERSION);
  app.require_subcommand(1);
  // Inherited by every subcommand: `moelab bench moe-layer --threads 2` means the global option.
  app.fallthrough();
  moelab::RuntimeOptions runtime;
  app.add_option("--threads", runtime.threads,
                 "Intra-op threads (0 = OMP_NUM_THREADS if set, else all cores)")
      ->check(moelab::app::kNonNegative)
      ->capture_default_str();
  moelab::app::Action action;
  moelab::app::register_bench_command(app, action);
  moelab::app::register_data_commands(app, action);
  moelab::app::register_info_command(app, action);
  moelab::app::register_run_commands(app, action);
  moelab::app::register_language_model_commands(app, action);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : kExitUsage;
  }
  try {
    moelab::init_runtime(runtime);
    moelab::io::inject_fault_from_environment();  // tests of kills and full disks (io/file.h)
    if (!moelab::blas_is_optimized()) {
      spdlog::warn("LibTorch's BLAS is '{}', not an optimised one: matmuls run ~20x slower. "
                   "Install libopenblas0-openmp.", moelab::blas_library_path());
    }
    if (action) action();
  } catch (const moelab::app::ExitStatus& e) {
    return e.status;
  } catch (const moelab::ConfigError& e) {
    std::cerr << "moelab: error: " << first_line(e.what()) << "\n";
    return kExitUsage;
  } catch (const moelab::CheckpointError& e) {
    // Several lines on purpose: a checkpoint that does not fit the model lists every mismatch.
    std::cerr << "moelab: error: " << e.what() << "\n";
    return kExitRuntime;
  } catch (const c10::Error& e) {
    std::cerr << "moelab: error: " << first_line(e.what_without_backtrace()) << "\n";
    return kExitRuntime;
  } catch (const std::exception& e) {
    std::cerr << "moelab: error: " << first_line(e.what()) << "\n";
    return kExitRuntime;
  }
  return 0;
}
