// `moelab train --nproc N`: N processes on this machine, each told its place in the torchrun
// conventions (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1, MASTER_PORT), as torchrun
// --standalone would. Rank 0 writes to this process's console; the other ranks' lines come
// through prefixed with "[rank R] ", so their errors reach the console with their rank.
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace moelab::dist {

struct LocalLaunch {
  int nproc = 1;
  /// 0 = a free port chosen here.
  int master_port = 0;
  /// After the first rank fails, how long the others get to exit (they fail too, naming the
  /// lost rank, once their next collective breaks) before they are killed.
  double grace_seconds = 60;
  /// Threads per process (OMP_NUM_THREADS), unless the environment sets it: 0 = this machine's
  /// cores divided among the processes.
  int threads = 0;
  /// Extra environment variables for every process ("NAME=value").
  std::vector<std::string> environment;
  /// Where the prefixed lines go; nullptr: this process's standard error.
  std::ostream* output = nullptr;
  /// Rank 0 writes to this process's stdout and stderr directly (false: prefixed like the rest).
  bool rank0_direct = true;
};

/// Runs `argv` (argv[0] is the executable) as `launch.nproc` processes and waits for them.
/// Returns 0 if every rank exited with 0, else the exit status of the first rank that failed
/// (128 + the signal for a killed one).
int launch_local(const std::vector<std::string>& argv, const LocalLaunch& launch);

/// A TCP port on 127.0.0.1 that nothing listens on at the moment.
int free_local_port();

}  // namespace moelab::dist
