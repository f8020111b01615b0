// When a run stops before its last step: early stopping on a monitored evaluation metric, a
// wall-clock limit, and SIGINT/SIGTERM. Each is plain state the trainer checkpoints, so a resumed
// run stops where the uninterrupted one would have.
#pragma once

#include <torch/arg.h>

#include <nlohmann/json.hpp>

#include <string>

namespace YAML {
class Node;
}

namespace moelab::train {

struct MonitorOptions {
  /// Evaluation metric watched for keep-best and early stopping: val_ + any metric the task
  /// declares (val_loss, val_accuracy, val_r2, ...). Default val_loss.
  TORCH_ARG(std::string, metric) = "val_loss";
  /// min (lower is better), max, or auto (the direction the task declares for the metric).
  /// Default auto.
  TORCH_ARG(std::string, mode) = "auto";
  /// An evaluation improves on the best only by more than this, >= 0. Default 0.
  TORCH_ARG(double, min_delta) = 0.0;
  /// Evaluations without improvement before the run stops; 0 = never stop early. Default 0.
  TORCH_ARG(int64_t, patience) = 0;
  /// Keep the best checkpoint besides the last keep_last. Default true.
  TORCH_ARG(bool, keep_best) = true;
  /// Score the test split with the best evaluation's weights instead of the last step's (the
  /// test line's weights_step says which); needs keep_best. Default false.
  TORCH_ARG(bool, restore_best) = false;
};

YAML::Node to_yaml(const MonitorOptions& options);
void from_yaml(const YAML::Node& node, MonitorOptions& options, const std::string& where);

/// ConfigError (naming `where`) unless the mode is valid and the numbers in range.
void validate(const MonitorOptions& options, const std::string& where);

/// The monitored metric's best value so far and the evaluations since it improved.
class EarlyStopping {
 public:
  explicit EarlyStopping(MonitorOptions options) : options_(std::move(options)) {}

  /// Records one evaluation; true if it is a new best.
  bool update(double value, int64_t step);
  /// patience > 0 and that many evaluations in a row did not improve.
  bool should_stop() const;

  bool has_best() const { return best_step_ >= 0; }
  double best_value() const { return best_value_; }
  int64_t best_step() const { return best_step_; }
  int64_t evaluations_since_best() const { return since_best_; }

  nlohmann::json state() const;
  void load_state(const nlohmann::json& state);

 private:
  MonitorOptions options_;
  double best_value_ = 0;
  int64_t best_step_ = -1;
  int64_t since_best_ = 0;
};

/// Seconds in "90", "45s", "30m", "12h", "2d", "1h30m", "250ms"; "" means no limit (0).
/// ConfigError naming `where` for anything else or a negative value.
double parse_duration(const std::string& text, const std::string& where);

/// SIGINT and SIGTERM set a flag instead of killing the process; the trainer finishes its step,
/// checkpoints and returns. A second signal while the flag is set restores the default action,
/// so pressing Ctrl-C twice still kills a stuck process.
void install_stop_signal_handlers();
bool stop_requested();
/// Sets the flag as a signal would (also for tests and embedding applications).
void request_stop();
void clear_stop_request();

}  // namespace moelab::train
