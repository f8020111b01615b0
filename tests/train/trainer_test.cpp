#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <csignal>
#include <sstream>
#include <thread>
#include <unistd.h>

#include "moelab/run/run.h"
#include "moelab/run/run_config.h"
#include "moelab/io/file.h"
#include "moelab/io/safetensors.h"
#include "moelab/train/checkpoint.h"
#include "moelab/train/run_directory.h"
#include "moelab/train/schedule.h"
#include "moelab/train/stopping.h"
#include "moelab/train/trainer.h"
#include "moelab/config/config.h"
#include "moelab/util/errors.h"
#include "support/fixtures.h"
#include "support/image_files.h"

namespace fs = std::filesystem;
using namespace moelab::train;

namespace {

class TrainerTest : public moelab::testing::TempDirTest {
 protected:
  std::string dir(const std::string& name) const { return path(name); }

  // A tiny run: noisy routing (so the RNG state matters), AdamW, cosine schedule with warmup,
  // gradient accumulation and clipping.
  static YAML::Node tiny_config(int64_t max_steps) {
    return moelab::run::resolve_run_config(
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

  static void expect_same_weights(const std::string& checkpoint_a, const std::string& checkpoint_b) {
    auto a = moelab::io::load_safetensors(checkpoint_a + "/model.safetensors");
    auto b = moelab::io::load_safetensors(checkpoint_b + "/model.safetensors");
    ASSERT_EQ(a.tensors.size(), b.tensors.size());
    for (const auto& [name, tensor] : a.tensors) {
      EXPECT_TRUE(torch::equal(tensor, b.tensors.at(name))) << name;
    }
  }

  static std::vector<nlohmann::json> lines_of_kind(const std::string& run_dir, const std::string& kind) {
    std::vector<nlohmann::json> out;
    for (auto& line : metrics(run_dir)) {
      if (line["kind"] == kind) out.push_back(line);
    }
    return out;
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
  auto trainer_run = moelab::run::start_run(tiny_config(40), dir("run"));
  Trainer& trainer = *trainer_run;
  auto summary = trainer.run();
  EXPECT_EQ(summary.steps, 40);
  auto lines = metrics(dir("run"));
  ASSERT_GE(lines.size(), 8u);
  EXPECT_EQ(lines.front()["kind"], "train");
  EXPECT_LT(lines_of_kind(dir("run"), "eval").back()["val_loss"].get<double>(),
            lines.front()["loss"].get<double>());
  EXPECT_EQ(lines.front()["moe_layers"].size(), 2u);
  EXPECT_EQ(lines.front()["moe_layers"][0]["usage"].size(), 4u);
  EXPECT_EQ(lines.front()["moe_layers"][0]["expert_loss"].size(), 4u);
  // One line per finished epoch (540 training samples: 16 micro-batches of 32, 8 steps),
  // counting every sample's two experts.
  const auto epochs = lines_of_kind(dir("run"), "epoch");
  ASSERT_EQ(epochs.size(), 5u);
  double assignments = 0;
  for (const auto& n : epochs[0]["moe_layers"][0]["samples"]) assignments += n.get<double>();
  EXPECT_EQ(assignments, 16 * 32 * 2);
  // The finished run is scored on its held-out split (no test split here: validation, 60
  // samples), with class x expert counts.
  const nlohmann::json test = lines.back();
  EXPECT_EQ(test["kind"], "test");
  EXPECT_EQ(test["split"], "val");
  EXPECT_EQ(test["samples"], 60);
  EXPECT_EQ(test["class_names"].size(), 3u);
  int64_t cells = 0;
  for (const auto& row : test["moe_layers"][1]["class_expert"]) {
    for (const auto& count : row) cells += count.get<int64_t>();
  }
  EXPECT_EQ(cells, 60 * 2);
  EXPECT_GE(test["moe_layers"][0]["mutual_information"].get<double>(), 0.0);
  EXPECT_TRUE(fs::exists(dir("run") + "/config.yaml"));
  EXPECT_EQ(latest_checkpoint(dir("run")), dir("run") + "/checkpoints/step-00000040");
}

TEST_F(TrainerTest, ResumeIsBitwiseExact) {
  {
    auto straight_run = moelab::run::start_run(tiny_config(40), dir("straight"));
    Trainer& straight = *straight_run;
    straight.run();
  }
  {
    auto first_half_run = moelab::run::start_run(tiny_config(40), dir("resumed"));
    Trainer& first_half = *first_half_run;
    first_half.run(/*stop_at_step=*/20);
  }
  // Something a crashed run could leave behind: a metric line past the checkpoint.
  std::ofstream(dir("resumed") + "/metrics.jsonl", std::ios::app) << R"({"kind":"train","step":21})" << "\n";
  auto resumed = moelab::run::resume_run(dir("resumed"));
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
    auto trainer_run = moelab::run::start_run(tiny_config(5), dir("run"));
    Trainer& trainer = *trainer_run;
    trainer.run();
  }
  EXPECT_THROW(moelab::run::start_run(tiny_config(5), dir("run")), moelab::ConfigError);
  fs::create_directories(dir("empty"));
  EXPECT_THROW(moelab::run::resume_run(dir("empty")), moelab::CheckpointError);
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
  auto trainer_run = moelab::run::start_run(config, dir("run"));
  Trainer& trainer = *trainer_run;
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

TEST_F(TrainerTest, EarlyStoppingStopsAfterPatienceAndKeepsTheBestCheckpoint) {
  YAML::Node config = tiny_config(40);
  config["train"]["eval_every"] = 5;
  config["train"]["keep_last"] = 1;
  config["train"]["monitor"]["min_delta"] = 100.0;  // nothing improves on the first evaluation
  config["train"]["monitor"]["patience"] = 2;
  auto trainer_run = moelab::run::start_run(config, dir("run"));
  Trainer& trainer = *trainer_run;
  const TrainSummary summary = trainer.run();
  EXPECT_EQ(summary.stop_reason, StopReason::kEarlyStopping);
  EXPECT_EQ(summary.steps, 15);
  EXPECT_EQ(summary.best_step, 5);
  EXPECT_EQ(lines_of_kind(dir("run"), "eval").size(), 3u);
  // The last checkpoint (keep_last 1) plus the best one.
  EXPECT_TRUE(fs::exists(dir("run") + "/checkpoints/step-00000005"));
  EXPECT_TRUE(fs::exists(dir("run") + "/checkpoints/step-00000015"));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir("run") + "/checkpoints"), fs::directory_iterator{}), 2);
  EXPECT_EQ(best_checkpoint(dir("run")), dir("run") + "/checkpoints/step-00000005");
  // The early-stopping state is in the checkpoint: a resume stops again at once, unless it
  // raises the patience.
  const TrainSummary again = moelab::run::resume_run(dir("run"))->run();
  EXPECT_EQ(again.stop_reason, StopReason::kEarlyStopping);
  EXPECT_EQ(again.steps, 15);
  EXPECT_EQ(moelab::run::resume_run(dir("run"), {"train.monitor.patience=3"})->run().steps, 20);
}

TEST_F(TrainerTest, KeepsTheLastKPlusTheBest) {
  YAML::Node config = tiny_config(20);
  config["train"]["eval_every"] = 5;
  config["train"]["checkpoint_every"] = 5;
  config["train"]["keep_last"] = 2;
  config["train"]["monitor"]["metric"] = "val_accuracy";
  config["train"]["monitor"]["mode"] = "max";
  config["train"]["monitor"]["min_delta"] = 2.0;  // accuracy cannot improve by 2: step 5 stays best
  moelab::run::start_run(config, dir("run"))->run();
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir("run") + "/checkpoints")) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"step-00000005", "step-00000015", "step-00000020"}));
}

