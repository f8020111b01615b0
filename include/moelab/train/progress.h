// What a training run prints while it runs: on a terminal, one progress bar redrawn in place with
// the running loss and the estimated time left; otherwise (a log file, CI) one plain line per log
// interval, so logs stay readable.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

namespace moelab::train {

enum class ConsoleMode { kSilent, kLines, kProgressBar };

/// kProgressBar when stdout is a terminal, else kLines.
ConsoleMode console_mode_for_stdout();

/// 1234567 -> "1,234,567".
std::string format_thousands(int64_t n);

/// "h:mm:ss" (or "m:ss" under an hour); "?" for a negative or non-finite value.
std::string format_clock(double seconds);

/// "[########............]  40/200  20%  loss 0.4321  0:12<0:48" with a bar `width` cells wide;
/// the estimate of the time left assumes the rate so far.
std::string format_progress_bar(int64_t step, int64_t total_steps, double loss, double elapsed_s,
                                int width = 24);

}  // namespace moelab::train
