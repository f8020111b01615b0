#include "moelab/train/step.h"

#include <torch/optim/optimizer.h>

#include <chrono>
#include <cmath>

#include "nn/internal/row_kernels.h"

namespace moelab::train {

bool is_finite(const at::Tensor& t) {
  // float32 on the CPU in one vector pass: LibTorch's isfinite().all().item() costs three ops and
  // a sync per tensor (1.3 ms a step for the 70 gradients of an 8-expert vision MoE).
  if (t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous()) {
    return nn::internal::row_kernels().all_finite_f32(t.data_ptr<float>(), t.numel());
  }
  return at::isfinite(t).all().item<bool>();
}

bool gradients_are_finite(const torch::nn::Module& module) {
  for (const auto& p : module.parameters()) {
    if (p.grad().defined() && !is_finite(p.grad())) return false;
  }
  return true;
}

namespace {

// The gradients' total 2-norm exactly as torch::nn::utils::clip_grad_norm_ computes it (the norm
// of the per-parameter norms, in the gradients' type).
at::Tensor total_gradient_norm(const std::vector<at::Tensor>& grads) {
  std::vector<at::Tensor> norms;
  norms.reserve(grads.size());
  for (const auto& grad : grads) norms.push_back(grad.norm(2));
  return norms.size() == 1 ? norms[0] : at::stack(norms).norm(2);
}

// The finite check and clip_grad_norm_ in one pass over the gradients: the norm is non-finite
// exactly when some element is (or when the squares overflow float, a step no clipping would
// save either). Scales as clip_grad_norm_ does, bit for bit, and skips its multiplication by
// exactly 1. Returns whether the gradients were finite.
bool clip_finite_gradients(const torch::nn::Module& model, double max_norm) {
  std::vector<at::Tensor> grads;
  for (const auto& p : model.parameters()) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  if (grads.empty()) return true;
  torch::NoGradGuard no_grad;
  const at::Tensor norm = total_gradient_norm(grads);
  if (!std::isfinite(norm.item<double>())) return false;
  const at::Tensor coefficient = at::clamp(max_norm / (norm + 1e-6), c10::nullopt, 1.0);
  if (coefficient.item<double>() < 1.0) {
    for (auto& grad : grads) grad.mul_(coefficient);
  }
  return true;
}

}  // namespace

void update_routing_biases(torch::nn::Module& model, double rate_scale) {
  for (auto& child : model.modules(/*include_self=*/false)) {
    if (auto* moe = dynamic_cast<nn::MoELayerImpl*>(child.get())) {
      moe->update_routing_bias(rate_scale);
    }
  }
}

StepTimes& StepTimes::operator+=(const StepTimes& other) {
  data += other.data;
  forward += other.forward;
  backward += other.backward;
  sync += other.sync;
  checks += other.checks;
  optimizer += other.optimizer;
  observer += other.observer;
  return *this;
}

namespace {
// Adds the seconds since the last call to the slot named, when timing is on.
class PhaseClock {
 public:
  explicit PhaseClock(StepTimes* times) : times_(times) {
    if (times_) last_ = std::chrono::steady_clock::now();
  }
  void charge(double StepTimes::*slot) {
    if (!times_) return;
    const auto now = std::chrono::steady_clock::now();
    times_->*slot += std::chrono::duration<double>(now - last_).count();
    last_ = now;
  }

 private:
  StepTimes* times_;
  std::chrono::steady_clock::time_point last_;
};

// Every parameter's gradient set to none, as LibTorch 2.x's zero_grad() does by default and
// 1.13's does not (it zeroes them in place): so the same config trains the same way on either
// version. A parameter without a gradient in a step (an idle module expert) is then left alone
// by the optimizer, as in PyTorch 2.x, and the next backward hands each gradient over instead of
// adding it to zeros (a zeroing pass and an add pass over every gradient saved).
void clear_gradients(torch::optim::Optimizer& optimizer) {
  for (auto& group : optimizer.param_groups()) {
    for (auto& p : group.params()) p.mutable_grad() = at::Tensor();
  }
}
}  // namespace

StepResult train_step(models::Model& model, torch::optim::Optimizer& optimizer, const Task& task,
                      const std::function<data::Batch()>& next_batch, const StepOptions& options,
                      const std::function<void(const MicroBatch&)>& observe) {
  StepResult result;
  PhaseClock clock(options.times);
  clear_gradients(optimizer);
  clock.charge(&StepTimes::optimizer);
  for (int64_t micro = 0; micro < options.grad_accumulation; ++micro) {
    const data::Batch batch = next_batch();
    clock.charge(&StepTimes::data);
    at::Tensor sample_loss, task_loss, loss;
    models::ModelOutput output;
    {
      AutocastScope autocast(options.precision);
      output = model.forward(batch);
      sample_loss = task.sample_loss(output, batch);
      task_loss = sample_loss.mean();
      loss = task_loss + output.aux_loss.to(at::kFloat);
    }
    clock.charge(&StepTimes::forward);
    if (options.sync && micro + 1 == options.grad_accumulation) options.sync->before_last_backward();
    (loss * (options.loss_scale / static_cast<double>(options.grad_accumulation))).backward();
    clock.charge(&StepTimes::backward);
    const double loss_value = loss.item<double>();
    result.loss_sum += loss_value;
    result.task_loss_sum += task_loss.item<double>();
    result.aux_loss_sum += output.aux_loss.item<double>();
    result.finite = result.finite && std::isfinite(loss_value);
    if (observe) {
      const at::Tensor detached_sample = sample_loss.detach(), detached_task = task_loss.detach(),
                       detached_loss = loss.detach();
      observe({batch, output, detached_sample, detached_task, detached_loss});
    }
    clock.charge(&StepTimes::observer);
  }
  if (options.sync) {
    options.sync->synchronise(model, result);
    clock.charge(&StepTimes::sync);
  }
  const bool clip_alone = options.clip_grad_norm > 0 && !options.sync;
  if (clip_alone) {
    result.finite = result.finite && clip_finite_gradients(model, options.clip_grad_norm);
  } else {
    result.finite = result.finite && gradients_are_finite(model);
  }
  if (!result.finite) {
    clear_gradients(optimizer);
    clock.charge(&StepTimes::checks);
    return result;
  }
  if (options.clip_grad_norm > 0 && options.sync) options.sync->clip_gradients(model, options.clip_grad_norm);
  clock.charge(&StepTimes::checks);
  optimizer.step();
  update_routing_biases(model, options.routing_bias_scale);
  clock.charge(&StepTimes::optimizer);
  return result;
}

}  // namespace moelab::train