TEST_F(TrainerTest, RestoreBestScoresTheTestSplitWithTheBestWeights) {
  YAML::Node config = tiny_config(20);
  config["train"]["eval_every"] = 5;
  config["train"]["monitor"]["min_delta"] = 100.0;  // step 5 stays the best
  config["train"]["monitor"]["restore_best"] = true;
  const TrainSummary summary = moelab::run::start_run(config, dir("run"))->run();
  EXPECT_EQ(summary.steps, 20);
  const auto tests = lines_of_kind(dir("run"), "test");
  ASSERT_EQ(tests.size(), 1u);
  EXPECT_EQ(tests[0]["step"], 20);
  EXPECT_EQ(tests[0]["weights_step"], 5);
  // The same numbers as scoring the step-5 checkpoint on its own; not the last step's.
  const auto best = moelab::run::evaluate_checkpoint(dir("run") + "/checkpoints/step-00000005", {}, {});
  const auto last = moelab::run::evaluate_checkpoint(dir("run") + "/checkpoints/step-00000020", {}, {});
  EXPECT_EQ(tests[0]["loss"].get<double>(), best.result.metrics.values.at("loss"));
  EXPECT_NE(tests[0]["loss"].get<double>(), last.result.metrics.values.at("loss"));

  config["train"]["monitor"]["keep_best"] = false;
  EXPECT_THROW(
      {
        try {
          moelab::run::start_run(config, dir("refused"));
        } catch (const moelab::ConfigError& e) {
          EXPECT_NE(std::string(e.what()).find("train.monitor.restore_best: needs keep_best"), std::string::npos)
              << e.what();
          throw;
        }
      },
      moelab::ConfigError);
}

