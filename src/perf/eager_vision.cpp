#include "moelab/perf/eager_vision.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>

namespace moelab::perf {

namespace {

torch::nn::Sequential make_cnn(const EagerVisionOptions& o) {
  torch::nn::Sequential net;
  int64_t in = o.in_channels, side = o.image_size;
  for (int64_t s = 0; s < o.depth; ++s) {
    const int64_t out = std::max<int64_t>(1, std::llround(o.width * o.width_multiplier * std::pow(2.0, s)));
    net->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1)));
    net->push_back(torch::nn::ReLU());
    net->push_back(torch::nn::MaxPool2d(torch::nn::MaxPool2dOptions(2)));
    in = out;
    side /= 2;
  }
  net->push_back(torch::nn::Flatten());
  const int64_t hidden = o.hidden > 0 ? std::max<int64_t>(1, std::llround(o.hidden * o.width_multiplier)) : 0;
  if (hidden > 0) {
    net->push_back(torch::nn::Linear(in * side * side, hidden));
    net->push_back(torch::nn::ReLU());
    net->push_back(torch::nn::Linear(hidden, o.num_classes));
  } else {
    net->push_back(torch::nn::Linear(in * side * side, o.num_classes));
  }
  return net;
}

struct EagerVisionNet : torch::nn::Module {
  explicit EagerVisionNet(const EagerVisionOptions& o) : o_(o) {
    if (o.num_experts == 0) {
      dense = register_module("dense", make_cnn(o));
      return;
    }
    const int64_t w = o.router_width;
    router = register_module("router", torch::nn::Sequential(
        torch::nn::Conv2d(torch::nn::Conv2dOptions(o.in_channels, w, 3).stride(2).padding(1)), torch::nn::ReLU(),
        torch::nn::Conv2d(torch::nn::Conv2dOptions(w, 2 * w, 3).stride(2).padding(1)), torch::nn::ReLU()));
    score = register_module("score", torch::nn::Linear(2 * w, o.num_experts));
    for (int64_t e = 0; e < o.num_experts; ++e) experts.push_back(register_module("expert" + std::to_string(e), make_cnn(o)));
  }

  // Logits (B, classes) and the load-balancing loss.
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& images) {
    if (dense) return {dense->forward(images), torch::zeros({})};
    const auto probs = torch::softmax(score->forward(router->forward(images).mean({2, 3})), -1);
    auto [weights, chosen] = probs.topk(o_.top_k, -1);
    if (o_.normalize_weights) weights = weights / weights.sum(-1, true);
    auto out = torch::zeros({images.size(0), o_.num_classes}, images.options());
    for (int64_t e = 0; e < o_.num_experts; ++e) {
      const auto hits = (chosen == e).nonzero();  // (n, 2): image, slot
      if (hits.size(0) == 0) continue;
      const auto rows = hits.select(1, 0), slots = hits.select(1, 1);
      const auto gate = weights.index({rows, slots}).unsqueeze(1);
      out = out.index_add(0, rows, experts[e]->forward(images.index_select(0, rows)) * gate);
    }
    // Switch: E * sum_e (fraction of images whose first choice is e) * (mean probability of e).
    const auto fraction = torch::one_hot(chosen.select(1, 0), o_.num_experts).to(torch::kFloat).mean(0);
    const auto balance = o_.num_experts * (fraction * probs.mean(0)).sum();
    return {out, balance};
  }

  EagerVisionOptions o_;
  torch::nn::Sequential dense{nullptr}, router{nullptr};
  torch::nn::Linear score{nullptr};
  std::vector<torch::nn::Sequential> experts;
};

}  // namespace

double eager_vision_train_ms_per_step(const EagerVisionOptions& options, int64_t steps, int64_t warmup) {
  torch::manual_seed(options.seed);
  auto net = std::make_shared<EagerVisionNet>(options);
  torch::optim::AdamW optimizer(net->parameters(),
                                torch::optim::AdamWOptions(options.lr).weight_decay(options.weight_decay));
  const auto images = torch::randn({options.batch_size, options.in_channels, options.image_size, options.image_size});
  const auto labels = torch::randint(options.num_classes, {options.batch_size});
  using Clock = std::chrono::steady_clock;
  Clock::time_point start;
  for (int64_t step = 0; step < warmup + steps; ++step) {
    if (step == warmup) start = Clock::now();
    optimizer.zero_grad();
    auto [logits, balance] = net->forward(images);
    const auto loss = torch::cross_entropy_loss(logits, labels) + options.load_balance * balance;
    loss.backward();
    optimizer.step();
  }
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count() / static_cast<double>(std::max<int64_t>(steps, 1));
}

}  // namespace moelab::perf
