#include "moelab/train/evaluation.h"

#include <torch/torch.h>

#include "moelab/train/data_parallel.h"

namespace moelab::train {

namespace {

// Every rank's sums added, in rank order on every rank (so all of them hold the same result).
void gather_evaluation(Collective& collective, MetricAccumulator& metrics, Evaluation& result) {
  nlohmann::json mine{{"metrics", metrics.state()},
                      {"class_expert", nlohmann::json::array()},
                      {"expert_loss", tally_states(result.expert_loss)}};
  for (const auto& counts : result.class_expert) mine["class_expert"].push_back(count_rows(counts));
  nlohmann::json merged_metrics = nullptr, class_expert = nlohmann::json::array(),
                 expert_loss = nlohmann::json::array();
  for (const auto& text : collective.all_gather_text(mine.dump())) {
    const nlohmann::json theirs = nlohmann::json::parse(text);
    merged_metrics = merged_metrics.is_null() ? theirs["metrics"] : metrics.add_states(merged_metrics, theirs["metrics"]);
    class_expert = add_json_sums(class_expert, theirs["class_expert"]);
    expert_loss = add_json_sums(expert_loss, theirs["expert_loss"]);
  }
  metrics.load_state(merged_metrics);
  result.class_expert.clear();
  for (const auto& layer : class_expert) result.class_expert.push_back(counts_from_rows(layer));
  load_tally_states(result.expert_loss, expert_loss);
}

}  // namespace

Evaluation evaluate(models::Model& model, const data::DataSource& source, const Task& task,
                    int64_t batch_size, Precision precision, int64_t num_classes,
                    const EvaluationRanks& ranks) {
  Evaluation result;
  auto metrics = task.accumulator();
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  Collective* collective = ranks.collective && ranks.collective->world_size() > 1 ? ranks.collective : nullptr;
  for (int64_t start = 0; start < source.size(); start += batch_size) {
    const int64_t size = std::min(batch_size, source.size() - start);
    int64_t first = start, count = size;
    bool discard = false;
    if (collective) {
      const Shard shard = shard_of(size, collective->rank(), collective->world_size());
      first = start + shard.begin;
      count = shard.size();
      if (count == 0) {
        if (!ranks.lockstep) continue;
        count = 1;
        discard = true;
      }
    }
    const data::Batch batch = source.range(first, count);
    models::ModelOutput out;
    at::Tensor sample_loss;
    {
      // As in training: a loss that fuses the output projection computes it in this precision.
      AutocastScope autocast(precision);
      out = model.forward(batch);
      sample_loss = task.sample_loss(out, batch);
    }
    if (discard) continue;
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
  if (collective) gather_evaluation(*collective, *metrics, result);
  result.metrics = metrics->result();
  return result;
}

}  // namespace moelab::train
