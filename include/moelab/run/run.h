// Runs as the tools use them: start one from a resolved config, resume one from its newest valid
// checkpoint, evaluate a checkpoint on its data (or another data set), export one for other
// tools. Everything here assembles parts from a config (run_config.h) and hands them to the
// layers below; none of it trains or scores by itself.
//
// Export layout (OUT_DIR):
//   model.safetensors  every parameter and buffer under its module path, e.g.
//                      moe0.router.gate.weight (E, D), moe0.experts.w_in
//                      (E, 2F, D: gate rows [0, F), up rows [F, 2F)), moe0.experts.w_out
//                      (E, D, F); the header's __metadata__ names the format and the model
//   config.json        {"format": "moelab-export", "format_version": 2, "moelab_version",
//                       "model": the model section, "data": the data section, "task",
//                       "step", "source_checkpoint" (relative to the run directory),
//                       "class_names", "input_normalization": {"mean": [...], "std": [...]}
//                       per channel (absent when the data set applies none),
//                       "resolved_sizes": widths the options leave to rounding (a cnn's
//                       stage_channels and hidden_units after its width_multiplier),
//                       "tensors": [{"name", "dtype", "shape"}, ...] (the resolved widths)}
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

#include "moelab/train/evaluation.h"
#include "moelab/train/federated.h"
#include "moelab/train/trainer.h"

namespace moelab::run {

inline constexpr const char* kExportFormat = "moelab-export";
inline constexpr int kExportFormatVersion = 2;

/// A new run in `run_dir` from a resolved config; ConfigError if the directory holds a run.
/// With a `collective` of several processes, every rank calls it and trains its data-parallel
/// share (rank 0 writes the run directory).
std::unique_ptr<train::Trainer> start_run(const YAML::Node& resolved, const std::string& run_dir,
                                          std::shared_ptr<Collective> collective = nullptr);

/// Continues the run in `run_dir` from its newest valid checkpoint. `overrides` (key=value)
/// may change only train::resume_overridable_keys(), e.g. train.max_steps=400. With a
/// `collective`, rank 0 picks the checkpoint and every rank resumes from it, whatever number
/// of processes wrote it.
std::unique_ptr<train::Trainer> resume_run(const std::string& run_dir,
                                           const std::vector<std::string>& overrides = {},
                                           std::shared_ptr<Collective> collective = nullptr);

/// A new federated run (the config's federated.clients >= 1): clients simulated in this process,
/// or with a `collective` of several processes spread over them (train/federated.h).
std::unique_ptr<train::FederatedTrainer> start_federated_run(const YAML::Node& resolved,
                                                             const std::string& run_dir,
                                                             std::shared_ptr<Collective> collective = nullptr);
/// Continues a federated run from its newest valid checkpoint (its last round), on any number of
/// processes.
std::unique_ptr<train::FederatedTrainer> resume_federated_run(const std::string& run_dir,
                                                              std::shared_ptr<Collective> collective = nullptr);
/// Whether the run in `run_dir` (its config.yaml) is federated.
bool is_federated_run(const std::string& run_dir);

/// A checkpoint directory given as itself; a run directory as its best checkpoint (if kept) or,
/// with `prefer_latest` or without a best one, its newest. CheckpointError if there is none.
std::string resolve_checkpoint(const std::string& run_dir_or_checkpoint, bool prefer_latest = false);

struct CheckpointEvaluation {
  std::string checkpoint;
  int64_t step = 0;
  std::string split;  // "test" where the data set has one, else "val"
  std::shared_ptr<train::Task> task;
  train::Evaluation result;
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

/// Writes a moe_decoder checkpoint in the layout Hugging Face transformers loads
/// (models/hugging_face.h): OUT_DIR/model.safetensors, config.json, generation_config.json and
/// the run's tokenizer (tokenizer/). Returns config.json's content.
nlohmann::json export_hugging_face(const std::string& run_dir_or_checkpoint, const std::string& out_dir,
                                   bool prefer_latest = false);

/// A checkpoint's model with its weights, and the run config it was trained with.
struct LoadedCheckpoint {
  std::string directory;
  int64_t step = 0;
  YAML::Node config;
  std::shared_ptr<models::Model> model;
};

/// Loads the checkpoint resolve_checkpoint picks, building the model from the run's config
/// (with `files` and `overrides` stacked on it); CheckpointError if the weights do not fit.
LoadedCheckpoint load_checkpoint_model(const std::string& run_dir_or_checkpoint, bool prefer_latest = false,
                                       const std::vector<std::string>& files = {},
                                       const std::vector<std::string>& overrides = {});

/// A trained language model and its tokenizer, for generation.
struct LoadedLanguageModel {
  std::string checkpoint;
  int64_t step = 0;
  std::shared_ptr<models::Model> model;
  std::shared_ptr<const data::Tokenizer> tokenizer;
};

/// Loads the checkpoint of a run (its best, or newest with prefer_latest) whose model is a
/// moe_decoder, and the run's tokenizer; ConfigError if the model is not a language model.
LoadedLanguageModel load_language_model(const std::string& run_dir_or_checkpoint, bool prefer_latest = false);

}  // namespace moelab::run
