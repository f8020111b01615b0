// Learning-rate schedules as a pure function of the step, so resume needs no scheduler state:
// linear warmup from 0 over warmup_steps, then constant, step decay, cosine or linear decay to
// min_lr_ratio * lr at the last step.
#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <string>

namespace YAML {
class Node;
}

namespace moelab::train {

enum class ScheduleKind { kConstant, kStep, kCosine, kLinear };
ScheduleKind parse_schedule_kind(const std::string& name);  // constant | step | cosine | linear
std::string to_string(ScheduleKind kind);

struct ScheduleOptions {
  /// Shape after warmup. Default constant.
  TORCH_ARG(ScheduleKind, kind) = ScheduleKind::kConstant;
  /// Steps of linear warmup from 0 to the base rate, >= 0. Default 0.
  TORCH_ARG(int64_t, warmup_steps) = 0;
  /// step: multiply by gamma every step_size steps after warmup, >= 1. Default 100.
  TORCH_ARG(int64_t, step_size) = 100;
  /// step: the decay factor, in (0, 1]. Default 0.1.
  TORCH_ARG(double, gamma) = 0.1;
  /// cosine, linear: the final rate as a fraction of the base rate, in [0, 1]. Default 0.
  TORCH_ARG(double, min_lr_ratio) = 0.0;
};

YAML::Node to_yaml(const ScheduleOptions& options);
void from_yaml(const YAML::Node& node, ScheduleOptions& options, const std::string& where);

/// ConfigError naming `where`.KEY and the value for an option out of range (NaN included).
void validate(const ScheduleOptions& options, const std::string& where);

/// The learning rate for optimiser step `step` (0-based) of `total_steps`.
double learning_rate_at(int64_t step, int64_t total_steps, double base_lr,
                        const ScheduleOptions& options);

}  // namespace moelab::train
