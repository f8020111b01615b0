// The reshaped core: batches and data sources, tasks and their metrics, the reusable training
// step, optimizer parameter groups, weight loading, deep copies of models, and a regression run
// end to end.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "moelab/data/dataset.h"
#include "moelab/models/mlp_moe.h"
#include "moelab/run/run.h"
#include "moelab/run/run_config.h"
#include "moelab/train/checkpoint.h"
#include "moelab/train/optimizer.h"
#include "moelab/train/step.h"
#include "moelab/train/task.h"
#include "moelab/util/errors.h"
#include "support/fixtures.h"

using moelab::data::Batch;
using moelab::data::kInputs;
using moelab::data::kTargets;

namespace {

std::shared_ptr<moelab::models::Model> tiny_mlp(int64_t outputs = 3) {
  return moelab::run::build_model(moelab::run::resolve_run_config(
      {}, {"model.input_dim=5", "model.num_classes=" + std::to_string(outputs),
           "model.moe.d_model=8", "model.moe.d_ff=8", "model.num_layers=1"}));
}

}  // namespace

TEST(BatchTest, NamedTensorsRowsAndAClearErrorForAMissingOne) {
  Batch batch({{kInputs, torch::arange(12, at::kFloat).view({6, 2})},
               {kTargets, torch::arange(6, at::kLong)}});
  EXPECT_EQ(batch.size(), 6);
  const Batch picked = batch.rows(torch::tensor({4, 1}, at::kLong));
  EXPECT_TRUE(torch::equal(picked.at(kTargets), torch::tensor({4, 1}, at::kLong)));
  EXPECT_TRUE(torch::equal(batch.range(2, 2).at(kInputs), batch.at(kInputs).narrow(0, 2, 2)));
  EXPECT_FALSE(batch.get(moelab::data::kPaddingMask).defined());
  EXPECT_EQ(moelab::testing::error_message<moelab::DataError>([&] { batch.at("token_ids"); }),
            "batch: no tensor 'token_ids' (the batch has: inputs, targets); the data set does "
            "not provide what the model or task needs");
  EXPECT_THROW(moelab::data::TensorSet(Batch({{kInputs, torch::zeros({3, 2})}, {kTargets, torch::zeros({4})}})),
               moelab::DataError);
}

TEST(DataSourceTest, SubsetsMapRowsAndValidationSplitsAreSeeded) {
  auto all = std::make_shared<moelab::data::TensorSet>(Batch({{kInputs, torch::arange(10, at::kFloat)},
                                                      {kTargets, torch::arange(10, at::kLong)}}));
  // The default view subset (any source) and TensorSet's copy agree.
  const at::Tensor index = torch::tensor({7, 2, 5}, at::kLong);
  const auto view = all->moelab::data::DataSource::subset(index);
  const auto copy = all->subset(index);
  EXPECT_TRUE(torch::equal(view->rows(torch::tensor({2, 0}, at::kLong)).at(kTargets),
                           torch::tensor({5, 7}, at::kLong)));
  EXPECT_TRUE(torch::equal(view->range(0, 3).at(kInputs), copy->range(0, 3).at(kInputs)));
  moelab::data::Splits a, b;
  a.train = b.train = all;
  moelab::data::split_validation(a, 0.3, 4);
  moelab::data::split_validation(b, 0.3, 4);
  EXPECT_EQ(a.val->size(), 3);
  EXPECT_EQ(a.train->size(), 7);
  EXPECT_TRUE(torch::equal(a.val->range(0, 3).at(kTargets), b.val->range(0, 3).at(kTargets)));
  // Train and validation are disjoint and cover the set.
  const at::Tensor together = torch::cat({a.val->range(0, 3).at(kTargets),
                                          a.train->range(0, 7).at(kTargets)});
  EXPECT_TRUE(torch::equal(std::get<0>(together.sort()), torch::arange(10, at::kLong)));
  // The order of an epoch is a pure function of (seed, epoch).
  EXPECT_TRUE(torch::equal(moelab::data::epoch_permutation(3, 2, 50), moelab::data::epoch_permutation(3, 2, 50)));
  EXPECT_FALSE(torch::equal(moelab::data::epoch_permutation(3, 2, 50), moelab::data::epoch_permutation(3, 3, 50)));
}