TEST_F(TrainerTest, TimeLimitStopsWithACheckpointAndResumeFinishesExactly) {
  {
    auto straight_run = moelab::run::start_run(tiny_config(30), dir("straight"));
    Trainer& straight = *straight_run;
    straight.run();
  }
  YAML::Node config = tiny_config(30);
  config["train"]["max_time"] = "1ms";
  auto limited_run = moelab::run::start_run(config, dir("limited"));
  Trainer& limited = *limited_run;
  const TrainSummary summary = limited.run();
  EXPECT_EQ(summary.stop_reason, StopReason::kTimeLimit);
  EXPECT_GE(summary.steps, 1);
  EXPECT_LT(summary.steps, 30);
  EXPECT_EQ(latest_checkpoint(dir("limited")), summary.checkpoint);
  EXPECT_EQ(verify_checkpoint(summary.checkpoint)["metadata"]["step"], summary.steps);
  // Without a longer limit the resumed run stops again at once...
  const TrainSummary again = moelab::run::resume_run(dir("limited"))->run();
  EXPECT_EQ(again.stop_reason, StopReason::kTimeLimit);
  EXPECT_EQ(again.steps, summary.steps);
  // ...with one it finishes, on exactly the weights of the uninterrupted run.
  auto resumed = moelab::run::resume_run(dir("limited"), {"train.max_time=1h"});
  EXPECT_EQ(resumed->run().stop_reason, StopReason::kCompleted);
  expect_same_weights(dir("straight") + "/checkpoints/step-00000030",
                      dir("limited") + "/checkpoints/step-00000030");
  EXPECT_EQ(lines_of_kind(dir("straight"), "eval"), lines_of_kind(dir("limited"), "eval"));
}

TEST_F(TrainerTest, SigtermFinishesTheStepCheckpointsAndResumesExactly) {
  {
    auto straight_run = moelab::run::start_run(tiny_config(60), dir("straight"));
    Trainer& straight = *straight_run;
    straight.run();
  }
  clear_stop_request();
  install_stop_signal_handlers();
  auto interrupted_run = moelab::run::start_run(tiny_config(60), dir("interrupted"));
  Trainer& interrupted = *interrupted_run;
  // The signal comes from another thread once training is under way (the first metric line).
  std::thread sender([&] {
    while (!fs::exists(dir("interrupted") + "/metrics.jsonl")) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ::kill(::getpid(), SIGTERM);
  });
  const TrainSummary summary = interrupted.run();
  sender.join();
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  clear_stop_request();
  ASSERT_EQ(summary.stop_reason, StopReason::kSignal);
  EXPECT_GE(summary.steps, 5);
  EXPECT_LT(summary.steps, 60);
  EXPECT_EQ(latest_checkpoint(dir("interrupted")), summary.checkpoint);
  EXPECT_EQ(verify_checkpoint(summary.checkpoint)["metadata"]["step"], summary.steps);

  auto resumed = moelab::run::resume_run(dir("interrupted"));
  EXPECT_EQ(resumed->step(), summary.steps);
  EXPECT_EQ(resumed->run().steps, 60);
  expect_same_weights(dir("straight") + "/checkpoints/step-00000060",
                      dir("interrupted") + "/checkpoints/step-00000060");
  EXPECT_EQ(lines_of_kind(dir("straight"), "eval"), lines_of_kind(dir("interrupted"), "eval"));
}

