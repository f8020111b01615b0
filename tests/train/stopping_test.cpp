#include <gtest/gtest.h>

#include <csignal>

#include "moelab/train/progress.h"
#include "moelab/train/stopping.h"
#include "moelab/util/errors.h"
#include "support/fixtures.h"

using namespace moelab::train;

TEST(EarlyStoppingTest, MinModeNeedsMoreThanMinDeltaAndStopsAfterPatience) {
  EarlyStopping stopping(MonitorOptions().mode("min").min_delta(0.1).patience(2));
  EXPECT_FALSE(stopping.has_best());
  EXPECT_TRUE(stopping.update(1.0, 10));
  EXPECT_FALSE(stopping.update(0.95, 20));  // better, but by less than min_delta
  EXPECT_FALSE(stopping.should_stop());
  EXPECT_TRUE(stopping.update(0.85, 30));  // 0.15 below the best: a new best, count reset
  EXPECT_EQ(stopping.best_step(), 30);
  EXPECT_DOUBLE_EQ(stopping.best_value(), 0.85);
  EXPECT_FALSE(stopping.update(0.9, 40));
  EXPECT_FALSE(stopping.should_stop());
  EXPECT_FALSE(stopping.update(0.8, 50));
  EXPECT_TRUE(stopping.should_stop());
}

TEST(EarlyStoppingTest, MaxModeAndStateRoundTrip) {
  EarlyStopping stopping(MonitorOptions().metric("val_accuracy").mode("max").patience(1));
  EXPECT_TRUE(stopping.update(0.5, 1));
  EXPECT_TRUE(stopping.update(0.6, 2));
  EXPECT_FALSE(stopping.update(0.6, 3));  // equal is not better
  EXPECT_TRUE(stopping.should_stop());
  EarlyStopping restored(MonitorOptions().metric("val_accuracy").mode("max").patience(1));
  restored.load_state(stopping.state());
  EXPECT_EQ(restored.best_step(), 2);
  EXPECT_DOUBLE_EQ(restored.best_value(), 0.6);
  EXPECT_TRUE(restored.should_stop());
  // patience 0 never stops.
  EarlyStopping never{MonitorOptions()};
  never.update(1.0, 1);
  for (int i = 0; i < 10; ++i) never.update(2.0, 2 + i);
  EXPECT_FALSE(never.should_stop());
}

TEST(EarlyStoppingTest, RejectsUnknownMode) {
  EXPECT_EQ(moelab::testing::error_message<moelab::ConfigError>(
                [] { validate(MonitorOptions().mode("lowest"), "train.monitor"); }),
            "train.monitor.mode: expected auto, min or max, got 'lowest'");
  EXPECT_THROW(validate(MonitorOptions().mode("lowest"), "m"), moelab::ConfigError);
  EXPECT_THROW(validate(MonitorOptions().patience(-1), "m"), moelab::ConfigError);
}

TEST(DurationTest, ParsesUnitsAndSums) {
  EXPECT_DOUBLE_EQ(parse_duration("", "t"), 0);
  EXPECT_DOUBLE_EQ(parse_duration("90", "t"), 90);
  EXPECT_DOUBLE_EQ(parse_duration("45s", "t"), 45);
  EXPECT_DOUBLE_EQ(parse_duration("30m", "t"), 1800);
  EXPECT_DOUBLE_EQ(parse_duration("12h", "t"), 43200);
  EXPECT_DOUBLE_EQ(parse_duration("2d", "t"), 172800);
  EXPECT_DOUBLE_EQ(parse_duration("1h30m", "t"), 5400);
  EXPECT_DOUBLE_EQ(parse_duration("1.5h", "t"), 5400);
  EXPECT_DOUBLE_EQ(parse_duration("250ms", "t"), 0.25);
  for (const char* bad : {"12 hours", "h", "-5m", "1x", "10 ", "1h30"}) {
    EXPECT_THROW(parse_duration(bad, "train.max_time"), moelab::ConfigError) << bad;
  }
  EXPECT_EQ(moelab::testing::error_message<moelab::ConfigError>(
                [] { parse_duration("soon", "train.max_time"); }),
            "train.max_time: 'soon' is not a duration; write e.g. 90, 45s, 30m, 12h, 2d or 1h30m");
}

TEST(StopSignalTest, SignalSetsTheFlagInsteadOfKilling) {
  clear_stop_request();
  install_stop_signal_handlers();
  EXPECT_FALSE(stop_requested());
  std::raise(SIGTERM);
  EXPECT_TRUE(stop_requested());
  clear_stop_request();
  std::raise(SIGINT);
  EXPECT_TRUE(stop_requested());
  clear_stop_request();
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
}

TEST(ProgressTest, FormatsClockAndBar) {
  EXPECT_EQ(format_clock(0), "0:00");
  EXPECT_EQ(format_clock(75.4), "1:15");
  EXPECT_EQ(format_clock(3725), "1:02:05");
  EXPECT_EQ(format_clock(-1), "?");
  // 40 of 200 steps in 12 s: 20 %, 48 s left at that rate.
  EXPECT_EQ(format_progress_bar(40, 200, 0.43214, 12.0, 10),
            "[##........]  40/200  20%  loss 0.4321  0:12<0:48");
  EXPECT_EQ(format_progress_bar(0, 5, 1.0, 0.0, 4), "[....] 0/5   0%  loss 1.0000  0:00<?");
  EXPECT_EQ(format_progress_bar(5, 5, 0.5, 3.0, 4), "[####] 5/5 100%  loss 0.5000  0:03<0:00");
}
