#include "moelab/nn/experts.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moelab/nn/dropout.h"
#include "moelab/nn/feed_forward.h"
#include "moelab/util/runtime.h"
#include "support/naive_moe.h"

using moelab::nn::Activation;
using moelab::nn::FFNExperts;
using moelab::nn::FFNExpertsOptions;

namespace {

// The grouped FFN against the naive per-row reference, outputs and every gradient, float64.
void expect_grouped_matches_naive(Activation activation, bool bias,
                                  const std::vector<int64_t>& counts) {
  const int64_t experts = static_cast<int64_t>(counts.size());
  FFNExperts module(FFNExpertsOptions(4, 6, experts).activation(activation).bias(bias));
  module->to(torch::kDouble);
  int64_t rows = 0;
  for (int64_t c : counts) rows += c;
  at::Tensor x = torch::randn({rows, 4}, torch::kDouble).requires_grad_(true);
  at::Tensor probe = torch::randn({rows, 4}, torch::kDouble);

  at::Tensor fast = module->forward(x, counts);
  std::vector<at::Tensor> params;
  for (auto& p : module->parameters()) params.push_back(p);
  std::vector<at::Tensor> inputs = params;
  inputs.push_back(x);
  auto fast_grads = torch::autograd::grad({(fast * probe).sum()}, inputs);

  const moelab::testing::ExpertWeights w = moelab::testing::split_weights(module);
  std::vector<at::Tensor> naive_rows;
  int64_t offset = 0;
  for (int64_t e = 0; e < experts; ++e) {
    for (int64_t r = 0; r < counts[e]; ++r, ++offset) {
      naive_rows.push_back(moelab::testing::naive_expert(
          x[offset], w.slice(w.w1, e), w.slice(w.w3, e), w.slice(w.w2, e), w.slice(w.b1, e),
          w.slice(w.b3, e), w.slice(w.b2, e), activation));
    }
  }
  at::Tensor naive = naive_rows.empty() ? torch::zeros({0, 4}, torch::kDouble)
                                        : torch::stack(naive_rows);
  ASSERT_TRUE(torch::allclose(fast, naive, 1e-10, 1e-12));
  if (rows == 0) return;
  auto naive_grads =
      torch::autograd::grad({(naive * probe).sum()}, inputs, {}, false, false, true);
  for (size_t i = 0; i < inputs.size(); ++i) {
    at::Tensor expected = naive_grads[i].defined() ? naive_grads[i] : torch::zeros_like(inputs[i]);
    EXPECT_TRUE(torch::allclose(fast_grads[i], expected, 1e-10, 1e-12))
        << "gradient " << i << " for " << moelab::nn::to_string(activation);
  }
}

}  // namespace

TEST(FFNExpertsTest, MatchesNaiveReferenceForEveryActivation) {
  for (Activation a : {Activation::kReLU, Activation::kGELU, Activation::kSiLU,
                       Activation::kSwiGLU}) {
    for (bool bias : {false, true}) expect_grouped_matches_naive(a, bias, {3, 1, 4});
  }
}

TEST(FFNExpertsTest, ExpertsWithoutRowsCostNothingAndGetZeroGradients) {
  expect_grouped_matches_naive(Activation::kSwiGLU, true, {0, 5, 0, 2, 0});
  expect_grouped_matches_naive(Activation::kGELU, false, {0, 0, 0});
}

TEST(FFNExpertsTest, GradientsMatchFiniteDifferences) {
  FFNExperts module(FFNExpertsOptions(3, 4, 2).bias(true));
  module->to(torch::kDouble);
  at::Tensor x = torch::randn({5, 3}, torch::kDouble).requires_grad_(true);
  std::vector<at::Tensor> inputs{x};
  for (auto& p : module->parameters()) inputs.push_back(p);
  double error = moelab::testing::max_gradient_error(
      [&](const std::vector<at::Tensor>& in) { return module->forward(in[0], {2, 3}); }, inputs);
  EXPECT_LT(error, 1e-7);
}

