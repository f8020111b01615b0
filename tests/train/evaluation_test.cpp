#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "moelab/run/run.h"
#include "moelab/run/run_config.h"
#include "moelab/io/safetensors.h"
#include "moelab/train/evaluation.h"
#include "moelab/train/trainer.h"
#include "moelab/util/errors.h"
#include "support/fixtures.h"

namespace fs = std::filesystem;
using namespace moelab::train;

namespace {

class EvaluationTest : public moelab::testing::TempDirTest {
 protected:
  // A finished 20-step run with a validation split, shared by the tests of this file.
  std::string trained_run() {
    const std::string run = path("run");
    auto trainer = moelab::run::start_run(moelab::run::resolve_run_config(
                        {}, {"model.input_dim=8", "model.num_classes=3", "model.moe.d_model=16",
                             "model.moe.d_ff=24", "model.moe.num_experts=4", "data.num_samples=300",
                             "data.input_dim=8", "data.num_classes=3", "data.num_clusters=6",
                             "train.max_steps=20", "train.batch_size=16", "train.eval_every=10",
                             "train.log_every=10"}),
                    run);
    summary_ = trainer->run();
    return run;
  }
  TrainSummary summary_;
};

}  // namespace

TEST_F(EvaluationTest, BatchedEvaluationMatchesOneNaivePass) {
  auto model = moelab::run::build_model(moelab::run::resolve_run_config(
      {}, {"model.input_dim=5", "model.num_classes=3", "model.moe.d_model=8", "model.moe.d_ff=8"}));
  const at::Tensor inputs = torch::randn({23, 5}), labels = torch::randint(0, 3, {23}, at::kLong);
  const moelab::data::TensorSet set(
      moelab::data::Batch({{moelab::data::kInputs, inputs}, {moelab::data::kTargets, labels}}));
  model->eval();
  at::Tensor logits = model->forward_inputs(inputs).outputs.detach();
  const double loss = at::cross_entropy_loss(logits, labels).item<double>();
  const double accuracy = logits.argmax(-1).eq(labels).to(at::kDouble).mean().item<double>();
  model->train();
  const auto task = make_task("classification");
  const Evaluation result = evaluate(*model, set, *task, /*batch_size=*/7);  // 7 + 7 + 7 + 2
  EXPECT_NEAR(result.metric("loss"), loss, 1e-6);
  EXPECT_DOUBLE_EQ(result.metric("accuracy"), accuracy);
  EXPECT_EQ(result.samples(), 23);
  EXPECT_TRUE(model->is_training());  // restored
}

TEST_F(EvaluationTest, CheckpointEvaluationReproducesTheRunsLastEvaluation) {
  const std::string run = trained_run();
  const moelab::run::CheckpointEvaluation e = moelab::run::evaluate_checkpoint(run, {}, {}, /*prefer_latest=*/true);
  EXPECT_EQ(e.checkpoint, run + "/checkpoints/step-00000020");
  EXPECT_EQ(e.step, 20);
  EXPECT_EQ(e.split, "val");
  EXPECT_EQ(e.result.samples(), 30);
  EXPECT_NEAR(e.result.metric("loss"), summary_.val.values.at("loss"), 1e-9);
  EXPECT_DOUBLE_EQ(e.result.metric("accuracy"), summary_.val.values.at("accuracy"));
  // The run directory alone means its best checkpoint.
  EXPECT_EQ(moelab::run::resolve_checkpoint(run), best_checkpoint(run));
}

TEST_F(EvaluationTest, WeightsThatDoNotFitTheModelAreNamed) {
  const std::string run = trained_run();
  const std::string message = moelab::testing::error_message<moelab::CheckpointError>(
      [&] { moelab::run::evaluate_checkpoint(run, {}, {"model.moe.d_ff=32"}); });
  EXPECT_NE(message.find("moe0.experts.w_out"), std::string::npos) << message;
  EXPECT_NE(message.find("[4, 16, 24]"), std::string::npos) << message;
  EXPECT_THROW(moelab::run::evaluate_checkpoint(path("nowhere"), {}, {}), moelab::CheckpointError);
  EXPECT_THROW(moelab::run::evaluate_checkpoint(run, {}, {"model.moe.dff=32"}), moelab::ConfigError);
}

