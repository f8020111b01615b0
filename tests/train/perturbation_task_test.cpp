#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moelab/data/perturbation.h"
#include "moelab/train/task.h"
#include "moelab/util/errors.h"

using moelab::data::Batch;

namespace {

struct Scored {
  moelab::train::Metrics metrics;
  at::Tensor loss;
};

Scored score(const at::Tensor& basal, const at::Tensor& treated, const at::Tensor& predicted,
             const at::Tensor& cells = {}) {
  auto task = moelab::train::make_task("perturbation");
  Batch batch({{moelab::data::kBasal, basal}, {moelab::data::kTargets, treated}});
  if (cells.defined()) batch.set(moelab::data::kCellLine, cells);
  task->check_batch(batch);
  moelab::models::ModelOutput output;
  output.outputs = predicted;
  auto acc = task->accumulator();
  const at::Tensor loss = task->sample_loss(output, batch);
  acc->add(output, batch, loss);
  // The state round-trips exactly (a resumed run's lines are an uninterrupted run's).
  auto copy = task->accumulator();
  copy->load_state(acc->state());
  EXPECT_EQ(copy->result().values, acc->result().values);
  return {acc->result(), loss};
}

}  // namespace

TEST(PerturbationTaskTest, HandComputedMetricsOnDifferentialExpression) {
  // Sample 0: trueDE (1, 0, -1, 0), predDE (1, 1, 0, 0): r = 1 / sqrt(2), r^2 = 0.5 (4 genes <
  // 20, so every top-n is all genes). Sample 1: predDE = 2 x trueDE, r = 1. Sample 2: predDE
  // constant: no r, skipped and counted.
  const at::Tensor basal = torch::tensor({{1.0, 1.0, 1.0, 1.0}, {0.0, 0.0, 0.0, 0.0}, {5.0, 5.0, 5.0, 5.0}});
  const at::Tensor treated = basal + torch::tensor({{1.0, 0.0, -1.0, 0.0}, {1.0, 2.0, 3.0, 4.0}, {1.0, 0.0, 0.0, 0.0}});
  const at::Tensor predicted = basal + torch::tensor({{1.0, 1.0, 0.0, 0.0}, {2.0, 4.0, 6.0, 8.0}, {3.0, 3.0, 3.0, 3.0}});
  const Scored s = score(basal, treated, predicted, torch::tensor({0, 1, 1}, torch::kLong));
  // Per-sample MSE: (0 + 1 + 1 + 0) / 4 = 0.5; (1 + 4 + 9 + 16) / 4 = 7.5; (4 + 9 + 9 + 9) / 4 = 7.75.
  EXPECT_TRUE(torch::allclose(s.loss, torch::tensor({0.5, 7.5, 7.75})));
  EXPECT_NEAR(s.metrics.values.at("mse"), (0.5 + 7.5 + 7.75) / 3, 1e-9);
  EXPECT_NEAR(s.metrics.values.at("r2_top20"), (0.5 + 1.0) / 2, 1e-9);
  EXPECT_NEAR(s.metrics.values.at("r2_top80"), (0.5 + 1.0) / 2, 1e-9);
  EXPECT_NEAR(s.metrics.values.at("pearson_de"), (std::sqrt(0.5) + 1.0) / 2, 1e-9);
  EXPECT_EQ(s.metrics.details["skipped"]["r2_top20"].get<double>(), 1.0);
  EXPECT_EQ(s.metrics.samples, 3);
  // Per cell line: cell 0 holds sample 0 alone; cell 1 samples 1 and 2 (2 skipped).
  const auto& cells = s.metrics.details["per_cell_line"];
  EXPECT_NEAR(cells["0"]["r2_top20"].get<double>(), 0.5, 1e-9);
  EXPECT_NEAR(cells["1"]["r2_top20"].get<double>(), 1.0, 1e-9);
  EXPECT_NEAR(cells["1"]["mse"].get<double>(), (7.5 + 7.75) / 2, 1e-9);
  EXPECT_EQ(cells["1"]["skipped"]["pearson_de"].get<double>(), 1.0);
}

TEST(PerturbationTaskTest, TopGenesAreTheLargestTrueChanges) {
  // 100 genes: the first 20 change by 10..29 and are predicted exactly; the other 80 change by
  // a little and are predicted with the opposite sign. r2_top20 is 1, the wider scores are not.
  at::Tensor true_de = torch::cat({torch::arange(10, 30).to(torch::kDouble), torch::linspace(0.1, 0.2, 80, torch::kDouble)});
  at::Tensor pred_de = torch::cat({torch::arange(10, 30).to(torch::kDouble), -torch::linspace(0.1, 0.2, 80, torch::kDouble)});
  true_de[21] = -0.15;  // not constant outside the top 20
  const at::Tensor basal = torch::zeros({1, 100}, torch::kDouble);
  const Scored s = score(basal, true_de.unsqueeze(0), pred_de.unsqueeze(0));
  EXPECT_NEAR(s.metrics.values.at("r2_top20"), 1.0, 1e-12);
  EXPECT_LT(s.metrics.values.at("r2_top40"), 1.0);
  EXPECT_GT(s.metrics.values.at("r2_top40"), 0.9);  // the top 20 still dominate the variance
}

TEST(PerturbationTaskTest, RejectsDataWithoutBasalExpression) {
  auto task = moelab::train::make_task("perturbation");
  Batch batch({{moelab::data::kTargets, torch::zeros({2, 3})}});
  try {
    task->check_batch(batch);
    FAIL() << "no error";
  } catch (const moelab::DataError& e) {
    EXPECT_NE(std::string(e.what()).find("task perturbation: the data has no basal expression"), std::string::npos);
  }
  batch.set(moelab::data::kBasal, torch::zeros({2, 4}));
  EXPECT_THROW(task->check_batch(batch), moelab::DataError);
}
