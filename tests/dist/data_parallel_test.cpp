// Data-parallel training over Gloo between real processes (label dist): N ranks give the
// weights one process gives on the same global batches, every rank holds identical weights, a
// checkpoint written by N ranks resumes on M, and a rank killed with SIGKILL stops the others
// with a message naming it while the last checkpoint stays intact.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <csignal>
#include <filesystem>
#include <fstream>

#include "moelab/dist/process_group.h"
#include "moelab/io/safetensors.h"
#include "moelab/run/run.h"
#include "moelab/run/run_config.h"
#include "moelab/train/checkpoint.h"
#include "moelab/train/data_parallel.h"
#include "moelab/train/evaluation.h"
#include "moelab/train/run_directory.h"
#include "moelab/train/trainer.h"
#include "moelab/util/errors.h"
#include "support/fixtures.h"
#include "support/workers.h"

namespace fs = std::filesystem;

namespace {

// A small MoE classifier whose steps do not depend on how the batch is split: a deterministic
// router and no aux loss (a load-balancing loss is computed per rank, as in Megatron-Core),
// with AdamW, gradient accumulation, clipping and a 31-sample batch (shards of 15 and 16).
YAML::Node dist_tiny_config(int64_t max_steps, std::vector<std::string> extra = {}) {
  std::vector<std::string> overrides{"model.input_dim=8", "model.num_classes=3", "model.num_layers=2", "model.moe.d_model=16",
           "model.moe.d_ff=32", "model.moe.num_experts=4", "model.moe.router.kind=top_k",
           "model.moe.router.top_k=2", "data.num_samples=600", "data.input_dim=8",
           "data.num_classes=3", "data.num_clusters=6", "data.cluster_std=2.0",
           "train.max_steps=" + std::to_string(max_steps), "train.batch_size=31",
           "train.grad_accumulation=2", "train.clip_grad_norm=1.0", "train.log_every=5",
           "train.eval_every=10", "train.checkpoint_every=10", "train.schedule.kind=cosine",
           "train.schedule.warmup_steps=3", "train.optimizer.lr=0.01",
           // Gradient buckets of ~500 bytes: many of them start during the backward pass,
           // beside the experts' all-to-all under expert parallelism.
           "parallel.bucket_mb=0.0005"};
  overrides.insert(overrides.end(), extra.begin(), extra.end());
  return moelab::run::resolve_run_config({}, overrides);
}

// 4 clients (Dirichlet), 3 of them per round, expert-aware aggregation, DP clip and noise, and
// dropout-free noisy routing: 3 rounds.
YAML::Node dist_federated_config() {
  return moelab::run::resolve_run_config(
      {}, {"model.input_dim=8", "model.num_classes=3", "model.num_layers=2", "model.moe.d_model=16",
           "model.moe.d_ff=32", "model.moe.num_experts=4", "model.moe.router.kind=noisy_top_k",
           "model.moe.router.top_k=2", "data.num_samples=600", "data.input_dim=8",
           "data.num_classes=3", "data.num_clusters=6", "data.cluster_std=2.0", "train.batch_size=32",
           "train.optimizer.lr=0.01", "federated.clients=4", "federated.participation=0.75",
           "federated.rounds=3", "federated.partition=dirichlet", "federated.aggregation=expert_aware",
           "federated.dp_clip=5.0", "federated.dp_noise_multiplier=0.01"});
}

std::map<std::string, at::Tensor> weights_of(const std::string& safetensors) {
  return moelab::io::load_safetensors(safetensors).tensors;
}

void expect_close_weights(const std::map<std::string, at::Tensor>& a,
                          const std::map<std::string, at::Tensor>& b, double tolerance) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, tensor] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    EXPECT_TRUE(at::allclose(tensor, b.at(name), tolerance, tolerance))
        << name << ": max difference " << (tensor - b.at(name)).abs().max().item<double>();
  }
}

std::vector<nlohmann::json> metric_lines(const std::string& run_dir, const std::string& kind) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(run_dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    nlohmann::json parsed = nlohmann::json::parse(line);
    if (parsed["kind"] == kind) lines.push_back(std::move(parsed));
  }
  return lines;
}

void expect_equal_weights(const std::map<std::string, at::Tensor>& a,
                          const std::map<std::string, at::Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, tensor] : a) EXPECT_TRUE(at::equal(tensor, b.at(name))) << name;
}

}  // namespace