TEST_F(TrainerTest, EpochsSetTheStepCountAndEvaluateAtEachEpochEnd) {
  // 600 samples, 540 for training: 16 micro-batches of 32 per epoch, 8 steps of 2.
  YAML::Node config = tiny_config(1000);
  config["train"]["epochs"] = 2;
  config["train"]["eval_every"] = 0;
  config["train"]["eval_each_epoch"] = true;
  auto trainer_run = moelab::run::start_run(config, dir("run"));
  Trainer& trainer = *trainer_run;
  EXPECT_EQ(trainer.total_steps(), 16);
  EXPECT_EQ(trainer.run().steps, 16);
  std::vector<int64_t> eval_steps;
  for (const auto& line : lines_of_kind(dir("run"), "eval")) eval_steps.push_back(line["step"]);
  EXPECT_EQ(eval_steps, (std::vector<int64_t>{8, 16}));
}

TEST_F(TrainerTest, Bf16AutocastTrainsWithFloat32Weights) {
  YAML::Node config = tiny_config(30);
  config["train"]["precision"] = "bf16";
  auto trainer_run = moelab::run::start_run(config, dir("run"));
  Trainer& trainer = *trainer_run;
  const TrainSummary summary = trainer.run();
  EXPECT_EQ(summary.skipped_steps, 0);
  EXPECT_LT(summary.val.values.at("loss"), lines_of_kind(dir("run"), "train").front()["loss"].get<double>());
  for (const auto& p : trainer.model().parameters()) EXPECT_EQ(p.scalar_type(), at::kFloat);
  config["train"]["precision"] = "fp16";
  EXPECT_EQ(moelab::testing::error_message<moelab::ConfigError>(
                [&] { moelab::run::start_run(config, dir("other")); }),
            "train.precision: unknown precision 'fp16'; expected fp32 or bf16");
}

TEST_F(TrainerTest, ResumeChangesOnlyLimits) {
  {
    auto trainer_run = moelab::run::start_run(tiny_config(10), dir("run"));
    Trainer& trainer = *trainer_run;
    trainer.run();
  }
  EXPECT_EQ(moelab::testing::error_message<moelab::ConfigError>(
                [&] { moelab::run::resume_run(dir("run"), {"train.optimizer.lr=0.5"}); })
                .rfind("train.optimizer.lr: cannot change on resume", 0),
            0u);
  auto longer = moelab::run::resume_run(dir("run"), {"train.max_steps=15"});
  EXPECT_EQ(longer->run().steps, 15);
  EXPECT_EQ(moelab::config::load_file(dir("run") + "/config.yaml")["train"]["max_steps"].as<int>(), 15);
}

// A step limit given on the command line to a run that trains for epochs would be ignored: refused,
// when starting and when resuming. A config holding both (a dumped one lists every key) is not.
TEST_F(TrainerTest, RefusesAStepLimitThatEpochsWouldOverride) {
  const std::vector<std::string> files;
  const std::vector<std::string> epochs = {"data.num_samples=200", "train.epochs=2"};
  auto with = [&](std::vector<std::string> overrides, const std::string& extra) {
    overrides.push_back(extra);
    return overrides;
  };
  EXPECT_EQ(moelab::testing::error_message<moelab::ConfigError>([&] {
              moelab::run::resolve_run_config(files, with(epochs, "train.max_steps=20"));
            }),
            "train.max_steps=20: has no effect while train.epochs is 2 (the run trains for its "
            "epochs); give train.epochs=0 as well to train for a number of steps, or change "
            "train.epochs");
  // With train.epochs=0 after it, the limit holds.
  std::vector<std::string> steps = with(with(epochs, "train.max_steps=20"), "train.epochs=0");
  EXPECT_EQ(moelab::run::train_options(moelab::run::resolve_run_config(files, steps)).max_steps(),
            20);
  {
    YAML::Node config = moelab::run::resolve_run_config(files, epochs);
    EXPECT_EQ(config["train"]["max_steps"].as<int>(), 200);  // both limits in the tree: accepted
    auto trainer_run = moelab::run::start_run(config, dir("epochs"));
    trainer_run->run();
  }
  EXPECT_NE(moelab::testing::error_message<moelab::ConfigError>([&] {
              moelab::run::resume_run(dir("epochs"), {"train.max_steps=20"});
            }).find("train.max_steps=20: has no effect while train.epochs is 2"),
            std::string::npos);
  EXPECT_EQ(moelab::run::resume_run(dir("epochs"), {"train.epochs=3"})->run().steps,
            3 * (180 / 64));  // 200 samples less 10% for validation, batches of 64
}

