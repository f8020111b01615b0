// What a model is trained to do: the loss (per sample, so routing analysis can attribute it to
// experts), and the metrics evaluation reports. Training, evaluation, `moelab eval` and the
// study all score a model through its task; the trainer knows no loss of its own.
//
//   classification  targets (B) int64 classes; outputs (B, classes) logits.
//                    loss: cross-entropy; metrics: loss, accuracy.
//   regression       targets (B, O) float; outputs (B, O). loss: mean squared error over the
//                    outputs; metrics: loss, mse, mae, pearson, r2 (averaged over the outputs;
//                    per output in the details).
//
// Adding a task: a Task subclass in its own file pair and one line in task.cpp's registry.
#pragma once

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "moelab/data/batch.h"
#include "moelab/models/model.h"

namespace moelab::train {

struct MetricInfo {
  std::string name;          // "accuracy"; evaluation lines carry it as "val_accuracy"
  bool higher_is_better = false;
};

struct Metrics {
  std::map<std::string, double> values;  // every declared metric
  nlohmann::json details = nlohmann::json::object();  // e.g. per-output values
  int64_t samples = 0;
};

/// Sums over many batches that end in the task's metrics.
class MetricAccumulator {
 public:
  virtual ~MetricAccumulator() = default;
  /// One batch: the model's output, the batch, and the task's per-sample loss (B), detached.
  virtual void add(const models::ModelOutput& output, const data::Batch& batch,
                   const at::Tensor& sample_loss) = 0;
  virtual Metrics result() const = 0;
  /// The sums so far, exactly (a checkpoint carries them so that a resumed run's train lines are
  /// the same as an uninterrupted run's); load_state restores them.
  virtual nlohmann::json state() const = 0;
  virtual void load_state(const nlohmann::json& state) = 0;
  /// Two states of this kind added (data parallelism adds every rank's): by default every
  /// number adds (add_json_sums in data_parallel.h); a state holding other numbers overrides it.
  virtual nlohmann::json add_states(const nlohmann::json& a, const nlohmann::json& b) const;
};

class Task {
 public:
  virtual ~Task() = default;
  virtual std::string name() const = 0;
  /// The metrics this task reports; the first is "loss".
  virtual std::vector<MetricInfo> metrics() const = 0;
  /// Per-sample loss (B), float32, differentiable with respect to output.outputs.
  virtual at::Tensor sample_loss(const models::ModelOutput& output,
                                 const data::Batch& batch) const = 0;
  virtual std::unique_ptr<MetricAccumulator> accumulator() const = 0;
  /// Checks that a data set's batch fits the task (targets present, of the right type and
  /// shape); DataError naming what is wrong.
  virtual void check_batch(const data::Batch& batch) const = 0;

  /// The metric called `name` ("accuracy"); ConfigError listing the declared ones otherwise.
  MetricInfo metric(const std::string& name) const;
};

/// "PREFIXloss 0.1234, PREFIXaccuracy 0.9500" in the task's metric order.
std::string format_metrics(const Task& task, const Metrics& metrics, const std::string& prefix);

struct TaskEntry {
  std::string name;
  std::string description;
  std::function<std::shared_ptr<Task>()> make;
};

/// Every registered task, in registration order.
const std::vector<TaskEntry>& task_registry();
/// The task called `name`; ConfigError naming the registered ones otherwise.
std::shared_ptr<Task> make_task(const std::string& name);

}  // namespace moelab::train