// One rank of a data-parallel 20-step run: MOELAB_TEST_DIR/run, MOELAB_TEST_MODE start or
// resume, MOELAB_TEST_STOP_AT=S stops at step S (a checkpoint); writes its final weights to
// MOELAB_TEST_DIR/rank-R.safetensors. MOELAB_TEST_KILL_AT=S: rank 1 kills itself with SIGKILL
// after step S. MOELAB_TEST_EXPERT_PARALLEL=1: a new run splits the experts (parallel.expert).
MOELAB_TEST_WORKER(data_parallel_rank) {
  using namespace moelab;
  const std::string dir = moelab::testing::env_or_empty("MOELAB_TEST_DIR");
  const std::string stop_at = moelab::testing::env_or_empty("MOELAB_TEST_STOP_AT");
  const bool split_experts = !moelab::testing::env_or_empty("MOELAB_TEST_EXPERT_PARALLEL").empty();
  const std::string kill_at = moelab::testing::env_or_empty("MOELAB_TEST_KILL_AT");
  auto processes = std::make_shared<dist::ProcessGroupCollective>(dist::launch_environment(), 20.0);
  std::unique_ptr<train::Trainer> trainer =
      moelab::testing::env_or_empty("MOELAB_TEST_MODE") == "resume"
          ? run::resume_run(dir + "/run", {}, processes)
          : run::start_run(dist_tiny_config(20, split_experts ? std::vector<std::string>{"parallel.expert=" + std::to_string(processes->world_size())}
                                                              : std::vector<std::string>{}),
                           dir + "/run", processes);
  if (!kill_at.empty()) {
    trainer->run(std::stoll(kill_at));
    if (processes->rank() == 1) std::raise(SIGKILL);
  }
  trainer->run(stop_at.empty() ? 0 : std::stoll(stop_at));
  train::save_module_weights(trainer->model(),
                             dir + "/rank-" + std::to_string(processes->rank()) + ".safetensors");
  return 0;
}

class DistDataParallelTest : public moelab::testing::TempDirTest {
 protected:
  moelab::testing::WorkerRun launch(int nproc, const std::string& mode, int64_t stop_at = 0,
                                    const std::vector<std::string>& extra = {}) {
    std::vector<std::string> env{"MOELAB_TEST_DIR=" + root_.string(), "MOELAB_TEST_MODE=" + mode};
    if (stop_at > 0) env.push_back("MOELAB_TEST_STOP_AT=" + std::to_string(stop_at));
    env.insert(env.end(), extra.begin(), extra.end());
    return moelab::testing::launch_workers("data_parallel_rank", nproc, env);
  }
  std::string rank_weights(int rank) const { return path("rank-" + std::to_string(rank) + ".safetensors"); }
};

TEST(DistShardTest, ShardsCoverTheBatchInRankOrder) {
  using moelab::train::shard_of;
  EXPECT_EQ(shard_of(31, 0, 2).begin, 0);
  EXPECT_EQ(shard_of(31, 0, 2).end, 15);
  EXPECT_EQ(shard_of(31, 1, 2).begin, 15);
  EXPECT_EQ(shard_of(31, 1, 2).end, 31);
  int64_t covered = 0;
  for (int r = 0; r < 4; ++r) {
    const auto s = shard_of(10, r, 4);
    EXPECT_EQ(s.begin, covered);
    EXPECT_TRUE(s.size() == 2 || s.size() == 3);
    covered = s.end;
  }
  EXPECT_EQ(covered, 10);
}

TEST(DistShardTest, AddsJsonSums) {
  using moelab::train::add_json_sums;
  const auto a = nlohmann::json::parse(R"({"n": 2, "x": [1.5, null], "cells": {"0": [1, 2]}})");
  const auto b = nlohmann::json::parse(R"({"n": 3, "x": [0.5, 4.0], "cells": {"1": [5, 6]}})");
  EXPECT_EQ(add_json_sums(a, b),
            nlohmann::json::parse(R"({"n": 5, "x": [2.0, 4.0], "cells": {"0": [1, 2], "1": [5, 6]}})"));
  EXPECT_EQ(add_json_sums(nullptr, b), b);
  EXPECT_EQ(add_json_sums(nlohmann::json::array(), b), b);
  EXPECT_THROW(add_json_sums(nlohmann::json::parse("[1]"), nlohmann::json::parse("[1, 2]")), c10::Error);
}