TEST_F(TrainerTest, ProgressLinesGoToTheConsole) {
  auto trainer_run = moelab::run::start_run(tiny_config(10), dir("run"));
  Trainer& trainer = *trainer_run;
  std::ostringstream console;
  trainer.set_console(ConsoleMode::kLines, console);
  trainer.run();
  EXPECT_NE(console.str().find("step 5/10  loss "), std::string::npos) << console.str();
  EXPECT_NE(console.str().find("eval step 10: val loss "), std::string::npos) << console.str();
}

TEST_F(TrainerTest, CheckpointsOnTheClockToo) {
  YAML::Node config = tiny_config(6);
  config["train"]["checkpoint_every_minutes"] = 1e-9;  // due after every step
  config["train"]["keep_last"] = 10;
  moelab::run::start_run(config, dir("run"))->run();
  EXPECT_EQ(std::distance(fs::directory_iterator(dir("run") + "/checkpoints"), fs::directory_iterator{}), 6);
}

TEST_F(TrainerTest, ResNet18TrainsOnCifarFilesWithAugmentation) {
  // CIFAR-10 files in the binary format: label 0 images are bright in the red plane, label 1 in
  // the blue plane, with a per-record texture; crops and flips keep the colour, so a few steps of
  // a narrow ResNet-18 must learn it.
  const std::string data_dir = dir("cifar");
  fs::create_directories(data_dir);
  auto write = [&](const std::string& name, size_t records, size_t offset) {
    std::vector<std::vector<uint8_t>> labels;
    for (size_t r = 0; r < records; ++r) labels.push_back({static_cast<uint8_t>((r + offset) % 2)});
    moelab::testing::write_cifar_file(data_dir + "/" + name, labels, [&](size_t r, int c, int y, int x) {
      const bool bright = (c == 0 && labels[r][0] == 0) || (c == 2 && labels[r][0] == 1);
      return static_cast<uint8_t>((bright ? 150 : 40) + (r * 13 + y * 7 + x * 3) % 60);
    });
  };
  for (int b = 1; b <= 5; ++b) write("data_batch_" + std::to_string(b) + ".bin", 24, b);
  write("test_batch.bin", 40, 0);
  auto config = moelab::run::resolve_run_config(
      {}, {"model.name=resnet18", "model.width=4", "data.name=cifar10", "data.root=" + data_dir,
           "train.max_steps=12", "train.batch_size=20", "train.val_fraction=0.1",
           "train.log_every=4", "train.eval_every=0", "train.optimizer.lr=0.01"});
  ASSERT_TRUE(config["data"]["augment"].as<bool>());  // CIFAR's default: crop + flip
  const TrainSummary summary = moelab::run::start_run(config, dir("run"))->run();
  ASSERT_TRUE(summary.tested);
  EXPECT_EQ(lines_of_kind(dir("run"), "test").back()["split"], "test");
  EXPECT_EQ(lines_of_kind(dir("run"), "test").back()["samples"], 40);
  EXPECT_GE(summary.test.values.at("accuracy"), 0.9);
  EXPECT_LT(summary.final_train_loss, lines_of_kind(dir("run"), "train").front()["loss"].get<double>());
}

