// Many processes training one model, on PyTorch's own distributed engine: rendezvous through
// c10d's TCPStore, collectives through c10d's ProcessGroupGloo (CPU tensors; NCCL is the
// choice where LibTorch has CUDA and the tensors live on GPUs).
//
// Every process learns its place from the environment, in the conventions of the launchers
// people already use:
//   torchrun, Kubernetes PyTorchJob:  RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
//   Slurm (srun):                     SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, with
//                                     MASTER_ADDR and MASTER_PORT exported by the batch script
//   moelab train --nproc N:           sets the torchrun variables for its N local processes
// GLOO_SOCKET_IFNAME picks the network interface, as in PyTorch.
#pragma once

#include <torch/arg.h>

#include <memory>
#include <string>
#include <vector>

#include "moelab/util/collective.h"

namespace YAML {
class Node;
}

namespace moelab::dist {

/// The `parallel:` config section.
struct ParallelOptions {
  /// How long a collective or the rendezvous waits for the other ranks before the run stops
  /// with an error naming the lost rank: "60s", "5m", seconds. Default "60s".
  TORCH_ARG(std::string, timeout) = "60s";
  /// Expert parallelism: 1 = every process holds every expert (data parallel only); otherwise
  /// the routed experts of each MoE layer are split over this many processes, which must be all
  /// of them (E a multiple of it). May change on resume, with the number of processes. Default 1.
  TORCH_ARG(int64_t, expert) = 1;
  /// Data parallelism sends the gradients in buckets of about this many megabytes, each as soon
  /// as the backward pass has produced all of its gradients (the first bucket holds at most 1 MB,
  /// as in PyTorch's DDP, so that the exchange starts early). Default 25.
  TORCH_ARG(double, bucket_mb) = 25;
};
YAML::Node to_yaml(const ParallelOptions& options);
void from_yaml(const YAML::Node& node, ParallelOptions& options, const std::string& where);
/// ConfigError naming the key of a value out of range.
void validate(const ParallelOptions& options, const std::string& where);

/// Where this process stands among the ones launched together.
struct LaunchEnvironment {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string launcher = "none";  // "torchrun" (the RANK variables), "slurm" or "none"
};

/// The environment's launch variables (list above); world size 1 where none is set. ConfigError
/// naming the variable for a malformed or inconsistent value (RANK >= WORLD_SIZE, a port out of
/// range, Slurm without MASTER_ADDR).
LaunchEnvironment launch_environment();

/// A c10d process group as a moelab::Collective. Failures (a rank that died, a timeout) raise a
/// TrainingError that names this rank and, where the store can tell, the rank that was lost.
class ProcessGroupCollective : public Collective {
 public:
  /// Rendezvous of `env.world_size` processes at MASTER_ADDR:MASTER_PORT (rank 0 hosts the
  /// store); waits at most `timeout_seconds` for the others.
  ProcessGroupCollective(const LaunchEnvironment& env, double timeout_seconds);
  ~ProcessGroupCollective() override;

  int rank() const override;
  int world_size() const override;
  void all_reduce_sum(std::vector<at::Tensor>& tensors) override;
  std::unique_ptr<PendingSum> start_all_reduce_sum(std::vector<at::Tensor> tensors) override;
  std::vector<std::string> all_gather_text(const std::string& text) override;
  at::Tensor all_to_all_rows(const at::Tensor& input, const std::vector<int64_t>& send_counts,
                             const std::vector<int64_t>& recv_counts) override;
  /// Waits until every rank has reached it.
  void barrier();
  /// Leaves this rank's error message in the store, where the other ranks' failure messages
  /// quote it ("rank 1 failed: ..."). Never throws.
  void report_failure(const std::string& message) noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moelab::dist