TEST_F(DistDataParallelTest, TwoRanksGiveOneProcesssWeightsAndResumeOnAnyNumberOfRanks) {
  // One process, 20 steps.
  moelab::run::start_run(dist_tiny_config(20), path("single"))->run();
  const auto single = weights_of(path("single/checkpoints/step-00000020/model.safetensors"));

  // Two ranks, 20 steps: the same weights to float tolerance, identical on both ranks.
  auto two = launch(2, "start");
  ASSERT_EQ(two.status, 0) << two.output;
  expect_equal_weights(weights_of(rank_weights(0)), weights_of(rank_weights(1)));
  expect_close_weights(single, weights_of(rank_weights(0)), 1e-5);
  const auto straight = weights_of(path("run/checkpoints/step-00000020/model.safetensors"));
  expect_equal_weights(straight, weights_of(rank_weights(0)));
  // Rank 0 alone wrote the run; its lines hold the global batch's numbers.
  std::vector<nlohmann::json> lines;
  std::ifstream in(path("run/metrics.jsonl"));
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  std::vector<nlohmann::json> single_lines;
  std::ifstream single_in(path("single/metrics.jsonl"));
  for (std::string line; std::getline(single_in, line);) single_lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), single_lines.size());
  for (size_t i = 0; i < lines.size(); ++i) {
    // Evaluations in shards, their sums gathered: the single process's numbers and routing.
    if (lines[i]["kind"] == "eval") {
      EXPECT_NEAR(lines[i]["val_loss"].get<double>(), single_lines[i]["val_loss"].get<double>(), 1e-5);
      EXPECT_NEAR(lines[i]["val_accuracy"].get<double>(), single_lines[i]["val_accuracy"].get<double>(), 0.01);
    }
    if (lines[i]["kind"] == "test") {
      EXPECT_EQ(lines[i]["samples"], single_lines[i]["samples"]);
      for (size_t l = 0; l < 2; ++l) {
        EXPECT_EQ(lines[i]["moe_layers"][l]["class_expert"], single_lines[i]["moe_layers"][l]["class_expert"]) << l;
      }
    }
    if (lines[i]["kind"] != "train") continue;
    EXPECT_EQ(lines[i]["processes"], 2);
    EXPECT_NEAR(lines[i]["loss"].get<double>(), single_lines[i]["loss"].get<double>(), 1e-5);
    // Counted over both shards (a flipped prediction moves it by 1/310).
    EXPECT_NEAR(lines[i]["accuracy"].get<double>(), single_lines[i]["accuracy"].get<double>(), 0.01);
    const auto& losses = lines[i]["moe_layers"][0]["expert_loss"];
    const auto& single_losses = single_lines[i]["moe_layers"][0]["expert_loss"];
    ASSERT_EQ(losses.size(), single_losses.size());
    for (size_t e = 0; e < losses.size(); ++e) {
      EXPECT_EQ(losses[e].is_null(), single_losses[e].is_null());
      if (losses[e].is_number()) EXPECT_NEAR(losses[e].get<double>(), single_losses[e].get<double>(), 1e-4);
    }
  }

  // 2 ranks to step 10, then 2 ranks on: bitwise the straight run.
  fs::rename(path("run"), path("straight"));
  auto first = launch(2, "start", 10);
  ASSERT_EQ(first.status, 0) << first.output;
  fs::copy(path("run"), path("run_for_one"), fs::copy_options::recursive);
  auto second = launch(2, "resume");
  ASSERT_EQ(second.status, 0) << second.output;
  expect_equal_weights(straight, weights_of(path("run/checkpoints/step-00000020/model.safetensors")));

  // The same 2-rank checkpoint resumed by one process, and a 1-process checkpoint by 4 ranks.
  const auto one = moelab::run::resume_run(path("run_for_one"))->run();
  EXPECT_EQ(one.steps, 20);
  expect_close_weights(single, weights_of(path("run_for_one/checkpoints/step-00000020/model.safetensors")), 1e-5);
  fs::remove_all(path("run"));
  moelab::run::start_run(dist_tiny_config(20), path("run"))->run(10);
  auto four = launch(4, "resume");
  ASSERT_EQ(four.status, 0) << four.output;
  expect_close_weights(single, weights_of(rank_weights(3)), 1e-5);
}

