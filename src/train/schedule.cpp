#include "moelab/train/schedule.h"

#include <algorithm>
#include <cmath>

#include "moelab/config/fields.h"
#include "moelab/util/errors.h"

namespace moelab::config {
template <>
struct EnumNames<train::ScheduleKind> {
  static train::ScheduleKind parse(const std::string& s) { return train::parse_schedule_kind(s); }
  static std::string print(train::ScheduleKind v) { return train::to_string(v); }
};
}  // namespace moelab::config

namespace moelab::train {

template <typename V>
void visit(V& v, ScheduleOptions& o) {
  v.field("kind", o.kind());
  v.field("warmup_steps", o.warmup_steps());
  v.field("step_size", o.step_size());
  v.field("gamma", o.gamma());
  v.field("min_lr_ratio", o.min_lr_ratio());
}
MOELAB_DEFINE_OPTIONS_YAML(ScheduleOptions)

void validate(const ScheduleOptions& o, const std::string& where) {
  auto require = [&](bool ok, const std::string& key, const std::string& rule, double value) {
    if (!ok) {
      throw ConfigError(where + "." + key + ": must be " + rule + ", got " +
                        config::shortest_text(value));
    }
  };
  require(o.warmup_steps() >= 0, "warmup_steps", ">= 0", static_cast<double>(o.warmup_steps()));
  require(o.step_size() >= 1, "step_size", ">= 1", static_cast<double>(o.step_size()));
  require(o.gamma() > 0 && o.gamma() <= 1, "gamma", "in (0, 1]", o.gamma());
  require(o.min_lr_ratio() >= 0 && o.min_lr_ratio() <= 1, "min_lr_ratio", "in [0, 1]",
          o.min_lr_ratio());
}

ScheduleKind parse_schedule_kind(const std::string& name) {
  if (name == "constant") return ScheduleKind::kConstant;
  if (name == "step") return ScheduleKind::kStep;
  if (name == "cosine") return ScheduleKind::kCosine;
  if (name == "linear") return ScheduleKind::kLinear;
  throw ConfigError("unknown schedule '" + name + "'; expected constant, step, cosine or linear");
}

std::string to_string(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::kConstant: return "constant";
    case ScheduleKind::kStep: return "step";
    case ScheduleKind::kCosine: return "cosine";
    case ScheduleKind::kLinear: return "linear";
  }
  return "?";
}

double learning_rate_at(int64_t step, int64_t total_steps, double base_lr,
                        const ScheduleOptions& o) {
  if (o.warmup_steps() > 0 && step < o.warmup_steps()) {
    return base_lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup_steps());
  }
  const int64_t after = step - o.warmup_steps();
  const int64_t span = std::max<int64_t>(1, total_steps - o.warmup_steps() - 1);
  const double progress = std::clamp(static_cast<double>(after) / span, 0.0, 1.0);
  const double floor = o.min_lr_ratio() * base_lr;
  switch (o.kind()) {
    case ScheduleKind::kConstant: return base_lr;
    case ScheduleKind::kStep:
      return base_lr * std::pow(o.gamma(), static_cast<double>(after / o.step_size()));
    case ScheduleKind::kCosine:
      return floor + (base_lr - floor) * 0.5 * (1.0 + std::cos(M_PI * progress));
    case ScheduleKind::kLinear: return floor + (base_lr - floor) * (1.0 - progress);
  }
  return base_lr;
}

}  // namespace moelab::train