// Many small experts run side by side on OpenMP's threads: the same numbers as one thread, in
// an autograd pass (the workers take the caller's grad mode) and under bf16 autocast.
TEST(FFNExpertsTest, ExpertsSideBySideOnTwoThreadsGiveOneThreadsNumbers) {
  const int threads = at::get_num_threads();
  FFNExperts module(FFNExpertsOptions(8, 16, 12));
  const std::vector<int64_t> counts{9, 11, 0, 10, 12, 8, 10, 10, 9, 11, 10, 10};
  const at::Tensor x = torch::randn({110, 8});
  auto run = [&](int n, moelab::Precision precision) {
    at::set_num_threads(n);
    const at::Tensor input = x.clone().requires_grad_(true);
    at::Tensor y;
    {
      moelab::AutocastScope autocast(precision);
      y = module->forward(input, counts);
    }
    y.to(at::kFloat).pow(2).sum().backward();
    std::vector<at::Tensor> out{y.detach(), input.grad()};
    for (auto& p : module->parameters()) {
      out.push_back(p.grad().clone());
      p.mutable_grad() = at::Tensor();
    }
    return out;
  };
  for (auto precision : {moelab::Precision::kFloat32, moelab::Precision::kBFloat16}) {
    const auto one = run(1, precision), two = run(2, precision);
    for (size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(at::equal(one[i], two[i])) << i;
  }
  at::set_num_threads(threads);
}

// bf16 expert rows are padded to multiples of 32 for the GEMMs (oneDNN compiles a kernel per
// shape): outputs and every gradient stay those of the float32 experts within bf16 rounding,
// with biases (padding rows then have non-zero activations, which must not leak), an idle
// expert, and counts on both sides of a multiple of 32.
TEST(FFNExpertsTest, Bf16RowsPaddedForTheGemmsKeepTheFloat32Numbers) {
  torch::manual_seed(5);
  const std::vector<int64_t> counts{33, 1, 0, 70, 32};
  for (Activation activation : {Activation::kSwiGLU, Activation::kGELU}) {
    FFNExperts module(FFNExpertsOptions(16, 24, 5).activation(activation).bias(true));
    const at::Tensor x = torch::randn({136, 16}), probe = torch::randn({136, 16});
    auto run = [&](moelab::Precision precision) {
      const at::Tensor input = x.clone().requires_grad_(true);
      at::Tensor y;
      {
        moelab::AutocastScope autocast(precision);
        y = module->forward(input.to(precision == moelab::Precision::kBFloat16 ? at::kBFloat16 : at::kFloat), counts);
      }
      (y.to(at::kFloat) * probe).sum().backward();
      std::vector<at::Tensor> out{y.detach().to(at::kFloat), input.grad()};
      for (auto& p : module->parameters()) {
        out.push_back(p.grad().clone());
        p.mutable_grad() = at::Tensor();
      }
      return out;
    };
    const auto reference = run(moelab::Precision::kFloat32), bf16 = run(moelab::Precision::kBFloat16);
    for (size_t i = 0; i < reference.size(); ++i) {
      const double scale = reference[i].abs().max().item<double>();
      EXPECT_LT((bf16[i] - reference[i]).abs().max().item<double>(), 0.03 * scale)
          << "tensor " << i << " for " << moelab::nn::to_string(activation);
    }
  }
}

TEST(FFNExpertsTest, ParametersHaveStableNamesAndShapes) {
  FFNExperts module(FFNExpertsOptions(4, 6, 3));
  auto named = module->named_parameters();
  ASSERT_EQ(named.size(), 2u);
  EXPECT_EQ(named["w_in"].sizes(), at::IntArrayRef({3, 12, 4}));  // gate rows, then up rows
  EXPECT_EQ(named["w_out"].sizes(), at::IntArrayRef({3, 4, 6}));
  EXPECT_TRUE(torch::equal(module->gate_weight(1), module->w_in[1].narrow(0, 0, 6)));
  EXPECT_TRUE(torch::equal(module->up_weight(1), module->w_in[1].narrow(0, 6, 6)));
  EXPECT_EQ(module->macs_per_row(), 3 * 4 * 6);
  FFNExperts relu(FFNExpertsOptions(4, 6, 3).activation(Activation::kReLU).bias(true));
  EXPECT_EQ(relu->named_parameters()["w_in"].sizes(), at::IntArrayRef({3, 6, 4}));
  EXPECT_EQ(relu->named_parameters()["b_in"].sizes(), at::IntArrayRef({3, 6}));
  EXPECT_EQ(relu->named_parameters()["b_out"].sizes(), at::IntArrayRef({3, 4}));
  EXPECT_THROWS_WITH(relu->up_weight(0), "relu experts have no up projection");
}

TEST(FFNExpertsTest, RejectsBadShapes) {
  FFNExperts module(FFNExpertsOptions(4, 6, 2));
  EXPECT_THROWS_WITH(module->forward(torch::randn({3, 5}), {1, 2}), "input must be (S, D=4)");
  EXPECT_THROWS_WITH(module->forward(torch::randn({3, 4}), {1, 1}),
                     "counts sum to 2 but the input has 3 rows");
  EXPECT_THROWS_WITH(module->forward(torch::randn({3, 4}), {3}), "counts has 1 entries for 2");
  EXPECT_THROWS_WITH(FFNExperts(FFNExpertsOptions(4, 0, 2)), "d_ff (0) must be >= 1");
}

TEST(ModuleExpertsTest, RunsEachExpertOnExactlyItsRows) {
  std::vector<torch::nn::AnyModule> modules;
  for (int e = 0; e < 3; ++e) modules.emplace_back(torch::nn::Linear(4, 2));
  moelab::nn::ModuleExperts experts(modules);
  at::Tensor x = torch::randn({5, 4});
  at::Tensor y = experts->forward(x, {2, 0, 3});
  EXPECT_EQ(y.sizes(), at::IntArrayRef({5, 2}));
  EXPECT_EQ(experts->last_rows_per_expert(), (std::vector<int64_t>{2, 0, 3}));
  auto first = experts->expert(0).get<torch::nn::Linear>();
  auto third = experts->expert(2).get<torch::nn::Linear>();
  EXPECT_TRUE(torch::allclose(y.narrow(0, 0, 2), first->forward(x.narrow(0, 0, 2))));
  EXPECT_TRUE(torch::allclose(y.narrow(0, 2, 3), third->forward(x.narrow(0, 2, 3))));
  EXPECT_EQ(experts->forward(torch::randn({0, 4}), {0, 0, 0}).sizes(), at::IntArrayRef({0, 2}));
}

namespace {

// Output, input gradient and every parameter gradient of module experts trained one step on
// `threads` threads (side by side from two threads on), each parameter's gradient cleared after.
std::vector<at::Tensor> module_experts_step(moelab::nn::ModuleExperts& experts, const at::Tensor& x,
                                            const std::vector<int64_t>& counts, bool input_gradient,
                                            int threads) {
  const int before = at::get_num_threads();
  at::set_num_threads(threads);
  const at::Tensor input = x.clone().requires_grad_(input_gradient);
  const at::Tensor y = experts->forward(input, counts);
  (y * y).sum().backward();
  std::vector<at::Tensor> out{y.detach()};
  if (input_gradient) out.push_back(input.grad());
  for (auto& p : experts->parameters()) {
    out.push_back(p.grad().defined() ? p.grad().clone() : at::Tensor());
    p.mutable_grad() = at::Tensor();
  }
  at::set_num_threads(before);
  return out;
}

// (n, 1, 8, 8) -> (n, 3): conv, ReLU, stride-2 conv, linear.
struct SmallCnnImpl : torch::nn::Module {
  SmallCnnImpl()
      : conv1(register_module("conv1",
                              torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 4, 3).padding(1)))),
        conv2(register_module("conv2",
                              torch::nn::Conv2d(torch::nn::Conv2dOptions(4, 4, 3).stride(2)))),
        fc(register_module("fc", torch::nn::Linear(4 * 3 * 3, 3))) {}
  at::Tensor forward(const at::Tensor& x) { return fc(conv2(conv1(x).relu()).flatten(1)); }
  torch::nn::Conv2d conv1;
  torch::nn::Conv2d conv2;
  torch::nn::Linear fc;
};
TORCH_MODULE(SmallCnn);

