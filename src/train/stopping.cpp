#include "moelab/train/stopping.h"

#include <atomic>
#include <cctype>
#include <cmath>
#include <csignal>

#include "moelab/config/fields.h"
#include "moelab/util/errors.h"

namespace moelab::train {

template <typename V>
void visit(V& v, MonitorOptions& o) {
  v.field("metric", o.metric());
  v.field("mode", o.mode());
  v.field("min_delta", o.min_delta());
  v.field("patience", o.patience());
  v.field("keep_best", o.keep_best());
  v.field("restore_best", o.restore_best());
}
MOELAB_DEFINE_OPTIONS_YAML(MonitorOptions)

void validate(const MonitorOptions& options, const std::string& where) {
  // The metric is checked against the task's (Trainer), which this layer does not know.
  if (options.mode() != "auto" && options.mode() != "min" && options.mode() != "max") {
    throw ConfigError(where + ".mode: expected auto, min or max, got '" + options.mode() + "'");
  }
  if (!(options.min_delta() >= 0)) throw ConfigError(where + ".min_delta: must be >= 0");
  if (options.patience() < 0) throw ConfigError(where + ".patience: must be >= 0");
  if (options.restore_best() && !options.keep_best()) {
    throw ConfigError(where + ".restore_best: needs keep_best: true (the best weights are read "
                      "back from the best checkpoint)");
  }
}

bool EarlyStopping::update(double value, int64_t step) {
  // The trainer resolves "auto" from the task; left unresolved it means min (a loss).
  const double sign = options_.mode() == "max" ? -1.0 : 1.0;
  const bool improved = !has_best() || sign * (best_value_ - value) > options_.min_delta();
  if (improved) {
    best_value_ = value;
    best_step_ = step;
    since_best_ = 0;
  } else {
    ++since_best_;
  }
  return improved;
}

bool EarlyStopping::should_stop() const {
  return options_.patience() > 0 && since_best_ >= options_.patience();
}

nlohmann::json EarlyStopping::state() const {
  return {{"best_value", best_value_}, {"best_step", best_step_}, {"evals_since_best", since_best_}};
}

void EarlyStopping::load_state(const nlohmann::json& state) {
  best_value_ = state.value("best_value", 0.0);
  best_step_ = state.value("best_step", int64_t{-1});
  since_best_ = state.value("evals_since_best", int64_t{0});
}

double parse_duration(const std::string& text, const std::string& where) {
  auto fail = [&] {
    return ConfigError(where + ": '" + text +
                       "' is not a duration; write e.g. 90, 45s, 30m, 12h, 2d or 1h30m");
  };
  double total = 0;
  size_t i = 0;
  if (text.empty()) return 0;
  while (i < text.size()) {
    size_t end = i;
    while (end < text.size() && (std::isdigit(static_cast<unsigned char>(text[end])) || text[end] == '.')) ++end;
    if (end == i) throw fail();
    double number = 0;
    try {
      number = std::stod(text.substr(i, end - i));
    } catch (const std::exception&) {
      throw fail();
    }
    size_t unit_end = end;
    while (unit_end < text.size() && std::isalpha(static_cast<unsigned char>(text[unit_end]))) ++unit_end;
    const std::string unit = text.substr(end, unit_end - end);
    double scale = 0;
    if (unit.empty() || unit == "s") scale = 1;
    else if (unit == "ms") scale = 1e-3;
    else if (unit == "m" || unit == "min") scale = 60;
    else if (unit == "h") scale = 3600;
    else if (unit == "d") scale = 86400;
    else throw fail();
    if (unit.empty() && (i != 0 || unit_end != text.size())) throw fail();  // "90" alone only
    total += number * scale;
    i = unit_end;
  }
  if (!std::isfinite(total)) throw fail();
  return total;
}

namespace {

std::atomic<bool> g_stop_requested{false};

extern "C" void on_stop_signal(int signal_number) {
  if (g_stop_requested.exchange(true)) {
    std::signal(signal_number, SIG_DFL);
    std::raise(signal_number);
  }
}

}  // namespace

void install_stop_signal_handlers() {
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
}

bool stop_requested() { return g_stop_requested.load(); }
void request_stop() { g_stop_requested.store(true); }
void clear_stop_request() { g_stop_requested.store(false); }

}  // namespace moelab::train
