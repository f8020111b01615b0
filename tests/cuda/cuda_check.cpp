// Checks that need a GPU and a LibTorch with CUDA (an official CUDA LibTorch, or the one inside
// PyTorch's wheel); CI has neither, so this is not part of `make test`: tests/cuda/run.sh builds
// moelab against such a LibTorch and runs it (see that script). Exit status 0 when every check
// passed; each failed check prints one line.
//
//   1. Collectives on CUDA tensors go through NCCL beside Gloo's CPU ones: sums, background sums
//      and the all-to-all of rows, on every rank (WORLD_SIZE ranks, one GPU each by LOCAL_RANK).
//      Data parallelism's gradient buckets on GPU tensors.
//   2. The MoE layer on the GPU gives the CPU's outputs and gradients (float32, top-2 of 8), and
//      the fused pooling the CPU kernel's numbers.
//   3. CNN experts side by side on the CPU (two threads, this LibTorch's oneDNN) train as on one
//      thread, and do not hang (nn/internal/side_by_side.h says why they could).
//   4. The CNN's first stage (3x3 conv + ReLU + 2x2 max pool): its fused CPU version under this
//      LibTorch gives LibTorch's three ops' numbers (float64), and the GPU (LibTorch's ops in
//      the layout in_fast_conv_layout picks) the CPU's.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <thread>

#include "moelab/dist/process_group.h"
#include "moelab/nn/experts.h"
#include "moelab/nn/moe_layer.h"
#include "moelab/nn/pooling.h"
#include "moelab/train/data_parallel.h"

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    std::cerr << "FAILED: " << what << "\n";
    ++failures;
  } else {
    std::cout << "ok: " << what << "\n";
  }
}

void check_collectives(const moelab::dist::LaunchEnvironment& env) {
  moelab::dist::ProcessGroupCollective group(env, 60.0);
  const int r = group.rank(), n = group.world_size();
  const at::Device gpu(at::kCUDA, env.local_rank % static_cast<int>(torch::cuda::device_count()));
  const double ranks_sum = n * (n + 1) / 2.0;
  std::vector<at::Tensor> sums{at::arange(100000, at::TensorOptions(at::kFloat).device(gpu)) * (r + 1),
                               at::full({3}, 1.0 * (r + 1), at::kDouble)};  // one on the GPU, one on the CPU
  group.all_reduce_sum(sums);
  check(at::equal(sums[0].cpu(), at::arange(100000, at::kFloat) * ranks_sum), "NCCL all_reduce_sum");
  check(at::equal(sums[1], at::full({3}, ranks_sum, at::kDouble)), "Gloo all_reduce_sum beside it");
  at::Tensor bucket = at::full({1 << 20}, float(r + 1), at::TensorOptions(at::kFloat).device(gpu));
  auto pending = group.start_all_reduce_sum({bucket});
  pending->wait();
  check(at::equal(bucket.cpu(), at::full({1 << 20}, float(ranks_sum))), "NCCL start_all_reduce_sum");
  // Rank q sends (q + d) % 3 + 1 rows to rank d, row [q, d, i].
  std::vector<int64_t> send(n), recv(n);
  std::vector<at::Tensor> rows, expected;
  for (int d = 0; d < n; ++d) {
    send[d] = (r + d) % 3 + 1;
    recv[d] = (d + r) % 3 + 1;
    for (int64_t i = 0; i < send[d]; ++i) rows.push_back(at::tensor({float(r), float(d), float(i)}));
    for (int64_t i = 0; i < recv[d]; ++i) expected.push_back(at::tensor({float(d), float(r), float(i)}));
  }
  const at::Tensor received = group.all_to_all_rows(at::stack(rows).to(gpu), send, recv);
  check(received.is_cuda() && at::equal(received.cpu(), at::stack(expected)), "NCCL all_to_all_rows");

  // Data parallelism's gradient buckets on the GPU (NCCL) beside its CPU header (Gloo): every
  // rank runs the same batch, so the summed gradients are n times the local ones.
  torch::manual_seed(0);
  moelab::nn::MoELayerOptions options(/*d_model=*/32, /*d_ff=*/64, /*num_experts=*/4);
  options.router().kind(moelab::nn::RouterKind::kTopK).top_k(2);
  moelab::nn::MoELayer layer(options);
  layer->to(gpu);
  moelab::train::DataParallelSync sync(group, *layer, /*batch_size=*/n, nullptr, /*bucket_bytes=*/4096);
  const at::Tensor x = torch::randn({8, 32}).to(gpu);
  sync.before_last_backward();
  layer->forward(x).output.pow(2).sum().backward();
  std::map<std::string, at::Tensor> local;
  for (const auto& item : layer->named_parameters()) local[item.key()] = item.value().grad().clone();
  moelab::train::StepResult result;
  sync.synchronise(*layer, result);
  bool summed = true;
  for (const auto& item : layer->named_parameters()) {
    summed = summed && item.value().grad().is_cuda() && at::allclose(item.value().grad(), local[item.key()] * n);
  }
  check(summed && result.finite, "gradient buckets over NCCL (" + std::to_string(sync.buckets()) + " buckets, " +
                                   std::to_string(sync.buckets_started_early()) + " started during backward)");
  group.barrier();
}

