// The layout of a run directory and the files in it, in one place:
//   config.yaml                the run's resolved config
//   metrics.jsonl              one JSON object per line (see trainer.h for the kinds)
//   checkpoints/step-NNNNNNNN/ one checkpoint per saved step (checkpoint.h)
// Naming, listing, the newest and best valid checkpoints, retention, and reading and writing
// the metrics file. What goes into a checkpoint is the trainer's business.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace moelab::train {

inline constexpr const char* kCheckpointDir = "checkpoints";
inline constexpr const char* kMetricsFile = "metrics.jsonl";
inline constexpr const char* kRunConfigFile = "config.yaml";
/// A text run's tokenizer (data/tokenizer.h), beside its config.
inline constexpr const char* kTokenizerDir = "tokenizer";

/// "step-00000060".
std::string checkpoint_name(int64_t step);

/// RUN/checkpoints/step-NNNNNNNN.
std::string checkpoint_path(const std::string& run_dir, int64_t step);

/// Checkpoint directories of a run (complete or not), oldest first.
std::vector<std::string> checkpoint_dirs(const std::string& run_dir);

struct CheckpointScan {
  std::string latest;                 // the newest checkpoint that verifies; "" if none does
  std::vector<std::string> skipped;   // one line per newer checkpoint passed over: "PATH: why"
};

/// Verifies a run's checkpoints newest first until one passes: its manifest (checksum, types),
/// every file's size and CRC-32, and a metadata step equal to its directory's. With
/// `move_damaged`, each one that fails is renamed step-N.damaged (the step is written again when
/// training comes round to it); otherwise it is only reported.
CheckpointScan scan_checkpoints(const std::string& run_dir, bool move_damaged = false);

/// The newest checkpoint directory of a run that verifies, or "" if none does.
std::string latest_checkpoint(const std::string& run_dir);

/// Removes the temporary directories of checkpoint writes that a kill interrupted.
void remove_temporary_checkpoints(const std::string& run_dir);

/// The run's best checkpoint (by the monitored metric, as the newest valid checkpoint records
/// it) if it is kept and verifies, else "".
std::string best_checkpoint(const std::string& run_dir);

/// Whether `run_dir` already holds a run (metrics or checkpoints).
bool holds_run(const std::string& run_dir);

/// A new run's directory with its config.yaml (`config_text`); ConfigError if `run_dir` holds a
/// run already or cannot be created.
void create_run_directory(const std::string& run_dir, const std::string& config_text);

/// Deletes all but the newest `keep_last` checkpoints, never the one named `keep` (the best).
void prune_checkpoints(const std::string& run_dir, int64_t keep_last, const std::string& keep);

/// Appends one line to RUN/metrics.jsonl.
void append_metrics(const std::string& run_dir, const nlohmann::json& line);

/// Every line of RUN/metrics.jsonl (empty if there is none); DataError naming the file and the
/// line for one that is not JSON, except a last line without its newline (an append a kill
/// cut short), which is left out.
std::vector<nlohmann::json> read_metrics(const std::string& run_dir);

/// Keeps only the lines with step <= `step` (a resumed run rewrites what came after its
/// checkpoint). The file is rewritten to a temporary one, fsynced and renamed, so a kill at any
/// moment leaves the old lines or the new ones.
void truncate_metrics(const std::string& run_dir, int64_t step);

}  // namespace moelab::train
