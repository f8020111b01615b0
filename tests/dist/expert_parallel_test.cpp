// Expert parallelism over Gloo between real processes (label dist): a MoE layer whose experts are
// split over the ranks gives the single-process layer's outputs and gradients, also when every
// token picks experts of one rank (the other ranks send everything and receive nothing).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moelab/dist/process_group.h"
#include "moelab/nn/expert_parallel.h"
#include "moelab/nn/moe_layer.h"
#include "support/workers.h"

namespace {

// Rank q's tokens and output weights: (5 + 3q, 8), the same on every rank that asks.
at::Tensor ep_tokens(int q) {
  at::Generator gen = at::detail::createCPUGenerator(100 + q);
  return at::randn({5 + 3 * q, 8}, gen);
}
at::Tensor ep_output_weights(int q) {
  at::Generator gen = at::detail::createCPUGenerator(200 + q);
  return at::randn({5 + 3 * q, 8}, gen);
}

moelab::nn::MoELayer ep_layer(moelab::nn::RouterKind kind) {
  torch::manual_seed(0);
  moelab::nn::MoELayerOptions options(8, 16, 4);
  options.router().kind(kind).top_k(2);
  return moelab::nn::MoELayer(options);
}

// Compares this rank's expert-parallel layer with the whole layer run on every rank's tokens.
int check_expert_parallel(moelab::dist::ProcessGroupCollective& group, moelab::nn::RouterKind kind,
                          const std::string& label) {
  const int r = group.rank(), w = group.world_size();
  int failures = 0;
  auto check = [&](bool ok, const std::string& what) {
    if (!ok) {
      std::cerr << label << ", rank " << r << ": " << what << "\n";
      ++failures;
    }
  };
  moelab::nn::MoELayer whole = ep_layer(kind);
  at::Tensor reference_out, reference_x_grad;
  for (int q = 0; q < w; ++q) {
    at::Tensor x = ep_tokens(q).requires_grad_(true);
    at::Tensor out = whole->forward(x).output;
    (out * ep_output_weights(q)).sum().backward();
    if (q == r) {
      reference_out = out.detach();
      reference_x_grad = x.grad();
    }
  }
  moelab::nn::MoELayer sharded = ep_layer(kind);
  sharded->shard_experts(std::shared_ptr<moelab::Collective>(&group, [](moelab::Collective*) {}));
  at::Tensor x = ep_tokens(r).requires_grad_(true);
  at::Tensor out = sharded->forward(x).output;
  (out * ep_output_weights(r)).sum().backward();
  check(at::allclose(out, reference_out, 1e-5, 1e-6), "output");
  check(at::allclose(x.grad(), reference_x_grad, 1e-5, 1e-6), "input gradient");
  const int64_t local = 4 / w;
  check(sharded->experts->w_in.size(0) == local, "local expert count");
  check(at::allclose(sharded->experts->w_in.grad(), whole->experts->w_in.grad().narrow(0, r * local, local), 1e-5, 1e-6),
        "w_in gradient");
  check(at::allclose(sharded->experts->w_out.grad(), whole->experts->w_out.grad().narrow(0, r * local, local), 1e-5, 1e-6),
        "w_out gradient");
  // The router is replicated: its gradients from all ranks add up to the whole layer's.
  for (const auto& item : sharded->router->named_parameters()) {
    const std::string& name = item.key();
    const at::Tensor& p = item.value();
    std::vector<at::Tensor> summed{p.grad().defined() ? p.grad().clone() : at::zeros_like(p)};
    group.all_reduce_sum(summed);
    const at::Tensor expected = whole->router->named_parameters()[name].grad();
    check(expected.defined() ? at::allclose(summed[0], expected, 1e-5, 1e-6) : summed[0].abs().sum().item<double>() == 0,
          "router gradient " + name);
  }
  return failures;
}

}  // namespace

MOELAB_TEST_WORKER(expert_parallel_layer) {
  moelab::dist::ProcessGroupCollective group(moelab::dist::launch_environment(), 20.0);
  // Learned top-2 routing; then uniform routing: every token to experts 0 and 1, all on rank 0.
  return check_expert_parallel(group, moelab::nn::RouterKind::kTopK, "top_k") +
         check_expert_parallel(group, moelab::nn::RouterKind::kUniform, "uniform");
}

TEST(DistExpertParallelTest, ShardedExpertsGiveTheWholeLayersOutputsAndGradients) {
  for (int nproc : {2, 4}) {
    const auto run = moelab::testing::launch_workers("expert_parallel_layer", nproc);
    EXPECT_EQ(run.status, 0) << nproc << " ranks:\n" << run.output;
  }
}

TEST(DistExpertParallelTest, RefusesExpertsThatDoNotSplitEvenly) {
  struct ThreeRanks : moelab::Collective {
    int rank() const override { return 0; }
    int world_size() const override { return 3; }
    void all_reduce_sum(std::vector<at::Tensor>&) override {}
    std::unique_ptr<moelab::PendingSum> start_all_reduce_sum(std::vector<at::Tensor>) override { return nullptr; }
    std::vector<std::string> all_gather_text(const std::string& t) override { return {t, t, t}; }
    at::Tensor all_to_all_rows(const at::Tensor& in, const std::vector<int64_t>&,
                               const std::vector<int64_t>&) override {
      return in;
    }
  };
  moelab::nn::MoELayer layer = ep_layer(moelab::nn::RouterKind::kTopK);
  try {
    layer->shard_experts(std::make_shared<ThreeRanks>());
    ADD_FAILURE() << "no error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("4 experts do not split evenly over 3 ranks"), std::string::npos) << e.what();
  }
}
