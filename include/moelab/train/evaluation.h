// Using what a run produced: the loss and accuracy of a model on a labelled set, a checkpoint
// evaluated on its data set (or another one), and a checkpoint exported for other tools.
//
// Export layout (OUT_DIR):
//   model.safetensors  every parameter and buffer under its module path, e.g.
//                      moe0.router.gate.weight (E, D), moe0.experts.w_in
//                      (E, 2F, D: gate rows [0, F), up rows [F, 2F)), moe0.experts.w_out
//                      (E, D, F); the header's __metadata__ names the format and the model
//   config.json        {"format": "moelab-export", "format_version": 1, "moelab_version",
//                       "model": the model section, "data": the data section, "step",
//                       "source_checkpoint", "tensors": [{"name", "dtype", "shape"}, ...]}
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "moelab/analysis/routing.h"
#include "moelab/data/dataset.h"
#include "moelab/models/model.h"
#include "moelab/util/runtime.h"

namespace moelab::train {

inline constexpr const char* kExportFormat = "moelab-export";
inline constexpr int kExportFormatVersion = 1;

struct Evaluation {
  double loss = 0;      // mean cross-entropy of the task (aux losses excluded)
  double accuracy = 0;
  int64_t samples = 0;
  /// With routing analysis, per MoE layer: (classes, E) counts of (class, expert) assignments
  /// and each expert's samples and their loss.
  std::vector<at::Tensor> class_expert;
  std::vector<analysis::ExpertTally> expert_loss;
};

/// The model in eval mode, without gradients, over `set` in batches of `batch_size`. With
/// `num_classes` > 0 the routing of every sample is tallied too.
Evaluation evaluate(models::Model& model, const data::LabelledSet& set, int64_t batch_size,
                    Precision precision = Precision::kFloat32, int64_t num_classes = 0);

/// A checkpoint directory given as itself; a run directory as its best checkpoint (if kept) or,
/// with `prefer_latest` or without a best one, its newest. CheckpointError if there is none.
std::string resolve_checkpoint(const std::string& run_dir_or_checkpoint, bool prefer_latest = false);

struct CheckpointEvaluation {
  std::string checkpoint;
  int64_t step = 0;
  std::string split;  // "test" where the data set has one, else "val"
  Evaluation result;
};

/// Evaluates a checkpoint on the data its config names, after stacking `files` and `overrides`
/// on that config (e.g. another data set). CheckpointError if the weights do not fit the model.
CheckpointEvaluation evaluate_checkpoint(const std::string& run_dir_or_checkpoint,
                                         const std::vector<std::string>& files,
                                         const std::vector<std::string>& overrides,
                                         bool prefer_latest = false);

/// Writes OUT_DIR/model.safetensors and OUT_DIR/config.json (layout above) and returns the
/// config.json content. The weights are loaded into the model first, so an export always fits.
nlohmann::json export_checkpoint(const std::string& run_dir_or_checkpoint,
                                 const std::string& out_dir, bool prefer_latest = false);

}  // namespace moelab::train