TEST(TaskTest, RegressionMetricsMatchHandComputedValues) {
  const auto task = moelab::train::make_task("regression");
  // Two outputs, four samples. Output 0 predicts y + 1 (r = 1, MSE 1, MAE 1); output 1 predicts
  // the constant 0 (MSE = mean y^2).
  const at::Tensor y = torch::tensor({{1.0, 1.0}, {2.0, -1.0}, {3.0, 1.0}, {4.0, -1.0}});
  const at::Tensor p = torch::tensor({{2.0, 0.0}, {3.0, 0.0}, {4.0, 0.0}, {5.0, 0.0}});
  moelab::models::ModelOutput out;
  out.outputs = p;
  const Batch batch({{kInputs, torch::zeros({4, 1})}, {kTargets, y}});
  const at::Tensor sample_loss = task->sample_loss(out, batch);
  EXPECT_TRUE(torch::allclose(sample_loss, torch::tensor({1.0, 1.0, 1.0, 1.0})));
  // Two batches, one result: the sums carry over.
  moelab::models::ModelOutput rest;
  rest.outputs = p.narrow(0, 3, 1);
  auto exact = task->accumulator();
  moelab::models::ModelOutput first;
  first.outputs = p.narrow(0, 0, 3);
  exact->add(first, batch.range(0, 3), sample_loss.narrow(0, 0, 3));
  exact->add(rest, batch.range(3, 1), sample_loss.narrow(0, 3, 1));
  const moelab::train::Metrics m = exact->result();
  EXPECT_EQ(m.samples, 4);
  const auto& per = m.details["per_output"];
  EXPECT_DOUBLE_EQ(per["mse"][0].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(per["mse"][1].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(per["mae"][0].get<double>(), 1.0);
  EXPECT_NEAR(per["pearson"][0].get<double>(), 1.0, 1e-12);
  EXPECT_DOUBLE_EQ(per["pearson"][1].get<double>(), 0.0);  // constant prediction
  // R^2 = 1 - SSres/SStot: output 0: 1 - 4/5; output 1: 1 - 4/4.
  EXPECT_NEAR(per["r2"][0].get<double>(), 0.2, 1e-12);
  EXPECT_NEAR(per["r2"][1].get<double>(), 0.0, 1e-12);
  EXPECT_NEAR(m.values.at("r2"), 0.1, 1e-12);
  EXPECT_NEAR(m.values.at("mse"), 1.0, 1e-12);
  EXPECT_NEAR(m.values.at("loss"), 1.0, 1e-12);
  EXPECT_EQ(task->metric("r2").higher_is_better, true);
  EXPECT_EQ(moelab::testing::error_message<moelab::ConfigError>([&] { task->metric("accuracy"); }),
            "task regression: no metric 'accuracy' (it reports: loss, mse, mae, pearson, r2)");
  EXPECT_THROW(task->check_batch(Batch({{kTargets, torch::zeros({2}, at::kLong)}})), moelab::DataError);
  EXPECT_THROW(moelab::train::make_task("classification")->check_batch(Batch({{kTargets, y}})), moelab::DataError);
}

TEST(ModelTest, DeepCopyTrainsIndependentlyAndTheBatchReachesEveryMoELayer) {
  torch::manual_seed(0);
  auto model = tiny_mlp();
  auto copy = model->deep_copy();
  const at::Tensor x = torch::randn({4, 5});
  EXPECT_TRUE(torch::equal(model->forward_inputs(x).outputs, copy->forward_inputs(x).outputs));
  for (const auto& item : copy->named_parameters()) {
    EXPECT_NE(item.value().data_ptr(), model->named_parameters()[item.key()].data_ptr());
  }
  const at::Tensor before = model->forward_inputs(x).outputs.detach().clone();
  torch::optim::SGD sgd(copy->parameters(), torch::optim::SGDOptions(0.5));
  copy->forward_inputs(x).outputs.sum().backward();
  sgd.step();
  EXPECT_TRUE(torch::equal(model->forward_inputs(x).outputs.detach(), before));
  EXPECT_FALSE(torch::equal(copy->forward_inputs(x).outputs.detach(), before));
  // A padding mask in the batch reaches the MoE layers: masked samples are not routed.
  const Batch masked({{kInputs, x}, {moelab::data::kPaddingMask, torch::tensor({true, false, true, true})}});
  const moelab::models::ModelOutput out = model->forward(masked);
  EXPECT_EQ(out.moe_layers.at(0).stats.num_tokens, 3);
  // Token ids reach a hash router through the batch.
  auto hashed = moelab::run::build_model(moelab::run::resolve_run_config(
      {}, {"model.input_dim=5", "model.moe.d_model=8", "model.moe.d_ff=8", "model.num_layers=1",
           "model.moe.router.kind=hash", "model.moe.router.top_k=1"}));
  auto experts_for = [&](const at::Tensor& ids) {
    const Batch with_ids({{kInputs, x}, {moelab::data::kTokenIds, ids}});
    return hashed->forward(with_ids).moe_layers.at(0).stats.indices.view({-1});
  };
  // The expert follows the id alone: equal ids, equal experts, whatever the input row.
  const at::Tensor same = experts_for(torch::full({4}, 7, at::kLong));
  EXPECT_TRUE((same == same[0]).all().item<bool>()) << same;
  const at::Tensor spread = experts_for(torch::tensor({0, 1, 2, 3}, at::kLong));
  EXPECT_TRUE(torch::equal(spread, experts_for(torch::tensor({0, 1, 2, 3}, at::kLong))));
  EXPECT_GT(std::get<0>(at::_unique(spread)).numel(), 1) << spread;
}

TEST(OptimizerTest, GroupsByPatternFrozenParametersAreLeftOut) {
  auto model = tiny_mlp();
  moelab::train::OptimizerOptions options;
  options.lr(1e-2).weight_decay(0.1);
  options.groups().push_back(moelab::train::ParamGroupOptions().match("*.bias").weight_decay(0));
  options.groups().push_back(moelab::train::ParamGroupOptions().match("*router*").lr(1e-4));
  options.groups().push_back(moelab::train::ParamGroupOptions().match("input.*").frozen(true));
  const moelab::train::OptimizerSetup setup = moelab::train::build_optimizer(*model, options);
  ASSERT_EQ(setup.groups.size(), 3u);  // default, biases, router; the frozen group holds none
  EXPECT_EQ(setup.groups[0].match, "");
  EXPECT_EQ(setup.groups[1].match, "*.bias");
  EXPECT_DOUBLE_EQ(setup.groups[1].weight_decay, 0.0);
  EXPECT_DOUBLE_EQ(setup.groups[2].lr, 1e-4);
  // The first matching group wins: input.bias is a bias, not frozen.
  EXPECT_EQ(setup.frozen, (std::vector<std::string>{"input.weight"}));
  EXPECT_FALSE(model->named_parameters()["input.weight"].requires_grad());
  EXPECT_EQ(setup.optimizer->param_groups().size(), 3u);
  int64_t handed = 0;
  for (const auto& g : setup.groups) handed += static_cast<int64_t>(g.parameters.size());
  EXPECT_EQ(handed + 1, static_cast<int64_t>(model->parameters().size()));
  // The schedule scales every group alike.
  moelab::train::OptimizerSetup scheduled = moelab::train::build_optimizer(*tiny_mlp(), options);
  scheduled.set_learning_rate(5, 10, moelab::train::ScheduleOptions().warmup_steps(10));
  // Step 5 of a 10-step warmup: 6/10 of each group's rate.
  EXPECT_NEAR(scheduled.optimizer->param_groups()[2].options().get_lr(), 0.6e-4, 1e-12);
  EXPECT_NEAR(scheduled.optimizer->param_groups()[0].options().get_lr(), 0.6e-2, 1e-12);
  EXPECT_EQ(moelab::testing::error_message<moelab::ConfigError>([] {
              moelab::train::validate(moelab::train::OptimizerOptions().beta2(1.5), "train.optimizer");
            }),
            "train.optimizer.beta2: must be in [0, 1), got 1.5");
}

// The run's AdamW (one fused pass per float32 parameter) against LibTorch's AdamW: the same
// parameters and moments after several steps with weight decay in one group and not in the
// other, within float rounding, and a state LibTorch's AdamW reads (a checkpoint loads either way).
TEST(OptimizerTest, FusedAdamWFollowsLibTorchsAdamW) {
  torch::manual_seed(3);
  auto model = tiny_mlp();
  model->eval();  // no dropout: both copies see the same function
  auto reference = model->deep_copy();
  moelab::train::OptimizerOptions options;
  options.lr(3e-2).weight_decay(0.1).beta2(0.99);
  options.groups().push_back(moelab::train::ParamGroupOptions().match("*.bias").weight_decay(0));
  moelab::train::OptimizerSetup fused = moelab::train::build_optimizer(*model, options);
  std::vector<at::Tensor> decayed, plain;
  for (const auto& p : reference->named_parameters()) {
    (p.key().size() >= 5 && p.key().compare(p.key().size() - 5, 5, ".bias") == 0 ? plain : decayed).push_back(p.value());
  }
  torch::optim::AdamW libtorch({torch::optim::OptimizerParamGroup(decayed, std::make_unique<torch::optim::AdamWOptions>(
                                    torch::optim::AdamWOptions(3e-2).weight_decay(0.1).betas({0.9, 0.99}))),
                                torch::optim::OptimizerParamGroup(plain, std::make_unique<torch::optim::AdamWOptions>(
                                    torch::optim::AdamWOptions(3e-2).weight_decay(0).betas({0.9, 0.99})))},
                               torch::optim::AdamWOptions(3e-2));
  for (int step = 0; step < 4; ++step) {
    const at::Tensor x = torch::randn({6, 5});
    for (auto* m : {&model, &reference}) {
      (*m)->zero_grad();
      (*m)->forward(Batch({{kInputs, x}})).outputs.pow(2).sum().backward();
    }
    fused.optimizer->step();
    libtorch.step();
  }
  const auto expected = reference->named_parameters();
  for (const auto& p : model->named_parameters()) {
    EXPECT_TRUE(torch::allclose(p.value(), expected[p.key()], 1e-5, 1e-6)) << p.key();
    EXPECT_FALSE(torch::equal(p.value(), p.value().detach().clone().zero_())) << p.key();
    const auto& state = fused.optimizer->state();
    const auto found = state.find(moelab::train::optimizer_state_key(state, p.value()));
    ASSERT_NE(found, state.end()) << p.key();
    auto* adamw = dynamic_cast<torch::optim::AdamWParamState*>(found->second.get());
    ASSERT_NE(adamw, nullptr);
    EXPECT_EQ(adamw->step(), 4);
    const auto& reference_state = libtorch.state();
    const auto& other = static_cast<torch::optim::AdamWParamState&>(
        *reference_state.at(moelab::train::optimizer_state_key(reference_state, expected[p.key()])));
    EXPECT_TRUE(torch::allclose(adamw->exp_avg_sq(), other.exp_avg_sq(), 1e-5, 1e-9)) << p.key();
  }
}

TEST(TrainStepTest, OneStepOnAnyModelAndANonFiniteStepUpdatesNothing) {
  torch::manual_seed(1);
  auto model = tiny_mlp();
  auto task = moelab::train::make_task("classification");
  torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(0.1));
  const Batch batch({{kInputs, torch::randn({6, 5})}, {kTargets, torch::tensor({0, 1, 2, 0, 1, 2})}});
  moelab::train::StepOptions options;
  options.grad_accumulation = 2;
  int observed = 0;
  const at::Tensor before = model->named_parameters()["head.weight"].detach().clone();
  const moelab::train::StepResult result = moelab::train::train_step(
      *model, sgd, *task, [&] { return batch; }, options,
      [&](const moelab::train::MicroBatch& micro) {
        ++observed;
        EXPECT_EQ(micro.sample_loss.size(0), 6);
      });
  EXPECT_TRUE(result.finite);
  EXPECT_EQ(observed, 2);
  EXPECT_GT(result.task_loss_sum, 0);
  EXPECT_FALSE(torch::equal(model->named_parameters()["head.weight"], before));
  const at::Tensor after = model->named_parameters()["head.weight"].detach().clone();
  Batch poisoned = batch;
  poisoned.set(kInputs, torch::full({6, 5}, std::nan("")));
  const moelab::train::StepResult skipped =
      moelab::train::train_step(*model, sgd, *task, [&] { return poisoned; }, options);
  EXPECT_FALSE(skipped.finite);
  EXPECT_TRUE(torch::equal(model->named_parameters()["head.weight"], after));
}

// A step starts from no gradients (LibTorch 2.x's zero_grad() default; 1.13's zeroes them): a
// parameter that gets no gradient in a step, like an expert no row reached, is left alone by the
// optimizer; with zeroed gradients SGD's momentum would still move it.
TEST(TrainStepTest, AParameterWithoutAGradientInAStepIsLeftAlone) {
  torch::manual_seed(3);
  auto model = tiny_mlp();
  auto task = moelab::train::make_task("classification");
  const at::Tensor idle = torch::ones({4}).requires_grad_();
  std::vector<at::Tensor> parameters = model->parameters();
  parameters.push_back(idle);
  torch::optim::SGD sgd(parameters, torch::optim::SGDOptions(0.1).momentum(0.9));
  idle.mutable_grad() = torch::ones({4});
  sgd.step();  // the idle parameter now has momentum
  const at::Tensor before = idle.detach().clone();
  const Batch batch({{kInputs, torch::randn({6, 5})}, {kTargets, torch::tensor({0, 1, 2, 0, 1, 2})}});
  ASSERT_TRUE(moelab::train::train_step(*model, sgd, *task, [&] { return batch; },
                                        moelab::train::StepOptions())
                  .finite);
  EXPECT_FALSE(idle.grad().defined());
  EXPECT_TRUE(torch::equal(idle.detach(), before));
}

// Clipping and the finite check share one pass over the gradients: the update equals LibTorch's
// clip_grad_norm_ followed by the same SGD step, bit for bit, and a non-finite gradient under a
// finite loss still skips the step.
TEST(TrainStepTest, ClippingScalesAsLibTorchAndCatchesNonFiniteGradients) {
  torch::manual_seed(2);
  auto model = tiny_mlp();
  auto reference = model->deep_copy();
  auto task = moelab::train::make_task("classification");
  const Batch batch({{kInputs, torch::randn({6, 5}) * 30}, {kTargets, torch::tensor({0, 1, 2, 0, 1, 2})}});
  moelab::train::StepOptions clipped;
  clipped.clip_grad_norm = 0.05;
  torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(0.1));
  ASSERT_TRUE(moelab::train::train_step(*model, sgd, *task, [&] { return batch; }, clipped).finite);
  // The reference: gradients from a step that moves nothing, then LibTorch's clip and SGD's update.
  torch::optim::SGD still(reference->parameters(), torch::optim::SGDOptions(0.0));
  moelab::train::train_step(*reference, still, *task, [&] { return batch; }, moelab::train::StepOptions());
  const double norm = torch::nn::utils::clip_grad_norm_(reference->parameters(), 0.05);
  EXPECT_GT(norm, 0.05) << "the case must clip";
  {
    torch::NoGradGuard no_grad;
    for (auto& p : reference->parameters()) p.add_(p.grad(), -0.1);
  }
  const auto expected = reference->named_parameters();
  for (const auto& p : model->named_parameters()) {
    EXPECT_TRUE(torch::equal(p.value(), expected[p.key()])) << p.key();
  }
  // A NaN gradient behind a finite loss.
  const at::Tensor before = model->named_parameters()["head.weight"].detach().clone();
  auto hook = model->named_parameters()["head.weight"].register_hook(
      [](const at::Tensor& grad) { return grad * std::nan(""); });
  const moelab::train::StepResult skipped =
      moelab::train::train_step(*model, sgd, *task, [&] { return batch; }, clipped);
  EXPECT_TRUE(std::isfinite(skipped.task_loss_sum));
  EXPECT_FALSE(skipped.finite);
  EXPECT_TRUE(torch::equal(model->named_parameters()["head.weight"], before));
  model->named_parameters()["head.weight"].remove_hook(hook);
}