TEST_F(DistDataParallelTest, AKilledRankStopsTheOthersNamingItAndTheCheckpointResumes) {
  auto run = launch(2, "start", 0, {"MOELAB_TEST_KILL_AT=10"});
  EXPECT_NE(run.status, 0);
  EXPECT_NE(run.output.find("rank 1 exited with status 137"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("lost rank 1"), std::string::npos) << run.output;
  // Rank 0 checkpointed step 10 before the kill; it reads back whole and the run goes on.
  const std::string latest = moelab::train::latest_checkpoint(path("run"));
  EXPECT_EQ(fs::path(latest).filename(), "step-00000010");
  moelab::train::verify_checkpoint(latest);
  EXPECT_EQ(moelab::run::resume_run(path("run"))->run().steps, 20);
}

// Each rank checks the collectives' results against what it computes by itself.
MOELAB_TEST_WORKER(collective_operations) {
  using namespace moelab;
  dist::ProcessGroupCollective group(dist::launch_environment(), 20.0);
  const int r = group.rank(), n = group.world_size();
  int failures = 0;
  auto check = [&](bool ok, const std::string& what) {
    if (!ok) {
      std::cerr << "rank " << r << ": " << what << "\n";
      ++failures;
    }
  };
  // Sums: a large float tensor (several Gloo chunks) and a small double one, concurrently.
  std::vector<at::Tensor> tensors{at::arange(100000, at::kFloat) * (r + 1), at::full({3}, 0.5 * r, at::kDouble)};
  group.all_reduce_sum(tensors);
  const double ranks_sum = n * (n + 1) / 2.0;
  check(at::equal(tensors[0], at::arange(100000, at::kFloat) * ranks_sum), "all_reduce_sum float");
  check(at::allclose(tensors[1], at::full({3}, 0.5 * (n - 1) * n / 2.0, at::kDouble)), "all_reduce_sum double");
  // Texts of different lengths, one empty.
  const auto texts = group.all_gather_text(r == 1 ? "" : std::string(static_cast<size_t>(10 * r + 3), 'a' + r));
  check(static_cast<int>(texts.size()) == n, "all_gather_text count");
  for (int q = 0; q < n && q < static_cast<int>(texts.size()); ++q) {
    check(texts[q] == (q == 1 ? "" : std::string(static_cast<size_t>(10 * q + 3), 'a' + q)), "all_gather_text " + std::to_string(q));
  }
  // Rows: rank q sends (q + d) % 3 rows to rank d, each row [q, d, i]; none at all where 0.
  std::vector<int64_t> send(n), recv(n);
  std::vector<at::Tensor> rows;
  for (int d = 0; d < n; ++d) {
    send[d] = (r + d) % 3;
    recv[d] = (d + r) % 3;
    for (int64_t i = 0; i < send[d]; ++i) rows.push_back(at::tensor({float(r), float(d), float(i)}));
  }
  const at::Tensor input = rows.empty() ? at::empty({0, 3}) : at::stack(rows);
  const at::Tensor received = group.all_to_all_rows(input, send, recv);
  std::vector<at::Tensor> expected;
  for (int q = 0; q < n; ++q) {
    for (int64_t i = 0; i < recv[q]; ++i) expected.push_back(at::tensor({float(q), float(r), float(i)}));
  }
  check(at::equal(received, expected.empty() ? at::empty({0, 3}) : at::stack(expected)), "all_to_all_rows");
  // Background sums travel on a channel of their own: rank 0 starts one before the main
  // channel's exchanges, the others after them, and every result is still right.
  std::vector<at::Tensor> main_sum{at::full({5}, float(r + 1))};
  std::unique_ptr<PendingSum> background;
  const at::Tensor bucket = at::arange(50000, at::kFloat) * (r + 1);
  if (r == 0) background = group.start_all_reduce_sum({bucket});
  group.all_reduce_sum(main_sum);
  const at::Tensor again = group.all_to_all_rows(input, send, recv);
  if (r != 0) background = group.start_all_reduce_sum({bucket});
  background->wait();
  check(at::equal(bucket, at::arange(50000, at::kFloat) * ranks_sum), "start_all_reduce_sum");
  check(at::equal(main_sum[0], at::full({5}, float(ranks_sum))), "all_reduce_sum beside a background sum");
  check(at::equal(again, received), "all_to_all_rows beside a background sum");
  return failures;
}

namespace {
// Four parameters registered w_unused, w1, w2, w3 (buckets run the other way) and a frozen one.
struct OverlapNet : torch::nn::Module {
  at::Tensor w_unused = register_parameter("w_unused", at::full({3}, 0.5));
  at::Tensor w1 = register_parameter("w1", at::linspace(-1, 1, 12).reshape({4, 3}));
  at::Tensor w2 = register_parameter("w2", at::linspace(0.5, -0.5, 6).reshape({3, 2}));
  at::Tensor w3 = register_parameter("w3", at::tensor({0.3f, -0.7f}));
  at::Tensor frozen = register_parameter("frozen", at::ones({2}), /*requires_grad=*/false);
  // Rank `rank`'s loss on micro-batch `micro`; w3 is left out of rank 1's last micro-batch.
  at::Tensor loss(int rank, int micro) {
    const at::Tensor x = at::linspace(-1, 1, 8).reshape({2, 4}) * (rank + 1) + micro;
    at::Tensor h = at::tanh(x.matmul(w1)).matmul(w2) * frozen;
    if (!(rank == 1 && micro == 1)) h = h + w3;
    return h.pow(2).mean();
  }
};
}  // namespace

// Each rank runs two micro-batches through a DataParallelSync of one parameter per bucket and
// checks the summed gradients against the sum of every rank's micro-batches, computed alone.
MOELAB_TEST_WORKER(overlapped_gradients) {
  using namespace moelab;
  dist::ProcessGroupCollective group(dist::launch_environment(), 20.0);
  const int r = group.rank(), n = group.world_size();
  const int64_t batch = 5;
  auto owned = std::make_shared<OverlapNet>();  // modules(include_self) needs a shared_ptr
  OverlapNet& net = *owned;
  train::DataParallelSync sync(group, net, batch, nullptr, /*bucket_bytes=*/4);
  train::StepResult result;
  result.loss_sum = 10.0 * (r + 1);
  (net.loss(r, 0) * (sync.loss_scale() / 2)).backward();
  sync.before_last_backward();
  (net.loss(r, 1) * (sync.loss_scale() / 2)).backward();
  sync.synchronise(net, result);

  OverlapNet alone;
  double loss_sum = 0;
  for (int q = 0; q < n; ++q) {
    const double share = static_cast<double>(train::shard_of(batch, q, n).size()) / batch;
    for (int micro = 0; micro < 2; ++micro) (alone.loss(q, micro) * (share / 2)).backward();
    loss_sum += share * 10.0 * (q + 1);
  }
  int failures = 0;
  auto check = [&](bool ok, const std::string& what) {
    if (!ok) {
      std::cerr << "rank " << r << ": " << what << "\n";
      ++failures;
    }
  };
  check(sync.buckets() == 4, "4 buckets (the frozen parameter is not sent), got " + std::to_string(sync.buckets()));
  // w3, w2 and w1 came during the last backward pass; on rank 1 without w3, the first bucket.
  check(sync.buckets_started_early() == (r == 1 ? 0 : 3),
        "buckets started during the backward pass: " + std::to_string(sync.buckets_started_early()));
  for (const char* name : {"w1", "w2", "w3"}) {
    const at::Tensor got = net.named_parameters()[name].grad(), want = alone.named_parameters()[name].grad();
    check(got.defined() && at::allclose(got, want, 1e-6, 1e-7), std::string("gradient of ") + name);
  }
  check(!net.w_unused.grad().defined() && !net.frozen.grad().defined(), "no gradient where no rank had one");
  check(std::abs(result.loss_sum - loss_sum) < 1e-9, "loss sum of the global batch");
  return failures;
}

// Each rank evaluates its shards of 7 samples in batches of 3 (the last one: a single sample, so
// some ranks hold none and run one in lockstep for the experts' exchange) with the experts split
// over the ranks, and compares the gathered evaluation with the whole model's, computed alone.
MOELAB_TEST_WORKER(sharded_evaluation) {
  using namespace moelab;
  dist::ProcessGroupCollective group(dist::launch_environment(), 20.0);
  const YAML::Node config = dist_tiny_config(1);
  train::RunParts whole = run::assemble_run(config), split = run::assemble_run(config);
  train::ExpertShards shards(group, *split.model);
  const auto source = whole.data.val->subset(at::arange(7));
  const auto alone = train::evaluate(*whole.model, *source, *whole.task, 3, Precision::kFloat32, 3);
  const auto together = train::evaluate(*split.model, *source, *split.task, 3, Precision::kFloat32, 3,
                                        {&group, /*lockstep=*/true});
  int failures = 0;
  auto check = [&](bool ok, const std::string& what) {
    if (!ok) {
      std::cerr << "rank " << group.rank() << ": " << what << "\n";
      ++failures;
    }
  };
  check(together.samples() == 7, "samples " + std::to_string(together.samples()));
  check(std::abs(together.metric("loss") - alone.metric("loss")) < 1e-6, "loss");
  check(together.metric("accuracy") == alone.metric("accuracy"), "accuracy");
  check(together.class_expert.size() == 2 && alone.class_expert.size() == 2, "two MoE layers");
  for (size_t l = 0; l < 2 && l < together.class_expert.size(); ++l) {
    check(at::equal(together.class_expert[l], alone.class_expert[l]), "class x expert counts");
    check(together.expert_loss[l].counts() == alone.expert_loss[l].counts(), "expert samples");
    const auto got = together.expert_loss[l].mean_loss(), want = alone.expert_loss[l].mean_loss();
    for (size_t e = 0; e < want.size() && e < got.size(); ++e) {
      check(std::isnan(want[e]) ? std::isnan(got[e]) : std::abs(got[e] - want[e]) < 1e-6, "expert loss");
    }
  }
  return failures;
}

TEST(DistCollectiveTest, EvaluationInShardsGathersTheWholeEvaluation) {
  for (int nproc : {2, 4}) {
    const auto run = moelab::testing::launch_workers("sharded_evaluation", nproc);
    EXPECT_EQ(run.status, 0) << nproc << " ranks:\n" << run.output;
  }
}

TEST(DistCollectiveTest, GradientBucketsStartDuringTheBackwardPassAndSumEveryRanksMicroBatches) {
  for (int nproc : {2, 3}) {
    const auto run = moelab::testing::launch_workers("overlapped_gradients", nproc);
    EXPECT_EQ(run.status, 0) << nproc << " ranks:\n" << run.output;
  }
}

TEST(DistCollectiveTest, SumsGathersTextsAndExchangesRowsOverGloo) {
  for (int nproc : {2, 3}) {
    const auto run = moelab::testing::launch_workers("collective_operations", nproc);
    EXPECT_EQ(run.status, 0) << nproc << " ranks:\n" << run.output;
  }
}

TEST_F(DistDataParallelTest, ExpertParallelTrainingMatchesOneProcessAndCheckpointsWholeExperts) {
  moelab::run::start_run(dist_tiny_config(20), path("single"))->run();
  const auto single = weights_of(path("single/checkpoints/step-00000020/model.safetensors"));
  // 2 ranks, 2 of the 4 experts each: the single process's weights; whole experts in the checkpoint.
  auto split = launch(2, "start", 0, {"MOELAB_TEST_EXPERT_PARALLEL=1"});
  ASSERT_EQ(split.status, 0) << split.output;
  const auto straight = weights_of(path("run/checkpoints/step-00000020/model.safetensors"));
  expect_close_weights(single, straight, 1e-5);
  // Its evaluations ran in shards in lockstep (the experts' exchanges): the single process's.
  const auto evals = metric_lines(path("run"), "eval"), single_evals = metric_lines(path("single"), "eval");
  ASSERT_EQ(evals.size(), single_evals.size());
  for (size_t i = 0; i < evals.size(); ++i) {
    EXPECT_NEAR(evals[i]["val_loss"].get<double>(), single_evals[i]["val_loss"].get<double>(), 1e-5);
  }
  const auto test = metric_lines(path("run"), "test").at(0), single_test = metric_lines(path("single"), "test").at(0);
  for (size_t l = 0; l < 2; ++l) {
    EXPECT_EQ(test["moe_layers"][l]["class_expert"], single_test["moe_layers"][l]["class_expert"]) << l;
    EXPECT_EQ(test["moe_layers"][l]["samples"], single_test["moe_layers"][l]["samples"]) << l;
  }
  const auto rank1 = weights_of(rank_weights(1));
  EXPECT_EQ(rank1.at("moe0.experts.w_in").size(0), 2);
  EXPECT_TRUE(at::equal(rank1.at("moe0.experts.w_in"), straight.at("moe0.experts.w_in").narrow(0, 2, 2)));
  EXPECT_TRUE(at::equal(rank1.at("head.weight"), straight.at("head.weight")));
  // Stopped at step 10 and resumed on 2 ranks: bitwise the straight run; on one process: close.
  fs::rename(path("run"), path("straight"));
  auto first = launch(2, "start", 10, {"MOELAB_TEST_EXPERT_PARALLEL=1"});
  ASSERT_EQ(first.status, 0) << first.output;
  fs::copy(path("run"), path("run_for_one"), fs::copy_options::recursive);
  auto second = launch(2, "resume");
  ASSERT_EQ(second.status, 0) << second.output;
  expect_equal_weights(straight, weights_of(path("run/checkpoints/step-00000020/model.safetensors")));
  EXPECT_EQ(moelab::run::resume_run(path("run_for_one"), {"parallel.expert=1"})->run().steps, 20);
  expect_close_weights(single, weights_of(path("run_for_one/checkpoints/step-00000020/model.safetensors")), 1e-5);
  // A run of 2 expert-parallel ranks does not go on in one process without saying so.
  EXPECT_NE(moelab::testing::error_message<moelab::ConfigError>([&] { moelab::run::resume_run(path("straight")); })
                .find("parallel.expert (2) must equal the number of processes (1)"),
            std::string::npos);
}

// Federated clients as processes: MOELAB_TEST_DIR/run, start or resume (MOELAB_TEST_MODE).
MOELAB_TEST_WORKER(federated_rank) {
  using namespace moelab;
  const std::string dir = moelab::testing::env_or_empty("MOELAB_TEST_DIR");
  auto processes = std::make_shared<dist::ProcessGroupCollective>(dist::launch_environment(), 20.0);
  auto federated = moelab::testing::env_or_empty("MOELAB_TEST_MODE") == "resume"
                       ? run::resume_federated_run(dir + "/run", processes)
                       : run::start_federated_run(dist_federated_config(), dir + "/run", processes);
  federated->run();
  return 0;
}

TEST_F(DistDataParallelTest, FederatedClientsAsProcessesGiveTheSimulatedRun) {
  moelab::run::start_federated_run(dist_federated_config(), path("simulated"))->run();
  auto two = moelab::testing::launch_workers("federated_rank", 2,
                                             {"MOELAB_TEST_DIR=" + root_.string(), "MOELAB_TEST_MODE=start"});
  ASSERT_EQ(two.status, 0) << two.output;
  expect_close_weights(weights_of(path("simulated/checkpoints/step-00000003/model.safetensors")),
                       weights_of(path("run/checkpoints/step-00000003/model.safetensors")), 1e-5);
  auto rounds = [&](const std::string& run) {
    std::vector<nlohmann::json> out;
    std::ifstream in(path(run + "/metrics.jsonl"));
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line);
      if (j["kind"] == "round") out.push_back(j);
    }
    return out;
  };
  const auto simulated = rounds("simulated"), processes = rounds("run");
  ASSERT_EQ(simulated.size(), 3u);
  ASSERT_EQ(processes.size(), 3u);
  for (size_t r = 0; r < 3; ++r) {
    EXPECT_EQ(simulated[r]["clients"], processes[r]["clients"]);
    EXPECT_EQ(simulated[r]["client_loss"].size(), processes[r]["client_loss"].size());
    for (const auto& [client, loss] : simulated[r]["client_loss"].items()) {
      EXPECT_NEAR(loss.get<double>(), processes[r]["client_loss"][client].get<double>(), 1e-5) << client;
    }
    EXPECT_NEAR(simulated[r]["val_loss"].get<double>(), processes[r]["val_loss"].get<double>(), 1e-5);
  }
  // Two simulated rounds resumed by 2 processes: the simulated run again.
  moelab::run::start_federated_run(dist_federated_config(), path("half"))->run(2);
  fs::remove_all(path("run"));
  fs::rename(path("half"), path("run"));
  auto resumed = moelab::testing::launch_workers("federated_rank", 2,
                                                 {"MOELAB_TEST_DIR=" + root_.string(), "MOELAB_TEST_MODE=resume"});
  ASSERT_EQ(resumed.status, 0) << resumed.output;
  expect_close_weights(weights_of(path("simulated/checkpoints/step-00000003/model.safetensors")),
                       weights_of(path("run/checkpoints/step-00000003/model.safetensors")), 1e-5);
}
