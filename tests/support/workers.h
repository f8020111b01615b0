// Multi-process tests: a test launches N copies of this test executable (dist::launch_local,
// the launcher `moelab train --nproc` uses), each running a registered worker function instead
// of the tests, with its rank in the torchrun variables; the test then checks what they wrote.
#pragma once

#include <cstdlib>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "moelab/dist/launcher.h"

namespace moelab::testing {

using Worker = std::function<int()>;

inline std::map<std::string, Worker>& workers() {
  static std::map<std::string, Worker> registry;
  return registry;
}

inline bool register_worker(const std::string& name, Worker worker) {
  workers()[name] = std::move(worker);
  return true;
}

/// The variable's value, or "" if unset.
inline std::string env_or_empty(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

struct WorkerRun {
  int status = 0;
  std::string output;  // every rank's lines, prefixed "[rank R] "
};

/// Runs worker `name` in `nproc` processes; `environment` holds extra "NAME=value" entries.
inline WorkerRun launch_workers(const std::string& name, int nproc,
                                std::vector<std::string> environment = {}, double grace_seconds = 30) {
  std::ostringstream output;
  dist::LocalLaunch launch;
  launch.nproc = nproc;
  launch.threads = 1;
  launch.grace_seconds = grace_seconds;
  launch.output = &output;
  launch.rank0_direct = false;
  environment.push_back("MOELAB_TEST_WORKER=" + name);
  launch.environment = environment;
  WorkerRun run;
  run.status = dist::launch_local({"/proc/self/exe"}, launch);
  run.output = output.str();
  return run;
}

}  // namespace moelab::testing

/// Defines worker NAME: `MOELAB_TEST_WORKER(NAME) { ...; return 0; }`.
#define MOELAB_TEST_WORKER(NAME)                                                              \
  static int NAME##_worker_body();                                                            \
  static const bool NAME##_worker_registered =                                                \
      ::moelab::testing::register_worker(#NAME, [] { return NAME##_worker_body(); });          \
  static int NAME##_worker_body()