class WeightLoadingTest : public moelab::testing::TempDirTest {};

TEST_F(WeightLoadingTest, StrictNonStrictAndRenamedPrefixes) {
  torch::manual_seed(2);
  auto source = tiny_mlp();
  moelab::train::save_module_weights(*source, path("w.safetensors"));
  // Strict into a model with another head: the mismatch is named.
  auto other = tiny_mlp(/*outputs=*/5);
  const std::string message = moelab::testing::error_message<moelab::CheckpointError>(
      [&] { moelab::train::load_module_weights(*other, path("w.safetensors")); });
  EXPECT_NE(message.find("mismatch: head.weight"), std::string::npos) << message;
  // A file under another prefix: strict fails listing both sides, the mapping fixes it.
  torch::nn::Module wrapper;
  wrapper.register_module("model", source);
  moelab::train::save_module_weights(wrapper, path("prefixed.safetensors"));
  auto target = tiny_mlp();
  const std::string strict = moelab::testing::error_message<moelab::CheckpointError>(
      [&] { moelab::train::load_module_weights(*target, path("prefixed.safetensors")); });
  EXPECT_NE(strict.find("missing: input.weight"), std::string::npos) << strict;
  EXPECT_NE(strict.find("unexpected: model.input.weight"), std::string::npos) << strict;
  moelab::train::WeightLoading renamed;
  renamed.rename_prefixes = {{"model.", ""}};
  const moelab::train::WeightLoadReport report =
      moelab::train::load_module_weights(*target, path("prefixed.safetensors"), renamed);
  EXPECT_TRUE(report.missing.empty());
  EXPECT_EQ(report.loaded.size(), source->named_parameters().size() + source->named_buffers().size());
  const at::Tensor x = torch::randn({3, 5});
  EXPECT_TRUE(torch::equal(target->forward_inputs(x).outputs, source->forward_inputs(x).outputs));
  // Non-strict: what the file lacks keeps its value and is reported.
  auto partial = tiny_mlp();
  const at::Tensor kept = partial->named_parameters()["input.weight"].detach().clone();
  moelab::train::WeightLoading loose;
  loose.strict = false;
  const auto partial_report = moelab::train::load_module_weights(*partial, path("prefixed.safetensors"), loose);
  EXPECT_EQ(partial_report.loaded.size(), 0u);
  EXPECT_EQ(partial_report.unexpected.size(), report.loaded.size());
  EXPECT_TRUE(torch::equal(partial->named_parameters()["input.weight"], kept));
}