struct LinearDropoutImpl : torch::nn::Module {
  LinearDropoutImpl()
      : linear(register_module("linear", torch::nn::Linear(6, 6))),
        dropout(register_module("dropout", moelab::nn::Dropout(0.5))) {}
  at::Tensor forward(const at::Tensor& x) { return dropout(linear(x)); }
  torch::nn::Linear linear;
  moelab::nn::Dropout dropout;
};
TORCH_MODULE(LinearDropout);

}  // namespace

// Small CNN experts (oneDNN convolutions, whose weight-gradient kernel hung inside an OpenMP
// parallel region until each thread planned for one thread) side by side on two threads: the
// same outputs and gradients as one after another on one thread, for image rows that need no
// gradient (the node joins the graph through its parameters) and rows that do; an idle expert
// gets no gradient either way.
TEST(ModuleExpertsTest, CnnExpertsSideBySideOnTwoThreadsGiveOneThreadsNumbers) {
  torch::manual_seed(3);
  std::vector<torch::nn::AnyModule> modules;
  for (int e = 0; e < 4; ++e) modules.emplace_back(SmallCnn());
  moelab::nn::ModuleExperts experts(modules);
  const std::vector<int64_t> counts{5, 0, 9, 4};
  const at::Tensor x = torch::randn({18, 1, 8, 8});
  for (bool input_gradient : {false, true}) {
    const auto one = module_experts_step(experts, x, counts, input_gradient, 1);
    const auto two = module_experts_step(experts, x, counts, input_gradient, 2);
    ASSERT_EQ(one.size(), two.size());
    for (size_t i = 0; i < one.size(); ++i) {
      ASSERT_EQ(one[i].defined(), two[i].defined()) << i;
      if (one[i].defined()) EXPECT_TRUE(torch::allclose(one[i], two[i], 1e-5, 1e-6)) << i;
    }
    int undefined = 0;
    for (const auto& t : two) undefined += t.defined() ? 0 : 1;
    EXPECT_EQ(undefined, 6) << "the idle expert's 6 parameters get no gradient";
  }
  // Evaluation without autograd runs side by side too.
  at::set_num_threads(2);
  torch::NoGradGuard no_grad;
  const at::Tensor evaluated = experts->forward(x, counts);
  at::set_num_threads(1);
  EXPECT_TRUE(torch::allclose(evaluated, experts->forward(x, counts), 1e-5, 1e-6));
}

