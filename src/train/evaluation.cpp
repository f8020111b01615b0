#include "moelab/train/evaluation.h"

#include <torch/torch.h>

namespace moelab::train {

Evaluation evaluate(models::Model& model, const data::DataSource& source, const Task& task,
                    int64_t batch_size, Precision precision, int64_t num_classes) {
  Evaluation result;
  auto metrics = task.accumulator();
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  for (int64_t start = 0; start < source.size(); start += batch_size) {
    const data::Batch batch = source.range(start, std::min(batch_size, source.size() - start));
    models::ModelOutput out;
    at::Tensor sample_loss;
    {
      // As in training: a loss that fuses the output projection computes it in this precision.
      AutocastScope autocast(precision);
      out = model.forward(batch);
      sample_loss = task.sample_loss(out, batch);
    }
    metrics->add(out, batch, sample_loss);
    if (num_classes > 0) {
      const at::Tensor& labels = batch.at(data::kTargets);
      result.class_expert.resize(out.moe_layers.size());
      result.expert_loss.resize(out.moe_layers.size());
      for (size_t l = 0; l < out.moe_layers.size(); ++l) {
        const at::Tensor counts =
            class_expert_counts(out.moe_layers[l].stats, labels, num_classes);
        result.class_expert[l] =
            result.class_expert[l].defined() ? result.class_expert[l] + counts : counts;
        result.expert_loss[l].add(out.moe_layers[l].stats, sample_loss);
      }
    }
  }
  model.train(was_training);
  result.metrics = metrics->result();
  return result;
}

}  // namespace moelab::train
