// The training loop every moelab model goes through: seeded data order, micro-batches with
// gradient accumulation, global-norm clipping, AdamW or SGD, a step-indexed learning-rate
// schedule, aux losses added to the task loss, MoE routing bias updates, periodic evaluation,
// metrics.jsonl, and checkpoints from which a run resumes bit for bit.
//
// Run directory:
//   config.yaml                resolved config of the run
//   metrics.jsonl              one JSON object per log interval ("train"), evaluation ("eval"),
//                              epoch ("epoch": expert usage and loss), skipped step ("skip"),
//                              and at the end of the run the test split ("test": accuracy,
//                              class x expert counts, per-expert loss)
//   checkpoints/step-NNNNNNNN/ model.safetensors, optimizer.pt, rng.safetensors, config.yaml,
//                              manifest.json (step, epoch, cursor, early-stopping state, time
//                              trained, checksums)
//
// A run stops at its last step, or earlier: early stopping on the monitored metric, the time
// limit, or SIGINT/SIGTERM (see stopping.h). Each stop writes a checkpoint first. A step whose
// loss or gradient is not finite is skipped (no update, the step counter stays) and counted;
// max_nonfinite_steps of them in a row checkpoint the state and abort with a TrainingError.
#pragma once

#include <torch/arg.h>
#include <yaml-cpp/yaml.h>

#include <chrono>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "moelab/data/dataset.h"
#include "moelab/models/model.h"
#include "moelab/train/data_parallel.h"
#include "moelab/train/evaluation.h"
#include "moelab/train/optimizer.h"
#include "moelab/train/progress.h"
#include "moelab/train/routing_stats.h"
#include "moelab/train/run_directory.h"
#include "moelab/train/schedule.h"
#include "moelab/train/step.h"
#include "moelab/train/stopping.h"
#include "moelab/train/task.h"
#include "moelab/util/collective.h"
#include "moelab/util/runtime.h"

namespace moelab::train {

struct TrainOptions {
  /// Optimiser steps to take, >= 1. Default 200. Ignored when epochs > 0 (a key=value override
  /// of it is then refused: run::check_overrides_take_effect).
  TORCH_ARG(int64_t, max_steps) = 200;
  /// Passes over the training data (the last partial batch of each is dropped); 0 = use
  /// max_steps. Default 0.
  TORCH_ARG(int64_t, epochs) = 0;
  /// Samples per micro-batch, >= 1. Default 64.
  TORCH_ARG(int64_t, batch_size) = 64;
  /// Micro-batches per optimiser step, >= 1. Default 1.
  TORCH_ARG(int64_t, grad_accumulation) = 1;
  /// Global gradient-norm limit; 0 = off. Default 0.
  TORCH_ARG(double, clip_grad_norm) = 0.0;
  /// Fraction of the data held out for validation (seeded split), in [0, 1). Default 0.1.
  TORCH_ARG(double, val_fraction) = 0.1;
  /// Steps between metric lines, >= 1. Default 10.
  TORCH_ARG(int64_t, log_every) = 10;
  /// Steps between evaluations; 0 = only at the end. Default 50.
  TORCH_ARG(int64_t, eval_every) = 50;
  /// Also evaluate at the end of each epoch. Default false.
  TORCH_ARG(bool, eval_each_epoch) = false;
  /// Steps between checkpoints; 0 = only at the end. Default 0.
  TORCH_ARG(int64_t, checkpoint_every) = 0;
  /// Minutes between checkpoints (wall clock, this process); 0 = off. Default 0.
  TORCH_ARG(double, checkpoint_every_minutes) = 0.0;
  /// Checkpoints kept (the newest), >= 1; the best one (monitor.keep_best) is kept besides.
  /// Default 3.
  TORCH_ARG(int64_t, keep_last) = 3;
  /// Training time limit over the whole run, resumes included: "45m", "12h", "1h30m", seconds;
  /// "" = none. Default "".
  TORCH_ARG(std::string, max_time) = "";
  /// fp32, or bf16 (CPU autocast: matmuls in bfloat16, weights and optimiser in float32).
  /// Default fp32.
  TORCH_ARG(std::string, precision) = "fp32";
  /// Seeds weights, data split, data order and routing noise. Default 0.
  TORCH_ARG(uint64_t, seed) = 0;
  /// Non-finite steps in a row that abort the run, >= 1. Default 5.
  TORCH_ARG(int64_t, max_nonfinite_steps) = 5;
  TORCH_ARG(OptimizerOptions, optimizer);
  TORCH_ARG(ScheduleOptions, schedule);
  /// The evaluation metric for keep-best and early stopping (val_ + any metric of the task).
  TORCH_ARG(MonitorOptions, monitor);
};

YAML::Node to_yaml(const TrainOptions& options);
void from_yaml(const YAML::Node& node, TrainOptions& options, const std::string& where);

/// ConfigError naming the key of the first option out of range.
void validate(const TrainOptions& options);

/// Everything a run is made of. Assembled from a config above this layer (run/run.h), so the
/// trainer builds nothing by name.
struct RunParts {
  YAML::Node config;  // the resolved config, saved with the run and with every checkpoint
  TrainOptions options;
  std::shared_ptr<models::Model> model;
  data::Splits data;
  std::shared_ptr<Task> task;
  /// The processes that train this model together (data parallel); null: this process alone.
  /// Rank 0 alone writes the run directory; every rank reads it on resume.
  std::shared_ptr<Collective> collective;
  /// Split the MoE layers' routed experts over the collective's ranks (parallel.expert) instead
  /// of copying them; ignored in one process.
  bool expert_parallel = false;
  /// Data parallelism's gradient buckets (parallel.bucket_mb).
  int64_t gradient_bucket_bytes = int64_t{25} << 20;
};

enum class StopReason { kCompleted, kEarlyStopping, kTimeLimit, kSignal };
std::string to_string(StopReason reason);

struct TrainSummary {
  int64_t steps = 0;
  int64_t total_steps = 0;      // the step the run ends at if nothing stops it earlier
  int64_t skipped_steps = 0;    // non-finite steps skipped over the whole run
  double final_train_loss = 0;  // task + aux loss of the last logged interval
  bool evaluated = false;       // whether this run() evaluated (val is its last evaluation)
  Metrics val;                  // the task's metrics on the validation split
  bool tested = false;          // the finished run was scored on its test split (val if none)
  Metrics test;
  StopReason stop_reason = StopReason::kCompleted;
  std::string checkpoint;       // the newest checkpoint written
  int64_t best_step = -1;       // best evaluation of the monitored metric, -1 if none yet
  double best_value = 0;
};

/// Keys of the train section a resume may change: limits and bookkeeping, nothing that would
/// make the continued run differ from an uninterrupted one with the same limits.
const std::vector<std::string>& resume_overridable_keys();

/// Where a run's steps spend their time (Trainer::set_profile): the parts of train_step, plus
/// the rest of each loop iteration (bookkeeping: metric lines, routing statistics, the console),
/// and evaluations and checkpoints apart. Steps before `skip_steps` are not counted (warm-up).
struct TrainProfile {
  int64_t skip_steps = 0;
  int64_t steps = 0;
  StepTimes step;
  double bookkeeping = 0;
  double evaluation = 0;
  double checkpoint = 0;
};

class Trainer {
 public:
  /// A new run in `run_dir`. The directory is created; ConfigError if it already holds a run.
  Trainer(RunParts parts, const std::string& run_dir);
  ~Trainer();