class RegressionRunTest : public moelab::testing::TempDirTest {};

TEST_F(RegressionRunTest, TrainsMonitorsR2AndEvaluatesThroughTheTask) {
  const YAML::Node config = moelab::run::resolve_run_config(
      {}, {"data.name=synthetic_regression", "data.num_samples=1024", "data.input_dim=4",
           "data.num_outputs=2", "model.input_dim=4", "model.num_classes=2",
           "model.moe.d_model=32", "model.moe.d_ff=32", "train.max_steps=150",
           "train.batch_size=32", "train.eval_every=50", "train.log_every=50",
           "train.optimizer.lr=0.005", "train.monitor.metric=val_r2"});
  EXPECT_EQ(config["task"]["name"].as<std::string>(), "regression");  // the data set's task
  const moelab::train::TrainSummary summary = moelab::run::start_run(config, path("run"))->run();
  EXPECT_GE(summary.val.values.at("r2"), 0.8);
  EXPECT_GT(summary.best_value, 0.8);  // val_r2, higher is better (mode auto = max)
  const auto e = moelab::run::evaluate_checkpoint(path("run"), {}, {});
  EXPECT_EQ(e.task->name(), "regression");
  EXPECT_NEAR(e.result.metric("r2"), summary.best_value, 1e-9);
  // A metric the task does not declare is refused with the list.
  EXPECT_EQ(moelab::testing::error_message<moelab::ConfigError>([&] {
              YAML::Node bad = YAML::Clone(config);
              bad["train"]["monitor"]["metric"] = "val_accuracy";
              moelab::run::start_run(bad, path("other"));
            }),
            "train.monitor.metric: task regression: no metric 'accuracy' (it reports: loss, mse, "
            "mae, pearson, r2)");
}
