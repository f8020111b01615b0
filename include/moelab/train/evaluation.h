// Scoring a model on a data source through its task: every metric the task declares, and with
// routing analysis the (class, expert) counts and each expert's loss per MoE layer.
#pragma once

#include <string>
#include <vector>

#include "moelab/data/dataset.h"
#include "moelab/models/model.h"
#include "moelab/train/routing_stats.h"
#include "moelab/train/task.h"
#include "moelab/util/collective.h"
#include "moelab/util/runtime.h"

namespace moelab::train {

struct Evaluation {
  Metrics metrics;  // the task's metrics ("loss", "accuracy", ...) over every sample
  /// With routing analysis, per MoE layer: (classes, E) counts of (class, expert) assignments
  /// and each expert's samples and their loss.
  std::vector<at::Tensor> class_expert;
  std::vector<ExpertTally> expert_loss;

  double metric(const std::string& name) const { return metrics.values.at(name); }
  int64_t samples() const { return metrics.samples; }
};

/// The batch size evaluation runs at for a run that trains at `train_batch_size`.
inline int64_t eval_batch_size(int64_t train_batch_size) {
  return std::max<int64_t>(train_batch_size, 256);
}

/// Several processes evaluating one model together (data parallelism).
struct EvaluationRanks {
  /// Each rank computes its shard of every batch (shard_of); their sums are gathered, so every
  /// rank returns the whole evaluation. Null: this process alone.
  Collective* collective = nullptr;
  /// The model's forward pass exchanges rows with every rank (expert parallelism): a rank whose
  /// shard of a batch is empty runs one sample anyway and discards it.
  bool lockstep = false;
};

/// The model in eval mode, without gradients, over `source` in order, in batches of
/// `batch_size`; the model's mode is restored after. With `num_classes` > 0 the routing of every
/// sample is tallied too.
Evaluation evaluate(models::Model& model, const data::DataSource& source, const Task& task,
                    int64_t batch_size, Precision precision = Precision::kFloat32,
                    int64_t num_classes = 0, const EvaluationRanks& ranks = {});

}  // namespace moelab::train