  /// Continues the run in `run_dir` from `checkpoint` (a verified checkpoint of it), with
  /// `parts` assembled from that checkpoint's config (limits possibly raised: see
  /// resume_overridable_keys). Metric lines after the checkpoint's step are dropped.
  static std::unique_ptr<Trainer> resume(RunParts parts, const std::string& run_dir,
                                         const std::string& checkpoint);

  /// Trains to the last step (or `stop_at_step` if smaller and > 0) unless a stop comes first,
  /// evaluates, writes the final checkpoint.
  TrainSummary run(int64_t stop_at_step = 0);

  /// Times the steps of run() into `profile` (nullptr: off, the default).
  void set_profile(TrainProfile* profile) { profile_ = profile; }

  /// Where progress goes while run() runs; silent by default.
  void set_console(ConsoleMode mode, std::ostream& out);

  int64_t step() const { return step_; }
  int64_t total_steps() const { return total_steps_; }
  models::Model& model() { return *model_; }
  const OptimizerSetup& optimizer() const { return optimizer_; }
  const Task& task() const { return *task_; }

 private:
  struct Resumed {};
  Trainer(RunParts parts, const std::string& run_dir, Resumed);
  data::Batch next_batch();
  bool epoch_exhausted() const;
  void write_epoch_line();
  void save_checkpoint();
  void load_checkpoint(const std::string& directory);
  // A checkpoint's model.safetensors into the model (this rank's experts where they are split).
  void load_weights(const std::string& checkpoint);
  void append_metrics(const nlohmann::json& line);
  // Data parallel: every rank's log-interval and epoch sums added into rank 0's (the others
  // start over), so its lines and checkpoints hold the global batch's numbers.
  void gather_sums();
  bool writes() const { return !collective_ || collective_->rank() == 0; }
  // Evaluation in shards over the ranks.
  EvaluationRanks ranks() const { return {collective_.get(), !expert_shards_.empty()}; }
  double seconds_trained() const;

  YAML::Node config_;
  std::string run_dir_;
  TrainOptions options_;
  Precision precision_ = Precision::kFloat32;
  std::shared_ptr<models::Model> model_;
  std::shared_ptr<Task> task_;
  OptimizerSetup optimizer_;
  data::Splits data_;
  std::shared_ptr<Collective> collective_;
  ExpertShards expert_shards_;
  std::unique_ptr<DataParallelSync> sync_;
  int64_t total_steps_ = 0;
  int64_t step_ = 0, epoch_ = 0, cursor_ = 0;
  int64_t nonfinite_in_a_row_ = 0, nonfinite_total_ = 0;
  at::Tensor epoch_order_;
  MonitorOptions monitor_;  // train.monitor with its mode resolved from the task
  EarlyStopping early_stopping_{MonitorOptions()};
  // Per MoE layer: the samples each expert computed and their loss, over the log interval and
  // over the epoch (checkpointed, so the epoch line of a resumed run is the same).
  std::vector<ExpertTally> interval_tally_, epoch_tally_;
  // The log interval's sums, checkpointed too, so the train lines of a resumed run are the same.
  struct LogInterval {
    double loss = 0, task_loss = 0, aux_loss = 0;
    int64_t steps = 0;
    std::unique_ptr<MetricAccumulator> metrics;
  };
  LogInterval interval_;
  double seconds_before_ = 0;  // trained by earlier processes of this run
  std::chrono::steady_clock::time_point process_start_ = std::chrono::steady_clock::now();
  std::string last_checkpoint_;
  TrainProfile* profile_ = nullptr;
  ConsoleMode console_mode_ = ConsoleMode::kSilent;
  std::ostream* console_ = nullptr;
};

}  // namespace moelab::train
