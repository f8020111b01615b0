// Federated training (McMahan et al. 2017): the training data is split over clients that keep it;
// each round a seeded sample of clients starts from the global model, trains locally on its own
// data, and only the weights travel back, to be aggregated into the next global model:
//   fedavg        the clients' weights averaged by their sample counts
//   fedprox       fedavg, with the proximal term mu/2 ||w - w_global||^2 in each local loss
//                 (Li et al. 2020)
//   expert_aware  each routed expert's weights averaged by the tokens each client actually
//                 routed to it in the round, so a client that never used an expert does not drag
//                 it back toward its stale copy (an expert no client used keeps its global
//                 weights); the router, shared experts and the rest as fedavg
// Optional client-level differential privacy (McMahan et al. 2018): each client's update is
// clipped to an L2 norm of dp_clip, and Gaussian noise of standard deviation
// dp_noise_multiplier x dp_clip / (clients in the round) is added to the aggregate update.
//
// Simulated clients run one after another in this process; with several processes (RunParts::
// collective: `moelab train --nproc N`, torchrun, Slurm) client c trains in process c mod N and
// the aggregation sums travel by all-reduce, giving the simulated run's result (to float
// summation order); rank 0 alone evaluates and writes. The run directory is a trainer's
// (config.yaml, metrics.jsonl with a "round" line per round, checkpoints/step-RRRRRRRR per round
// holding the global model and the random state), so a resumed federated run equals an
// uninterrupted one and eval/export read its checkpoints.
#pragma once

#include <torch/arg.h>

#include <chrono>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "moelab/train/trainer.h"

namespace YAML {
class Node;
}

namespace moelab::train {

struct FederatedOptions {
  /// Clients the training split is partitioned over; 0 = not federated. Default 0.
  TORCH_ARG(int64_t, clients) = 0;
  /// Fraction of the clients sampled each round (seeded), in (0, 1]; at least one. Default 1.
  TORCH_ARG(double, participation) = 1.0;
  /// Rounds, >= 1. Default 10.
  TORCH_ARG(int64_t, rounds) = 10;
  /// Passes over its own data each sampled client makes per round, >= 1. Default 1.
  TORCH_ARG(int64_t, local_epochs) = 1;
  /// Optimiser steps per client per round instead of local_epochs; 0 = use local_epochs.
  TORCH_ARG(int64_t, local_steps) = 0;
  /// fedavg, fedprox or expert_aware. Default fedavg.
  TORCH_ARG(std::string, aggregation) = "fedavg";
  /// fedprox's proximal weight, >= 0. Default 0.01.
  TORCH_ARG(double, mu) = 0.01;
  /// iid, dirichlet (per class, concentration alpha) or by_class (classes_per_client classes
  /// each). Default iid.
  TORCH_ARG(std::string, partition) = "iid";
  /// Dirichlet concentration, > 0 (small: each client sees few classes). Default 0.5.
  TORCH_ARG(double, alpha) = 0.5;
  /// by_class: classes per client, >= 1. Default 2.
  TORCH_ARG(int64_t, classes_per_client) = 2;
  /// Client-level DP: clip of each client's update (L2); 0 = no DP. Default 0.
  TORCH_ARG(double, dp_clip) = 0.0;
  /// Client-level DP: noise standard deviation in units of dp_clip / clients in the round.
  /// Default 0.
  TORCH_ARG(double, dp_noise_multiplier) = 0.0;
};

YAML::Node to_yaml(const FederatedOptions& options);
void from_yaml(const YAML::Node& node, FederatedOptions& options, const std::string& where);
/// ConfigError naming the key of the first option out of range.
void validate(const FederatedOptions& options, const std::string& where);

/// The training samples' indices per client. iid: a seeded shuffle cut into near-equal parts;
/// dirichlet: each class's samples split by proportions drawn from Dir(alpha) over the clients;
/// by_class: client c holds classes c*k .. c*k+k-1 (mod the class count), each class's samples
/// split evenly among the clients holding it. `labels` (N) int64 class ids (only dirichlet and
/// by_class read them). Every sample goes to exactly one client (a class no client holds under
/// by_class is left out and counted in the returned notes).
std::vector<std::vector<int64_t>> partition_samples(const FederatedOptions& options,
                                                    const at::Tensor& labels, int64_t num_samples,
                                                    uint64_t seed);

/// The clients sampled in `round`: max(1, round(participation x clients)) of them, sorted; a pure
/// function of (seed, round).
std::vector<int64_t> sample_clients(const FederatedOptions& options, int64_t round, uint64_t seed);

/// One client's round, as the server sees it.
struct ClientUpdate {
  std::map<std::string, at::Tensor> weights;  // every parameter and floating buffer, by name
  double samples = 0;                         // its training samples
  /// Per MoE layer (by the layer's module name): tokens it routed to each expert this round.
  std::map<std::string, at::Tensor> expert_tokens;
};

/// What aggregation adds up over clients (each process its own clients, then a sum over
/// processes): sample-weighted weights, and per routed expert token-weighted weights and tokens.
struct AggregationSums {
  double samples = 0;
  std::map<std::string, at::Tensor> weighted;        // sum of samples x weights (float64)
  std::map<std::string, at::Tensor> token_weighted;  // expert parameters: sum of tokens[e] x rows e
  std::map<std::string, at::Tensor> tokens;          // per MoE layer: (E) tokens summed
};
AggregationSums aggregation_sums(const std::map<std::string, at::Tensor>& global,
                                 const std::vector<ClientUpdate>& clients,
                                 const std::map<std::string, std::vector<std::string>>& experts);
/// The new global weights from the sums (aggregate = finish_aggregation of aggregation_sums).
std::map<std::string, at::Tensor> finish_aggregation(const std::string& aggregation,
                                                     const std::map<std::string, at::Tensor>& global,
                                                     const AggregationSums& sums,
                                                     const std::map<std::string, std::vector<std::string>>& experts);

/// Aggregates `clients` into new global weights (the same names as `global`). `experts` maps each
/// MoE layer's module name to its routed experts' parameter names (dim 0 = expert), for
/// expert_aware. Non-floating tensors keep their global values.
std::map<std::string, at::Tensor> aggregate(const std::string& aggregation,
                                            const std::map<std::string, at::Tensor>& global,
                                            const std::vector<ClientUpdate>& clients,
                                            const std::map<std::string, std::vector<std::string>>& experts);

/// The federated loop over clients, simulated or as processes (see the file comment).
class FederatedTrainer {
 public:
  /// A new run (ConfigError if `run_dir` holds one); `parts.data.train` is partitioned.
  FederatedTrainer(RunParts parts, FederatedOptions options, const std::string& run_dir);
  /// Continues the run in `run_dir` from its checkpoint `checkpoint`.
  static std::unique_ptr<FederatedTrainer> resume(RunParts parts, FederatedOptions options,
                                                  const std::string& run_dir, const std::string& checkpoint);
  ~FederatedTrainer();

