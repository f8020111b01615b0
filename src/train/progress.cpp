#include "moelab/train/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

namespace moelab::train {

ConsoleMode console_mode_for_stdout() {
  return ::isatty(STDOUT_FILENO) ? ConsoleMode::kProgressBar : ConsoleMode::kLines;
}

std::string format_thousands(int64_t n) {
  const std::string digits = std::to_string(n < 0 ? -n : n);
  std::string out = n < 0 ? "-" : "";
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string format_clock(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto total = static_cast<int64_t>(std::llround(seconds));
  const int64_t h = total / 3600, m = total / 60 % 60, s = total % 60;
  return h > 0 ? fmt::format("{}:{:02}:{:02}", h, m, s) : fmt::format("{}:{:02}", m, s);
}

std::string format_progress_bar(int64_t step, int64_t total_steps, double loss, double elapsed_s,
                                int width) {
  const double fraction =
      total_steps > 0 ? std::clamp(static_cast<double>(step) / total_steps, 0.0, 1.0) : 0.0;
  const int filled = static_cast<int>(fraction * width);
  const double left = step > 0 ? elapsed_s / step * (total_steps - step) : -1.0;
  const int digits = static_cast<int>(std::to_string(total_steps).size());
  return fmt::format("[{}{}] {:>{}}/{} {:3.0f}%  loss {:.4f}  {}<{}", std::string(filled, '#'),
                     std::string(width - filled, '.'), step, digits, total_steps,
                     100.0 * fraction, loss, format_clock(elapsed_s), format_clock(left));
}

}  // namespace moelab::train