namespace {

// A linear expert that notes whether its last forward ran inside a parallel region.
struct RegionProbeImpl : torch::nn::Module {
  RegionProbeImpl() : linear(register_module("linear", torch::nn::Linear(4, 3))) {}
  at::Tensor forward(const at::Tensor& x) {
    ran_in_parallel_region = at::in_parallel_region();
    return linear(x);
  }
  torch::nn::Linear linear;
  bool ran_in_parallel_region = false;
};
TORCH_MODULE(RegionProbe);

// n probe experts; `probes` keeps a handle to each, to read where it ran.
moelab::nn::ModuleExperts probe_experts(int n, std::vector<RegionProbe>& probes) {
  std::vector<torch::nn::AnyModule> modules;
  for (int e = 0; e < n; ++e) {
    probes.emplace_back();
    modules.emplace_back(probes.back());
  }
  return moelab::nn::ModuleExperts(modules);
}

}  // namespace

// An expert holding more than its thread's share of the rows (an untrained router) runs alone,
// every thread inside it, before the others run side by side: otherwise one thread would work
// through it while the other waits. The numbers are those of one thread. Likewise one of three
// equal experts on two threads.
TEST(ModuleExpertsTest, AnExpertWithMoreThanItsThreadsShareRunsOnEveryThread) {
  torch::manual_seed(5);
  std::vector<RegionProbe> probes;
  moelab::nn::ModuleExperts experts = probe_experts(4, probes);
  const std::vector<int64_t> counts{2, 10, 3, 1};  // 10 of 16 rows: more than half
  const at::Tensor x = torch::randn({16, 4});
  const auto one = module_experts_step(experts, x, counts, true, 1);
  const auto two = module_experts_step(experts, x, counts, true, 2);
  EXPECT_FALSE(probes[1]->ran_in_parallel_region);
  EXPECT_TRUE(probes[0]->ran_in_parallel_region);
  EXPECT_TRUE(probes[2]->ran_in_parallel_region);
  EXPECT_TRUE(probes[3]->ran_in_parallel_region);
  ASSERT_EQ(one.size(), two.size());
  for (size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(torch::allclose(one[i], two[i])) << i;
  // Three equal experts on two threads: one of them first, then two side by side.
  module_experts_step(experts, x.narrow(0, 0, 15), {5, 0, 5, 5}, true, 2);
  EXPECT_FALSE(probes[0]->ran_in_parallel_region);
  EXPECT_TRUE(probes[2]->ran_in_parallel_region);
  EXPECT_TRUE(probes[3]->ran_in_parallel_region);
}

// Large experts run side by side too (the default has no row limit: two single-threaded GEMMs
// never wait at a barrier, docs/design.md), here 2,000 rows each.
TEST(ModuleExpertsTest, LargeExpertsRunSideBySide) {
  std::vector<RegionProbe> probes;
  moelab::nn::ModuleExperts experts = probe_experts(2, probes);
  const at::Tensor x = torch::randn({4000, 4});
  const auto one = module_experts_step(experts, x, {2000, 2000}, true, 1);
  const auto two = module_experts_step(experts, x, {2000, 2000}, true, 2);
  EXPECT_TRUE(probes[0]->ran_in_parallel_region);
  EXPECT_TRUE(probes[1]->ran_in_parallel_region);
  ASSERT_EQ(one.size(), two.size());
  for (size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(torch::allclose(one[i], two[i])) << i;
}

// Experts holding dropout draw their random numbers in expert order (one after another) while
// training: two threads give one thread's masks. Side by side they would be drawn largest expert
// first, in whatever order the threads reach them.
TEST(ModuleExpertsTest, ExpertsWithDropoutTrainInExpertOrder) {
  std::vector<torch::nn::AnyModule> modules;
  for (int e = 0; e < 4; ++e) {
    modules.emplace_back(LinearDropout());
  }
  moelab::nn::ModuleExperts experts(modules);
  const std::vector<int64_t> counts{3, 9, 5, 7};
  const at::Tensor x = torch::randn({24, 6});
  torch::manual_seed(11);
  const auto one = module_experts_step(experts, x, counts, true, 1);
  torch::manual_seed(11);
  const auto two = module_experts_step(experts, x, counts, true, 2);
  for (size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(at::equal(one[i], two[i])) << i;
}

TEST(FeedForwardTest, ComputesW2OfGatedActivation) {
  moelab::nn::FeedForward ffn(3, 5);
  at::Tensor x = torch::randn({2, 3});
  at::Tensor expected = ffn->w2(torch::silu(ffn->w1(x)) * ffn->w3(x));
  EXPECT_TRUE(torch::allclose(ffn->forward(x), expected));
  EXPECT_THROWS_WITH(ffn->forward(torch::randn({2, 4})), "input's last dim (4) must equal d_model (3)");
}
