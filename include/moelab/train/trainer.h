// The training loop every moelab model goes through: seeded data order, micro-batches with
// gradient accumulation, global-norm clipping, AdamW or SGD, a step-indexed learning-rate
// schedule, aux losses added to the task loss, MoE routing bias updates, periodic evaluation,
// metrics.jsonl, and checkpoints from which a run resumes bit for bit.
//
// Run directory:
//   config.yaml                resolved config of the run
//   metrics.jsonl              one JSON object per log interval ("train") and evaluation ("eval")
//   checkpoints/step-NNNNNNNN/ model.safetensors, optimizer.pt, rng.safetensors, config.yaml,
//                              manifest.json (step, epoch, cursor, checksums)
//
// A step whose loss or gradient is not finite is skipped (no update, the step counter stays) and
// counted; max_nonfinite_steps of them in a row checkpoint the state and abort with a
// TrainingError.
//
// Not yet here (issue 3 continues): early stopping, time limits, signal handling, keep-best,
// bf16 autocast, a progress bar.
#pragma once

#include <torch/arg.h>
#include <yaml-cpp/yaml.h>

#include <memory>
#include <string>

#include "moelab/data/synthetic_mixture.h"
#include "moelab/models/model.h"
#include "moelab/train/schedule.h"

namespace torch::optim {
class Optimizer;
}

namespace moelab::train {

struct OptimizerOptions {
  /// adamw (decoupled weight decay) or sgd. Default adamw.
  TORCH_ARG(std::string, name) = "adamw";
  /// Base learning rate, > 0. Default 1e-3.
  TORCH_ARG(double, lr) = 1e-3;
  /// Weight decay (decoupled for adamw), >= 0. Default 0.
  TORCH_ARG(double, weight_decay) = 0.0;
  /// sgd momentum, >= 0. Default 0.9.
  TORCH_ARG(double, momentum) = 0.9;
  /// sgd Nesterov momentum. Default false.
  TORCH_ARG(bool, nesterov) = false;
  /// adamw betas and epsilon. Defaults 0.9, 0.999, 1e-8.
  TORCH_ARG(double, beta1) = 0.9;
  TORCH_ARG(double, beta2) = 0.999;
  TORCH_ARG(double, eps) = 1e-8;
};

struct TrainOptions {
  /// Optimiser steps to take, >= 1. Default 200.
  TORCH_ARG(int64_t, max_steps) = 200;
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
  /// Steps between checkpoints; 0 = only at the end. Default 0.
  TORCH_ARG(int64_t, checkpoint_every) = 0;
  /// Checkpoints kept (the newest), >= 1. Default 3.
  TORCH_ARG(int64_t, keep_last) = 3;
  /// Seeds weights, data split, data order and routing noise. Default 0.
  TORCH_ARG(uint64_t, seed) = 0;
  /// Non-finite steps in a row that abort the run, >= 1. Default 5.
  TORCH_ARG(int64_t, max_nonfinite_steps) = 5;
  TORCH_ARG(OptimizerOptions, optimizer);
  TORCH_ARG(ScheduleOptions, schedule);
};

struct TrainSummary {
  int64_t steps = 0;
  int64_t skipped_steps = 0;    // non-finite steps skipped over the whole run
  double final_train_loss = 0;  // task + aux loss of the last logged interval
  double val_loss = 0;
  double val_accuracy = 0;
};

class Trainer {
 public:
  /// A new run in `run_dir` from a resolved config (data, model, train sections). The directory
  /// is created; ConfigError if it already holds a run.
  Trainer(const YAML::Node& resolved_config, const std::string& run_dir);
  ~Trainer();

  /// Continues the run in `run_dir` from its newest valid checkpoint.
  static std::unique_ptr<Trainer> resume(const std::string& run_dir);

  /// Trains up to train.max_steps (or `stop_at_step` if smaller and > 0), evaluates, writes the
  /// final checkpoint.
  TrainSummary run(int64_t stop_at_step = 0);

  int64_t step() const { return step_; }
  models::Model& model() { return *model_; }

 private:
  struct Resumed {};
  Trainer(const YAML::Node& resolved_config, const std::string& run_dir, Resumed);
  void build();
  at::Tensor next_batch();
  std::pair<double, double> evaluate();
  void save_checkpoint();
  void load_checkpoint(const std::string& directory);
  void append_metrics(const std::string& line);

  YAML::Node config_;
  std::string run_dir_;
  TrainOptions options_;
  std::shared_ptr<models::Model> model_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  data::LabelledVectors train_set_, val_set_;
  int64_t step_ = 0, epoch_ = 0, cursor_ = 0;
  int64_t nonfinite_in_a_row_ = 0, nonfinite_total_ = 0;
  at::Tensor epoch_order_;
};

/// The newest checkpoint directory of a run that verifies, or "" if none does.
std::string latest_checkpoint(const std::string& run_dir);

}  // namespace moelab::train