void check_moe_layer_on_gpu() {
  torch::manual_seed(0);
  moelab::nn::MoELayerOptions options(/*d_model=*/64, /*d_ff=*/128, /*num_experts=*/8);
  options.router().kind(moelab::nn::RouterKind::kTopK).top_k(2);
  moelab::nn::MoELayer cpu_layer(options);
  auto gpu_layer = std::dynamic_pointer_cast<moelab::nn::MoELayerImpl>(cpu_layer->clone(at::Device(at::kCUDA)));
  const at::Tensor x = torch::randn({4, 16, 64});
  const at::Tensor x_cpu = x.clone().requires_grad_(true), x_gpu = x.cuda().requires_grad_(true);
  auto out_cpu = cpu_layer->forward(x_cpu), out_gpu = gpu_layer->forward(x_gpu);
  check(out_gpu.output.is_cuda(), "MoE layer output stays on the GPU");
  check(at::allclose(out_gpu.output.cpu(), out_cpu.output, 1e-4, 1e-5), "MoE layer output GPU == CPU");
  (out_cpu.output.pow(2).sum() + out_cpu.aux_loss).backward();
  (out_gpu.output.pow(2).sum() + out_gpu.aux_loss).backward();
  check(at::allclose(x_gpu.grad().cpu(), x_cpu.grad(), 1e-3, 1e-4), "MoE layer input gradient GPU == CPU");
  const at::Tensor images = torch::randn({4, 8, 28, 28});
  check(at::equal(moelab::nn::relu_max_pool2x2(images.cuda()).cpu(), moelab::nn::relu_max_pool2x2(images)),
        "fused ReLU + max pool: the GPU's (LibTorch's ops) == the CPU kernel's");
  const auto cpu_params = cpu_layer->named_parameters(), gpu_params = gpu_layer->named_parameters();
  for (const auto& item : cpu_params) {
    const at::Tensor& g = gpu_params[item.key()].grad();
    check(g.defined() && at::allclose(g.cpu(), item.value().grad(), 1e-3, 1e-4),
          "MoE layer gradient of " + item.key() + " GPU == CPU");
  }
}

struct SmallCnnImpl : torch::nn::Module {
  SmallCnnImpl()
      : conv1(register_module("conv1",
                              torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 8, 3).padding(1)))),
        conv2(register_module("conv2",
                              torch::nn::Conv2d(torch::nn::Conv2dOptions(8, 8, 3).stride(2)))),
        fc(register_module("fc", torch::nn::Linear(8 * 13 * 13, 3))) {}
  at::Tensor forward(const at::Tensor& x) { return fc(conv2(conv1(x).relu()).flatten(1)); }
  torch::nn::Conv2d conv1, conv2;
  torch::nn::Linear fc;
};
TORCH_MODULE(SmallCnn);