// Never lose a run (issue 16): a damaged newest checkpoint is moved aside, the run resumes from
// the one before, writes the damaged step again, and ends bitwise equal to a straight run.
TEST_F(TrainerTest, ADamagedNewestCheckpointIsMovedAsideAndWrittenAgain) {
  YAML::Node config = tiny_config(12);
  config["train"]["checkpoint_every"] = 4;
  moelab::run::start_run(config, dir("straight"))->run();
  moelab::run::start_run(config, dir("run"))->run();
  const std::string newest = dir("run") + "/checkpoints/step-00000012";
  {
    std::fstream file(newest + "/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(200);
    file.put('\x7f');
  }
  // A leftover of a killed checkpoint write.
  fs::create_directories(dir("run") + "/checkpoints/.step-00000099.tmp");
  auto resumed = moelab::run::resume_run(dir("run"));
  EXPECT_EQ(resumed->step(), 10);  // the kept best (evaluated at step 10) is the newest valid one
  EXPECT_TRUE(fs::is_directory(newest + ".damaged"));
  EXPECT_FALSE(fs::exists(dir("run") + "/checkpoints/.step-00000099.tmp"));
  resumed->run();
  verify_checkpoint(newest);  // written again
  expect_same_weights(dir("straight") + "/checkpoints/step-00000012", newest);
  EXPECT_EQ(metrics(dir("straight")), metrics(dir("run")));
}

TEST_F(TrainerTest, AnEditedManifestIsDamagedAndNoCheckpointNamesEveryCandidate) {
  YAML::Node config = tiny_config(4);
  config["train"]["checkpoint_every"] = 2;
  moelab::run::start_run(config, dir("run"))->run();
  const std::string manifest_path = dir("run") + "/checkpoints/step-00000004/manifest.json";
  nlohmann::json manifest;
  std::ifstream(manifest_path) >> manifest;
  // The step edited with the checksum left as it was: the manifest's own checksum fails.
  manifest["metadata"]["step"] = -5;
  std::ofstream(manifest_path) << manifest.dump(2);
  const std::string checksum_error = moelab::testing::error_message<moelab::CheckpointError>(
      [&] { verify_checkpoint(dir("run") + "/checkpoints/step-00000004"); });
  EXPECT_NE(checksum_error.find("manifest.json: checksum mismatch (edited or damaged)"),
            std::string::npos) << checksum_error;
  // The step edited with a matching checksum: the directory's step decides.
  manifest["metadata"]["step"] = 600;
  manifest["checksum"] = manifest_checksum(manifest);
  std::ofstream(manifest_path) << manifest.dump(2);
  const CheckpointScan scan = scan_checkpoints(dir("run"));
  EXPECT_EQ(scan.latest, dir("run") + "/checkpoints/step-00000002");
  ASSERT_EQ(scan.skipped.size(), 1u);
  EXPECT_NE(scan.skipped[0].find("metadata.step 600 is not the directory's step 4"),
            std::string::npos) << scan.skipped[0];
  // Damage the other one too: no checkpoint, and the message says why for each.
  std::ofstream(dir("run") + "/checkpoints/step-00000002/manifest.json") << "{";
  const std::string none = moelab::testing::error_message<moelab::CheckpointError>(
      [&] { moelab::run::resume_run(dir("run")); });
  EXPECT_NE(none.find("no complete checkpoint to resume from"), std::string::npos) << none;
  EXPECT_NE(none.find("step-00000004/manifest.json: metadata.step 600"), std::string::npos) << none;
  EXPECT_NE(none.find("step-00000002/manifest.json: not valid JSON"), std::string::npos) << none;
  EXPECT_EQ(moelab::testing::error_message<moelab::CheckpointError>(
                [&] { moelab::run::resume_run(dir("nowhere")); }),
            dir("nowhere") + ": no such run directory");
}

TEST_F(TrainerTest, MetricsSurviveACutAppendAndNameABadLine) {
  moelab::run::start_run(tiny_config(10), dir("run"))->run();
  const std::string path = dir("run") + "/metrics.jsonl";
  const size_t lines = read_metrics(dir("run")).size();
  std::ofstream(path, std::ios::app) << R"({"kind":"train","st)";  // a kill mid-append
  EXPECT_EQ(read_metrics(dir("run")).size(), lines);
  truncate_metrics(dir("run"), 5);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  for (const auto& line : read_metrics(dir("run"))) EXPECT_LE(line["step"].get<int64_t>(), 5);
  std::ofstream(path, std::ios::app) << "garbage\n" << R"({"kind":"eval","step":6})" << "\n";
  const std::string message = moelab::testing::error_message<moelab::DataError>(
      [&] { read_metrics(dir("run")); });
  EXPECT_NE(message.find("metrics.jsonl:"), std::string::npos) << message;
  EXPECT_NE(message.find(": not a JSON object"), std::string::npos) << message;
}