  /// Runs the remaining rounds (up to `stop_after_round` if > 0), checkpointing after each, then
  /// scores the test split (val if none) with the global model. Returns the rounds done.
  int64_t run(int64_t stop_after_round = 0);
  void set_console(std::ostream& out) { console_ = &out; }
  models::Model& model() { return *model_; }
  int64_t round() const { return round_; }
  const std::vector<std::vector<int64_t>>& partition() const { return partition_; }

 private:
  struct Resumed {};
  FederatedTrainer(RunParts parts, FederatedOptions options, const std::string& run_dir, Resumed);
  ClientUpdate train_client(int64_t client, const std::map<std::string, at::Tensor>& global,
                            double& mean_loss);
  void save_checkpoint();
  // Optimiser steps a client holding `samples` samples takes in a round.
  int64_t client_steps(int64_t samples) const;
  bool writes() const { return !collective_ || collective_->rank() == 0; }

  YAML::Node config_;
  std::string run_dir_;
  TrainOptions train_;
  FederatedOptions options_;
  Precision precision_ = Precision::kFloat32;
  std::shared_ptr<models::Model> model_;
  std::shared_ptr<Task> task_;
  data::Splits data_;
  std::shared_ptr<Collective> collective_;  // real clients as processes; null: simulated
  std::vector<std::vector<int64_t>> partition_;
  std::map<std::string, std::vector<std::string>> expert_parameters_;
  std::vector<std::string> moe_layers_;  // the MoE layers' module names, in forward order
  int64_t round_ = 0;
  int64_t steps_per_round_ = 0;  // local_steps, or the largest client's local_epochs in steps
  std::ostream* console_ = nullptr;
  double seconds_before_ = 0;  // trained by earlier processes of this run
  std::chrono::steady_clock::time_point process_start_ = std::chrono::steady_clock::now();
};

}  // namespace moelab::train