void check_cnn_experts_side_by_side_on_cpu() {
  std::thread([] {
    std::this_thread::sleep_for(std::chrono::seconds(120));
    std::cout << "FAILED: CNN experts side by side on the CPU still running after 120 s (a hang)"
              << std::endl;
    std::_Exit(3);
  }).detach();
  std::vector<torch::nn::AnyModule> modules;
  for (int e = 0; e < 4; ++e) modules.emplace_back(SmallCnn());
  moelab::nn::ModuleExperts experts(modules);
  const std::vector<int64_t> counts{20, 0, 35, 9};
  const at::Tensor x = torch::randn({64, 1, 28, 28});
  auto step = [&](int threads) {
    at::set_num_threads(threads);
    const at::Tensor y = experts->forward(x, counts);
    (y * y).sum().backward();
    std::vector<at::Tensor> out{y.detach()};
    for (auto& p : experts->parameters()) {
      out.push_back(p.grad().defined() ? p.grad().clone() : at::zeros_like(p));
      p.mutable_grad() = at::Tensor();
    }
    return out;
  };
  const auto one = step(1), two = step(2);
  bool same = one.size() == two.size();
  for (size_t i = 0; same && i < one.size(); ++i) same = at::allclose(one[i], two[i], 1e-4, 1e-5);
  check(same, "CNN experts side by side on the CPU (2 threads) == one thread");
}

// Output, weight and bias gradients of the stage for images x, under a fixed upstream gradient.
std::vector<at::Tensor> first_stage(const at::Tensor& x, const at::Tensor& weight,
                                    const at::Tensor& bias, bool moelab_version) {
  const at::Tensor w = weight.detach().requires_grad_(true), b = bias.detach().requires_grad_(true);
  const at::Tensor y = moelab_version ? moelab::nn::conv3x3_relu_max_pool2x2(x, w, b)
                                      : at::max_pool2d(at::relu(at::conv2d(x, w, b, 1, 1)), {2, 2});
  const at::Tensor upstream = at::linspace(-1, 1, y.numel(), y.options()).view_as(y);
  (y * upstream).sum().backward();
  return {y.detach().cpu(), w.grad().cpu(), b.grad().cpu()};
}

void check_first_cnn_stage() {
  torch::manual_seed(0);
  // 19 images: more than one group of 16 in the fused backward; odd sides and RGB.
  const at::Tensor x = torch::randn({19, 3, 13, 11}, at::kDouble);
  const at::Tensor w = torch::randn({17, 3, 3, 3}, at::kDouble),
                   b = torch::randn({17}, at::kDouble);
  const auto fused = first_stage(x, w, b, true), reference = first_stage(x, w, b, false);
  bool same = true;
  for (size_t i = 0; i < fused.size(); ++i)
    same = same && at::allclose(fused[i], reference[i], 1e-10, 1e-12);
  check(same,
        "first CNN stage fused on the CPU == conv2d + relu + max_pool2d (float64, this LibTorch)");
  // float64 on the GPU as well: cuDNN may compute float32 convolutions in TF32.
  const auto gpu = first_stage(x.cuda(), w.cuda(), b.cuda(), true);
  same = true;
  for (size_t i = 0; i < gpu.size(); ++i)
    same = same && at::allclose(gpu[i], fused[i], 1e-10, 1e-12);
  check(
      same,
      "first CNN stage on the GPU == the CPU's fused version (output, weight and bias gradients)");
}

}  // namespace

int main() {
  std::cout << "LibTorch " << TORCH_VERSION << ", CUDA available: " << torch::cuda::is_available()
            << ", devices: " << static_cast<int>(torch::cuda::device_count()) << "\n";
  if (!torch::cuda::is_available()) {
    std::cerr << "no CUDA device\n";
    return 2;
  }
  const moelab::dist::LaunchEnvironment env = moelab::dist::launch_environment();
  try {
    check_collectives(env);
  } catch (const std::exception& e) {
    check(false, std::string("collectives: ") + e.what());
  }
  if (env.rank == 0) {
    try {
      check_moe_layer_on_gpu();
    } catch (const std::exception& e) {
      check(false, std::string("MoE layer on the GPU: ") + e.what());
    }
    try {
      check_cnn_experts_side_by_side_on_cpu();
    } catch (const std::exception& e) {
      check(false, std::string("CNN experts side by side: ") + e.what());
    }
    try {
      check_first_cnn_stage();
    } catch (const std::exception& e) {
      check(false, std::string("first CNN stage: ") + e.what());
    }
  }
  std::cout << (failures == 0 ? "all checks passed" : std::to_string(failures) + " checks failed") << "\n";
  return failures == 0 ? 0 : 1;
}