TEST_F(EvaluationTest, ExportWritesSafetensorsWhoseHeaderMatchesConfigJson) {
  const std::string run = trained_run();
  const nlohmann::json returned = moelab::run::export_checkpoint(run, path("export"), /*prefer_latest=*/true);
  nlohmann::json config;
  std::ifstream(path("export/config.json")) >> config;
  EXPECT_EQ(config, returned);
  EXPECT_EQ(config["format"], "moelab-export");
  EXPECT_EQ(config["format_version"], 2);
  EXPECT_EQ(config["source_checkpoint"], "checkpoints/step-00000020");  // no machine path
  EXPECT_EQ(config["task"], "classification");
  EXPECT_EQ(config["class_names"].size(), 3u);
  EXPECT_EQ(config["step"], 20);
  EXPECT_EQ(config["model"]["name"], "mlp_moe");
  EXPECT_EQ(config["model"]["moe"]["num_experts"], 4);

  // Read the header by hand, as another tool would: u64 little-endian length, then JSON.
  const std::string file = path("export/model.safetensors");
  std::ifstream in(file, std::ios::binary);
  unsigned char length_bytes[8];
  in.read(reinterpret_cast<char*>(length_bytes), 8);
  uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) header_length = header_length << 8 | length_bytes[i];
  std::string header_text(header_length, '\0');
  in.read(header_text.data(), static_cast<std::streamsize>(header_length));
  const nlohmann::json header = nlohmann::json::parse(header_text);
  EXPECT_EQ(header["__metadata__"]["format"], "moelab-export");

  const uint64_t data_size = fs::file_size(file) - 8 - header_length;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  ASSERT_EQ(header.size(), config["tensors"].size() + 1);
  for (const auto& tensor : config["tensors"]) {
    const auto& entry = header.at(tensor["name"].get<std::string>());
    EXPECT_EQ(entry["dtype"], tensor["dtype"]);
    EXPECT_EQ(entry["shape"], tensor["shape"]);
    uint64_t elements = 1;
    for (const auto& d : entry["shape"]) elements *= d.get<uint64_t>();
    const uint64_t begin = entry["data_offsets"][0], end = entry["data_offsets"][1];
    EXPECT_EQ(end - begin, elements * 4) << tensor["name"];  // every tensor here is F32
    ranges.emplace_back(begin, end);
  }
  std::sort(ranges.begin(), ranges.end());
  EXPECT_EQ(ranges.front().first, 0u);
  for (size_t i = 1; i < ranges.size(); ++i) EXPECT_EQ(ranges[i].first, ranges[i - 1].second);
  EXPECT_EQ(ranges.back().second, data_size);
  // The documented names.
  EXPECT_EQ(header["moe0.experts.w_in"]["shape"], nlohmann::json({4, 48, 16}));
  EXPECT_EQ(header["moe0.router.gate.weight"]["shape"], nlohmann::json({4, 16}));
}

TEST(RoutingAnalysisTest, MutualInformationAndTopClassesOnHandCases) {
  // Each class always goes to its own expert: I = H(class) = log 2.
  EXPECT_NEAR(moelab::train::mutual_information(torch::tensor({{5, 0}, {0, 5}}, at::kLong)),
              std::log(2.0), 1e-12);
  // 2 classes x 2 experts, counts {{3, 1}, {1, 3}}: p(c, e) = 3/8 on the diagonal, 1/8 off it,
  // every marginal 1/2, so I = 2 (3/8) log(3/2) + 2 (1/8) log(1/2) = 0.75 log 1.5 - 0.25 log 2.
  EXPECT_NEAR(moelab::train::mutual_information(torch::tensor({{3, 1}, {1, 3}}, at::kLong)),
              0.75 * std::log(1.5) - 0.25 * std::log(2.0), 1e-12);
  // Expert independent of class: I = 0.
  EXPECT_NEAR(moelab::train::mutual_information(torch::tensor({{2, 6}, {1, 3}}, at::kLong)), 0.0,
              1e-12);
  const auto top = moelab::train::top_classes(torch::tensor({{1, 0}, {3, 2}, {0, 2}}, at::kLong), 0, 5);
  ASSERT_EQ(top.size(), 2u);  // classes with no samples are left out
  EXPECT_EQ(top[0].first, 1);
  EXPECT_DOUBLE_EQ(top[0].second, 0.75);
}

TEST(RoutingAnalysisTest, TallyAndCountsSkipDroppedAssignments) {
  moelab::nn::RoutingStats stats;
  stats.tokens_per_expert = torch::zeros({3}, at::kLong);
  stats.indices = torch::tensor({{0, 2}, {1, 2}, {0, 1}}, at::kLong);
  stats.kept = torch::tensor({{true, true}, {true, false}, {true, true}});
  moelab::train::ExpertTally tally;
  tally.add(stats, torch::tensor({1.0, 2.0, 4.0}));
  const auto mean = tally.mean_loss();
  EXPECT_DOUBLE_EQ(mean[0], 2.5);  // samples 0 and 2
  EXPECT_DOUBLE_EQ(mean[1], 3.0);  // samples 1 and 2
  EXPECT_DOUBLE_EQ(mean[2], 1.0);  // sample 0 only: sample 1's choice was dropped
  const at::Tensor counts = moelab::train::class_expert_counts(
      stats, torch::tensor({1, 0, 1}, at::kLong), 2);
  EXPECT_TRUE(torch::equal(counts, torch::tensor({{0, 1, 0}, {2, 1, 1}}, at::kLong)));
  moelab::train::ExpertTally restored;
  restored.load_state(tally.state());
  EXPECT_EQ(restored.mean_loss(), mean);
}
