#include "moelab/train/step.h"

#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/optimizer.h>

#include <cmath>

namespace moelab::train {

bool gradients_are_finite(const torch::nn::Module& module) {
  for (const auto& p : module.parameters()) {
    if (p.grad().defined() && !at::isfinite(p.grad()).all().item<bool>()) return false;
  }
  return true;
}

void update_routing_biases(torch::nn::Module& model, double rate_scale) {
  for (auto& child : model.modules(/*include_self=*/false)) {
    if (auto* moe = dynamic_cast<nn::MoELayerImpl*>(child.get())) {
      moe->update_routing_bias(rate_scale);
    }
  }
}

StepResult train_step(models::Model& model, torch::optim::Optimizer& optimizer, const Task& task,
                      const std::function<data::Batch()>& next_batch, const StepOptions& options,
                      const std::function<void(const MicroBatch&)>& observe) {
  StepResult result;
  optimizer.zero_grad();
  for (int64_t micro = 0; micro < options.grad_accumulation; ++micro) {
    const data::Batch batch = next_batch();
    at::Tensor sample_loss, task_loss, loss;
    models::ModelOutput output;
    {
      AutocastScope autocast(options.precision);
      output = model.forward(batch);
      sample_loss = task.sample_loss(output, batch);
      task_loss = sample_loss.mean();
      loss = task_loss + output.aux_loss.to(at::kFloat);
    }
    (loss / static_cast<double>(options.grad_accumulation)).backward();
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
  }
  result.finite = result.finite && gradients_are_finite(model);
  if (!result.finite) {
    optimizer.zero_grad();
    return result;
  }
  if (options.clip_grad_norm > 0) {
    torch::nn::utils::clip_grad_norm_(model.parameters(), options.clip_grad_norm);
  }
  optimizer.step();
  update_routing_biases(model, options.routing_bias_scale);
  return result;
}

}  // namespace moelab::train
