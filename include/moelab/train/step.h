// One optimiser step on any model with any optimiser: micro-batches with gradient
// accumulation, the task loss plus the model's aux losses, a finite check of the loss and every
// gradient (a non-finite step updates nothing), global-norm clipping, the optimiser update, and
// the routing-bias update of aux-free routers. The trainer's loop calls it; so can a federated
// client or a data-parallel rank on its own copy of a model.
#pragma once

#include <torch/nn/module.h>

#include <functional>
#include <vector>

#include "moelab/data/batch.h"
#include "moelab/models/model.h"
#include "moelab/train/task.h"
#include "moelab/util/runtime.h"

namespace torch::optim {
class Optimizer;
}

namespace moelab::train {

/// Seconds one step spent in each part, added to by train_step when StepOptions::times is set
/// (`moelab bench train` reads them).
struct StepTimes {
  double data = 0;       // next_batch
  double forward = 0;    // the model's forward pass and the loss
  double backward = 0;
  double sync = 0;       // the gradient exchange between ranks (data parallelism)
  double checks = 0;     // the finite check of every gradient and the norm clipping
  double optimizer = 0;  // the update, and the routing-bias update of aux-free routers
  double observer = 0;   // the caller's bookkeeping per micro-batch, and reading the losses
  double total() const { return data + forward + backward + sync + checks + optimizer + observer; }
  StepTimes& operator+=(const StepTimes& other);
};

struct StepResult;

/// What a step does between the last micro-batch's backward pass and the finite check when
/// several processes train one model (train/data_parallel.h): make every rank's gradients, finite
/// flag and loss sums those of the global batch.
class GradientSync {
 public:
  virtual ~GradientSync() = default;
  /// Called just before the backward pass of a step's last micro-batch (the exchange may start
  /// during it).
  virtual void before_last_backward() {}
  virtual void synchronise(torch::nn::Module& model, StepResult& result) = 0;
  /// Scales the gradients so that their global norm (over every rank's parameters: with expert
  /// parallelism each rank holds other experts) is at most `max_norm`, as one process would.
  virtual void clip_gradients(torch::nn::Module& model, double max_norm) = 0;
};

struct StepOptions {
  /// Micro-batches per step, >= 1 (the loss of each is divided by it).
  int64_t grad_accumulation = 1;
  /// Global gradient-norm limit; 0 = off.
  double clip_grad_norm = 0;
  Precision precision = Precision::kFloat32;
  /// Scales the aux-free routers' bias step (the trainer passes lr / peak lr).
  double routing_bias_scale = 1.0;
  /// Where to add the time of each part; nullptr (the default) times nothing.
  StepTimes* times = nullptr;
  /// Data parallelism's gradient exchange; nullptr (the default) in one process.
  GradientSync* sync = nullptr;
  /// Each micro-batch's loss is multiplied by this before its backward pass (data parallelism:
  /// the rank's share of the batch). The reported losses are not. Default 1.
  double loss_scale = 1.0;
};

/// One micro-batch as the step saw it, for the caller's bookkeeping (metrics, routing tallies).
struct MicroBatch {
  const data::Batch& batch;
  const models::ModelOutput& output;
  const at::Tensor& sample_loss;  // (B) detached
  const at::Tensor& task_loss;    // () detached
  const at::Tensor& loss;         // () task + aux, detached
};

struct StepResult {
  bool finite = true;  // false: nothing was updated, the gradients are zeroed
  /// Sums over the step's micro-batches of each one's mean loss (task + aux), task loss and
  /// aux loss; divide by grad_accumulation for the step's means.
  double loss_sum = 0, task_loss_sum = 0, aux_loss_sum = 0;
};

/// Runs one step. `next_batch` is called grad_accumulation times; `observe`, if set, once per
/// micro-batch after its backward pass.
StepResult train_step(models::Model& model, torch::optim::Optimizer& optimizer, const Task& task,
                      const std::function<data::Batch()>& next_batch, const StepOptions& options,
                      const std::function<void(const MicroBatch&)>& observe = {});

/// Whether no element of t is NaN or infinite.
bool is_finite(const at::Tensor& t);

/// Whether every parameter's gradient is finite (undefined gradients count as finite).
bool gradients_are_finite(const torch::nn::Module& module);

/// Applies every aux-free router's bias update (call after the optimiser step).
void update_routing_biases(torch::nn::Module& model, double rate_scale);

}  // namespace moelab::train