TEST(CheckedFileTest, AFullDiskIsAnErrorNamingThePathAndTheCause) {
  const std::string message = moelab::testing::error_message<moelab::IoError>([] {
    moelab::io::CheckedFile file("/dev/full");
    file.write(std::string(1 << 16, 'x'));
    file.finish();
  });
  EXPECT_EQ(message, "/dev/full: write failed: No space left on device");
}

// A full disk (ENOSPC) or an I/O error (EIO) at any checked write of a run, injected through
// io::inject_fault: the run ends with an IoError naming the path and the cause, leaves no
// temporary file or directory, every checkpoint on disk still verifies, and a resume finishes the
// run bitwise equal to one that never failed.
TEST_F(TrainerTest, AFullDiskAtAnyWriteCostsAtMostTheStepsSinceTheLastCheckpoint) {
  YAML::Node config = tiny_config(8);
  config["train"]["checkpoint_every"] = 4;
  config["train"]["keep_last"] = 1;
  moelab::io::clear_fault();
  moelab::run::start_run(config, dir("straight"))->run();
  const int64_t operations = moelab::io::operations_counted();
  ASSERT_GT(operations, 60);  // run config, metrics appends and two checkpoints of 4 files

  int64_t failures = 0, resumed = 0;
  for (int64_t at = 1; at <= operations; ++at) {
    const std::string run = dir("fault" + std::to_string(at));
    moelab::io::Fault fault;
    fault.at = at;
    fault.error = at % 7 == 0 ? EIO : ENOSPC;
    moelab::io::inject_fault(fault);
    std::string message;
    try {
      moelab::run::start_run(config, run)->run();
    } catch (const moelab::IoError& e) {
      message = e.what();
    }
    moelab::io::clear_fault();
    ASSERT_FALSE(message.empty()) << "operation " << at << " failed and the run went on";
    ++failures;
    EXPECT_EQ(message.rfind(run, 0), 0u) << message;  // names the path first
    EXPECT_NE(message.find(at % 7 == 0 ? "Input/output error" : "No space left on device"),
              std::string::npos) << message;
    for (const auto& entry : fs::recursive_directory_iterator(run)) {
      EXPECT_EQ(entry.path().string().find(".tmp"), std::string::npos)
          << "operation " << at << " left " << entry.path();
    }
    bool any_checkpoint = false;
    if (fs::is_directory(run + "/checkpoints")) {
      for (const auto& entry : fs::directory_iterator(run + "/checkpoints")) {
        EXPECT_NO_THROW(verify_checkpoint(entry.path().string())) << "operation " << at;
        any_checkpoint = true;
      }
    }
    if (!any_checkpoint) continue;  // the disk filled before the first checkpoint
    moelab::run::resume_run(run)->run();
    ++resumed;
    expect_same_weights(dir("straight") + "/checkpoints/step-00000008",
                        run + "/checkpoints/step-00000008");
    const auto expected = metrics(dir("straight")), got = metrics(run);
    ASSERT_EQ(expected.size(), got.size()) << "operation " << at;
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_EQ(expected[i], got[i]) << "operation " << at << ", metrics line " << i + 1;
    }
    fs::remove_all(run);
  }
  EXPECT_EQ(failures, operations);
  EXPECT_GT(resumed, operations / 3);
}

// `moelab bench train`'s split (issue 15): the timed steps are those after the warm-up, each
// part of a step is charged, evaluations and checkpoints are kept apart.
TEST_F(TrainerTest, AProfileSplitsTheTimedStepsIntoTheirParts) {
  auto trainer = moelab::run::start_run(tiny_config(12), dir("run"));
  TrainProfile profile;
  profile.skip_steps = 2;
  trainer->set_profile(&profile);
  trainer->run();
  EXPECT_EQ(profile.steps, 10);
  for (double part : {profile.step.data, profile.step.forward, profile.step.backward,
                      profile.step.checks, profile.step.optimizer, profile.step.observer}) {
    EXPECT_GT(part, 0.0);
  }
  EXPECT_GT(profile.step.forward, profile.step.data);
  EXPECT_GT(profile.evaluation, 0.0);  // eval_every 10, and the last step
  EXPECT_GT(profile.checkpoint, 0.0);  // the last step
  EXPECT_GE(profile.bookkeeping, 0.0);
}
