#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "moelab/config/run_config.h"
#include "moelab/io/safetensors.h"
#include "moelab/train/checkpoint.h"
#include "moelab/train/schedule.h"
#include "moelab/train/trainer.h"
#include "moelab/util/errors.h"
#include "support/fixtures.h"

namespace fs = std::filesystem;
using namespace moelab::train;

namespace {

class TrainerTest : public moelab::testing::TempDirTest {
 protected:
  std::string dir(const std::string& name) const { return path(name); }

  // A tiny run: noisy routing (so the RNG state matters), AdamW, cosine schedule with warmup,
  // gradient accumulation and clipping.
  static YAML::Node tiny_config(int64_t max_steps) {
    return moelab::config::resolve_run_config(
        {}, {"model.input_dim=8", "model.num_classes=3", "model.num_layers=2",
             "model.moe.d_model=16", "model.moe.d_ff=32", "model.moe.num_experts=4",
             "model.moe.router.kind=noisy_top_k", "model.moe.router.top_k=2",
             "model.moe.aux.importance_load=0.01", "data.num_samples=600", "data.input_dim=8",
             "data.num_classes=3", "data.num_clusters=6", "data.cluster_std=2.0",
             "train.max_steps=" + std::to_string(max_steps), "train.batch_size=32",
             "train.grad_accumulation=2", "train.clip_grad_norm=1.0", "train.log_every=5",
             "train.eval_every=10", "train.schedule.kind=cosine", "train.schedule.warmup_steps=3",
             "train.optimizer.lr=0.01"});
  }

  static std::vector<nlohmann::json> metrics(const std::string& run_dir) {
    std::vector<nlohmann::json> lines;
    std::ifstream in(run_dir + "/metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line);
      j.erase("samples_per_s");  // wall-clock speed differs between runs
      lines.push_back(j);
    }
    return lines;
  }
};

}  // namespace

TEST(ScheduleTest, MatchesHandComputedRates) {
  auto o = ScheduleOptions().warmup_steps(4);
  EXPECT_DOUBLE_EQ(learning_rate_at(0, 100, 1.0, o), 0.25);
  EXPECT_DOUBLE_EQ(learning_rate_at(3, 100, 1.0, o), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate_at(50, 100, 1.0, o), 1.0);
  auto step = ScheduleOptions().kind(ScheduleKind::kStep).step_size(10).gamma(0.5);
  EXPECT_DOUBLE_EQ(learning_rate_at(9, 100, 2.0, step), 2.0);
  EXPECT_DOUBLE_EQ(learning_rate_at(25, 100, 2.0, step), 0.5);
  // cosine over steps 0..10 (span 10): halfway is the mean of base and floor.
  auto cosine = ScheduleOptions().kind(ScheduleKind::kCosine).min_lr_ratio(0.1);
  EXPECT_DOUBLE_EQ(learning_rate_at(0, 11, 1.0, cosine), 1.0);
  EXPECT_NEAR(learning_rate_at(5, 11, 1.0, cosine), 0.55, 1e-12);
  EXPECT_NEAR(learning_rate_at(10, 11, 1.0, cosine), 0.1, 1e-12);
  auto linear = ScheduleOptions().kind(ScheduleKind::kLinear);
  EXPECT_NEAR(learning_rate_at(5, 11, 1.0, linear), 0.5, 1e-12);
  EXPECT_THROW(parse_schedule_kind("exp"), moelab::ConfigError);
}

TEST_F(TrainerTest, LossFallsAndTheRunDirectoryIsComplete) {
  Trainer trainer(tiny_config(40), dir("run"));
  auto summary = trainer.run();
  EXPECT_EQ(summary.steps, 40);
  auto lines = metrics(dir("run"));
  ASSERT_GE(lines.size(), 8u);
  EXPECT_EQ(lines.front()["kind"], "train");
  EXPECT_LT(lines.back()["val_loss"].get<double>(), lines.front()["loss"].get<double>());
  EXPECT_EQ(lines.front()["moe_layers"].size(), 2u);
  EXPECT_EQ(lines.front()["moe_layers"][0]["usage"].size(), 4u);
  EXPECT_TRUE(fs::exists(dir("run") + "/config.yaml"));
  EXPECT_EQ(latest_checkpoint(dir("run")), dir("run") + "/checkpoints/step-00000040");
}

TEST_F(TrainerTest, ResumeIsBitwiseExact) {
  {
    Trainer straight(tiny_config(40), dir("straight"));
    straight.run();
  }
  {
    Trainer first_half(tiny_config(40), dir("resumed"));
    first_half.run(/*stop_at_step=*/20);
  }
  // Something a crashed run could leave behind: a metric line past the checkpoint.
  std::ofstream(dir("resumed") + "/metrics.jsonl", std::ios::app) << R"({"kind":"train","step":21})" << "\n";
  auto resumed = Trainer::resume(dir("resumed"));
  EXPECT_EQ(resumed->step(), 20);
  resumed->run();

  auto a = moelab::io::load_safetensors(dir("straight") + "/checkpoints/step-00000040/model.safetensors");
  auto b = moelab::io::load_safetensors(dir("resumed") + "/checkpoints/step-00000040/model.safetensors");
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (const auto& [name, tensor] : a.tensors) {
    EXPECT_TRUE(torch::equal(tensor, b.tensors.at(name))) << name;
  }
  EXPECT_EQ(metrics(dir("straight")), metrics(dir("resumed")));
}

TEST_F(TrainerTest, RefusesToOverwriteARunAndNeedsACheckpointToResume) {
  {
    Trainer trainer(tiny_config(5), dir("run"));
    trainer.run();
  }
  EXPECT_THROW(Trainer(tiny_config(5), dir("run")), moelab::ConfigError);
  fs::create_directories(dir("empty"));
  EXPECT_THROW(Trainer::resume(dir("empty")), moelab::CheckpointError);
  // A damaged newest checkpoint is skipped for the previous one... here there is none left.
  fs::resize_file(dir("run") + "/checkpoints/step-00000005/model.safetensors", 10);
  EXPECT_EQ(latest_checkpoint(dir("run")), "");
}

TEST_F(TrainerTest, NonFiniteStepsAreSkippedThenTheRunStopsWithItsStateSaved) {
  // A learning rate this large turns the weights infinite after the first update; every later
  // step is non-finite, skipped, and the third in a row aborts.
  YAML::Node config = tiny_config(20);
  config["train"]["optimizer"]["lr"] = 1e38;
  config["train"]["optimizer"]["name"] = "sgd";
  config["train"]["clip_grad_norm"] = 0.0;
  config["train"]["schedule"]["warmup_steps"] = 0;
  config["train"]["max_nonfinite_steps"] = 3;
  Trainer trainer(config, dir("run"));
  const std::string message =
      moelab::testing::error_message<moelab::TrainingError>([&] { trainer.run(); });
  EXPECT_NE(message.find("3 steps in a row had a non-finite loss or gradient"), std::string::npos)
      << message;
  EXPECT_NE(message.find("HINT: lower train.optimizer.lr"), std::string::npos);
  const int64_t stopped_at = trainer.step();
  EXPECT_GE(stopped_at, 1);
  int skips = 0;
  for (const auto& line : metrics(dir("run"))) skips += line["kind"] == "skip";
  EXPECT_EQ(skips, 3);
  const std::string saved = latest_checkpoint(dir("run"));
  EXPECT_NE(saved, "");
  auto manifest = verify_checkpoint(saved);
  EXPECT_EQ(manifest["metadata"]["step"], stopped_at);
  EXPECT_EQ(manifest["metadata"]["nonfinite_in_a_row"], 3);
}
