#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <fstream>
#include <set>

#include "moelab/io/safetensors.h"
#include "moelab/run/run.h"
#include "moelab/run/run_config.h"
#include "moelab/train/federated.h"
#include "moelab/util/errors.h"
#include "support/fixtures.h"

using namespace moelab::train;

namespace {

class FederatedTest : public moelab::testing::TempDirTest {
 protected:
  // The trainer tests' tiny run: noisy routing, an aux loss, AdamW, cosine warmup, gradient
  // accumulation and clipping; sized by epochs.
  static YAML::Node federated_tiny_config(std::vector<std::string> extra) {
    std::vector<std::string> overrides{
        "model.input_dim=8", "model.num_classes=3", "model.num_layers=2", "model.moe.d_model=16",
        "model.moe.d_ff=32", "model.moe.num_experts=4", "model.moe.router.kind=noisy_top_k",
        "model.moe.router.top_k=2", "model.moe.aux.importance_load=0.01", "data.num_samples=600",
        "data.input_dim=8", "data.num_classes=3", "data.num_clusters=6", "data.cluster_std=2.0",
        "train.batch_size=32", "train.grad_accumulation=2", "train.clip_grad_norm=1.0",
        "train.eval_every=0", "train.schedule.kind=cosine", "train.schedule.warmup_steps=3",
        "train.optimizer.lr=0.01"};
    overrides.insert(overrides.end(), extra.begin(), extra.end());
    return moelab::run::resolve_run_config({}, overrides);
  }
  static std::map<std::string, at::Tensor> weights(const std::string& file) {
    return moelab::io::load_safetensors(file).tensors;
  }
  static std::vector<nlohmann::json> lines(const std::string& run_dir, const std::string& kind) {
    std::vector<nlohmann::json> out;
    std::ifstream in(run_dir + "/metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line);
      if (j["kind"] == kind) out.push_back(j);
    }
    return out;
  }
};

TEST_F(FederatedTest, OneClientWithFullParticipationIsCentralisedTraining) {
  moelab::run::start_run(federated_tiny_config({"train.epochs=2"}), path("central"))->run();
  auto federated = moelab::run::start_federated_run(
      federated_tiny_config({"federated.clients=1", "federated.rounds=1", "federated.local_epochs=2"}),
      path("federated"));
  EXPECT_EQ(federated->run(), 1);
  const auto central = weights(path("central/checkpoints/step-00000016/model.safetensors"));
  const auto fed = weights(path("federated/checkpoints/step-00000001/model.safetensors"));
  ASSERT_EQ(central.size(), fed.size());
  for (const auto& [name, value] : central) {
    if (at::isFloatingType(value.scalar_type())) EXPECT_TRUE(at::equal(value, fed.at(name))) << name;
  }
}

TEST_F(FederatedTest, FedAvgOfIdenticalClientsIsTheIdentity) {
  std::map<std::string, at::Tensor> global{{"w", at::randn({3, 4})}, {"steps", at::tensor({7}, at::kLong)}};
  ClientUpdate client;
  client.weights = {{"w", at::randn({3, 4})}, {"steps", at::tensor({9}, at::kLong)}};
  std::vector<ClientUpdate> clients(3, client);
  clients[0].samples = 1;
  clients[1].samples = 2;
  clients[2].samples = 4;
  const auto out = aggregate("fedavg", global, clients, {});
  EXPECT_TRUE(at::equal(out.at("w"), client.weights.at("w")));
  EXPECT_EQ(out.at("steps").item<int64_t>(), 7);  // integer buffers keep the global value
}

TEST_F(FederatedTest, ExpertAwareWeighsEachExpertByTheTokensRoutedToIt) {
  // Experts 0..2 of one layer; client A (1 sample) routed 2 tokens to expert 0, client B (3
  // samples) 2 to expert 0 and 1 to expert 1; nobody used expert 2.
  std::map<std::string, at::Tensor> global{{"moe0.experts.w_in", at::tensor({10.f, 20.f, 30.f}).view({3, 1})},
                                           {"moe0.router.gate.weight", at::tensor({0.f})}};
  ClientUpdate a, b;
  a.weights = {{"moe0.experts.w_in", at::tensor({1.f, 2.f, 3.f}).view({3, 1})}, {"moe0.router.gate.weight", at::tensor({4.f})}};
  a.samples = 1;
  a.expert_tokens["moe0"] = at::tensor({2.0, 0.0, 0.0});
  b.weights = {{"moe0.experts.w_in", at::tensor({5.f, 6.f, 7.f}).view({3, 1})}, {"moe0.router.gate.weight", at::tensor({8.f})}};
  b.samples = 3;
  b.expert_tokens["moe0"] = at::tensor({2.0, 1.0, 0.0});
  const std::map<std::string, std::vector<std::string>> experts{{"moe0", {"moe0.experts.w_in"}}};
  const auto aware = aggregate("expert_aware", global, {a, b}, experts);
  EXPECT_TRUE(at::equal(aware.at("moe0.experts.w_in"), at::tensor({3.f, 6.f, 30.f}).view({3, 1})));
  EXPECT_TRUE(at::equal(aware.at("moe0.router.gate.weight"), at::tensor({7.f})));  // (4 + 3 x 8) / 4
  const auto plain = aggregate("fedavg", global, {a, b}, experts);
  EXPECT_TRUE(at::equal(plain.at("moe0.experts.w_in"), at::tensor({4.f, 5.f, 6.f}).view({3, 1})));
}

TEST_F(FederatedTest, PartitionsCoverTheDataSetOnce) {
  const at::Tensor labels = at::arange(1000, at::kLong).remainder(10);
  for (const std::string kind : {"iid", "dirichlet", "by_class"}) {
    FederatedOptions o;
    o.clients(5).partition(kind).alpha(0.5).classes_per_client(2);
    const auto parts = partition_samples(o, labels, 1000, 3);
    ASSERT_EQ(parts.size(), 5u);
    std::multiset<int64_t> seen;
    for (const auto& part : parts) seen.insert(part.begin(), part.end());
    EXPECT_EQ(seen.size(), 1000u) << kind;
    EXPECT_EQ(std::set<int64_t>(seen.begin(), seen.end()).size(), 1000u) << kind;
    if (kind == "iid") {
      for (const auto& part : parts) EXPECT_EQ(part.size(), 200u);
    }
    if (kind == "by_class") {  // client c holds classes 2c and 2c + 1 only
      for (int64_t c = 0; c < 5; ++c) {
        std::set<int64_t> classes;
        for (int64_t i : parts[c]) classes.insert(i % 10);
        EXPECT_EQ(classes, (std::set<int64_t>{2 * c, 2 * c + 1}));
      }
    }
    // The same seed, the same partition.
    EXPECT_EQ(partition_samples(o, labels, 1000, 3), parts) << kind;
  }
  // Dirichlet with a small alpha is skewed: some client lacks some class entirely.
  FederatedOptions skewed;
  skewed.clients(5).partition("dirichlet").alpha(0.1);
  const auto parts = partition_samples(skewed, labels, 1000, 3);
  int64_t missing = 0;
  for (const auto& part : parts) {
    std::set<int64_t> classes;
    for (int64_t i : part) classes.insert(i % 10);
    missing += 10 - static_cast<int64_t>(classes.size());
  }
  EXPECT_GT(missing, 0);
  FederatedOptions by_label;
  by_label.clients(2).partition("dirichlet");
  EXPECT_NE(moelab::testing::error_message<moelab::ConfigError>([&] { partition_samples(by_label, at::rand({10}), 10, 0); })
                .find("needs a data set with class labels"),
            std::string::npos);
}

TEST_F(FederatedTest, SamplesTheParticipatingClientsBySeedAndRound) {
  FederatedOptions o;
  o.clients(5).participation(0.6);
  const auto first = sample_clients(o, 0, 1);
  EXPECT_EQ(first.size(), 3u);
  EXPECT_EQ(sample_clients(o, 0, 1), first);
  bool differs = false;
  for (int64_t round = 1; round < 6; ++round) differs = differs || sample_clients(o, round, 1) != first;
  EXPECT_TRUE(differs);
  o.participation(0.01);
  EXPECT_EQ(sample_clients(o, 0, 1).size(), 1u);  // at least one
}

TEST_F(FederatedTest, AResumedRunEqualsAnUninterruptedOne) {
  const YAML::Node config = federated_tiny_config(
      {"federated.clients=4", "federated.rounds=4", "federated.participation=0.5",
       "federated.partition=dirichlet", "federated.aggregation=fedprox", "federated.mu=0.1",
       "federated.dp_clip=5.0", "federated.dp_noise_multiplier=0.01", "train.keep_last=5"});
  moelab::run::start_federated_run(config, path("straight"))->run();
  EXPECT_EQ(moelab::run::start_federated_run(config, path("stopped"))->run(2), 2);
  EXPECT_TRUE(moelab::run::is_federated_run(path("stopped")));
  auto resumed = moelab::run::resume_federated_run(path("stopped"));
  EXPECT_EQ(resumed->round(), 2);
  EXPECT_EQ(resumed->run(), 4);
  const auto a = weights(path("straight/checkpoints/step-00000004/model.safetensors"));
  const auto b = weights(path("stopped/checkpoints/step-00000004/model.safetensors"));
  for (const auto& [name, value] : a) EXPECT_TRUE(at::equal(value, b.at(name))) << name;
  EXPECT_EQ(lines(path("straight"), "round"), lines(path("stopped"), "round"));
  const auto rounds = lines(path("straight"), "round");
  ASSERT_EQ(rounds.size(), 4u);
  EXPECT_EQ(rounds[0]["clients"].size(), 2u);
  EXPECT_EQ(rounds[0]["dp"]["clip"], 5.0);
  EXPECT_TRUE(rounds[3].contains("val_accuracy"));
  EXPECT_EQ(lines(path("straight"), "test").size(), 1u);
}

TEST_F(FederatedTest, RejectsBadOptionsByKey) {
  EXPECT_NE(moelab::testing::error_message<moelab::ConfigError>([] {
              moelab::run::resolve_run_config({}, {"federated.aggregation=median"});
            }).find("federated.aggregation: unknown 'median'; expected fedavg, fedprox or expert_aware"),
            std::string::npos);
  EXPECT_NE(moelab::testing::error_message<moelab::ConfigError>([] {
              moelab::run::resolve_run_config({}, {"federated.participation=0"});
            }).find("federated.participation: must be in (0, 1]"),
            std::string::npos);
  EXPECT_NE(moelab::testing::error_message<moelab::ConfigError>([] {
              moelab::run::resolve_run_config({}, {"federated.dp_noise_multiplier=1"});
            }).find("needs dp_clip > 0"),
            std::string::npos);
}

}  // namespace
