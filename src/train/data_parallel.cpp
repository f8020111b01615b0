#include "moelab/train/data_parallel.h"

#include <torch/nn/module.h>

#include <chrono>

#include "moelab/nn/router.h"

namespace moelab::train {

Shard shard_of(int64_t batch_size, int rank, int world_size) {
  TORCH_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, "shard_of: rank ", rank,
              " of world size ", world_size);
  return {batch_size * rank / world_size, batch_size * (rank + 1) / world_size};
}

nlohmann::json add_json_sums(const nlohmann::json& a, const nlohmann::json& b) {
  if (a.is_null() || (a.is_array() && a.empty())) return b;
  if (b.is_null() || (b.is_array() && b.empty())) return a;
  if (a.is_number() && b.is_number()) {
    if (a.is_number_integer() && b.is_number_integer()) return a.get<int64_t>() + b.get<int64_t>();
    return a.get<double>() + b.get<double>();
  }
  if (a.is_array() && b.is_array()) {
    TORCH_CHECK(a.size() == b.size(), "add_json_sums: arrays of ", a.size(), " and ", b.size(),
                " elements");
    nlohmann::json out = nlohmann::json::array();
    for (size_t i = 0; i < a.size(); ++i) out.push_back(add_json_sums(a[i], b[i]));
    return out;
  }
  if (a.is_object() && b.is_object()) {
    nlohmann::json out = a;
    for (const auto& [key, value] : b.items()) {
      out[key] = a.contains(key) ? add_json_sums(a[key], value) : value;
    }
    return out;
  }
  TORCH_CHECK(false, "add_json_sums: cannot add ", a.type_name(), " and ", b.type_name());
}

nlohmann::json scale_json(const nlohmann::json& value, double factor) {
  if (value.is_number()) return value.get<double>() * factor;
  if (value.is_array() || value.is_object()) {
    nlohmann::json out = value;
    for (auto& element : out) element = scale_json(element, factor);
    return out;
  }
  return value;
}

DataParallelSync::DataParallelSync(Collective& collective, int64_t batch_size, int64_t bucket_bytes)
    : collective_(collective), bucket_bytes_(bucket_bytes) {
  TORCH_CHECK(batch_size >= collective.world_size(), "data parallel: the batch of ", batch_size,
              " samples is smaller than the ", collective.world_size(), " ranks");
  share_ = static_cast<double>(shard_of(batch_size, collective.rank(), collective.world_size()).size()) /
           static_cast<double>(batch_size);
}

void DataParallelSync::synchronise(torch::nn::Module& model, StepResult& result) {
  const auto start = std::chrono::steady_clock::now();
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> params = model.parameters();
  // Per parameter: whether this rank has a gradient; then the finite flag (1 = finite) and the
  // loss sums, scaled by this rank's share so that their sums over ranks are the batch's.
  at::Tensor header = at::zeros({static_cast<int64_t>(params.size()) + 4}, at::kDouble);
  double* h = header.data_ptr<double>();
  for (size_t i = 0; i < params.size(); ++i) h[i] = params[i].grad().defined() ? 1.0 : 0.0;
  const size_t p = params.size();
  h[p] = result.finite ? 0.0 : 1.0;  // summed: 0 only if every rank is finite
  h[p + 1] = share_ * result.loss_sum;
  h[p + 2] = share_ * result.task_loss_sum;
  h[p + 3] = share_ * result.aux_loss_sum;

  // Gradients, scaled, in flat buckets of one dtype.
  std::vector<at::Tensor> grads;
  for (auto& param : params) {
    if (!param.grad().defined()) param.mutable_grad() = at::zeros_like(param);
    param.mutable_grad().mul_(share_);
    grads.push_back(param.grad());
  }
  std::vector<std::vector<size_t>> buckets;
  std::vector<at::Tensor> flats;
  {
    std::vector<size_t> current;
    int64_t bytes = 0;
    for (size_t i = 0; i < grads.size(); ++i) {
      const bool new_bucket = !current.empty() && (bytes >= bucket_bytes_ ||
                                                   grads[i].scalar_type() != grads[current[0]].scalar_type());
      if (new_bucket) {
        buckets.push_back(std::move(current));
        current.clear();
        bytes = 0;
      }
      current.push_back(i);
      bytes += grads[i].numel() * static_cast<int64_t>(grads[i].element_size());
    }
    if (!current.empty()) buckets.push_back(std::move(current));
  }
  std::vector<at::Tensor> sent{header};
  for (const auto& bucket : buckets) {
    std::vector<at::Tensor> parts;
    for (size_t i : bucket) parts.push_back(grads[i].reshape({-1}));
    sent.push_back(at::cat(parts));
  }
  // Aux-free routers' load counts since their last bias update.
  std::vector<at::Tensor> load_counts;
  for (auto& child : model.modules(/*include_self=*/true)) {
    if (auto* router = dynamic_cast<nn::RouterImpl*>(child.get())) {
      if (router->load_count.defined()) load_counts.push_back(router->load_count);
    }
  }
  for (auto& count : load_counts) sent.push_back(count.contiguous());
  collective_.all_reduce_sum(sent);

  h = sent[0].data_ptr<double>();
  result.finite = h[p] == 0.0;
  result.loss_sum = h[p + 1];
  result.task_loss_sum = h[p + 2];
  result.aux_loss_sum = h[p + 3];
  for (size_t b = 0; b < buckets.size(); ++b) {
    int64_t offset = 0;
    for (size_t i : buckets[b]) {
      const int64_t n = grads[i].numel();
      grads[i].copy_(sent[b + 1].narrow(0, offset, n).view_as(grads[i]));
      offset += n;
    }
  }
  for (size_t i = 0; i < p; ++i) {
    if (h[i] == 0.0) params[i].mutable_grad() = at::Tensor();  // no rank had a gradient
  }
  for (size_t c = 0; c < load_counts.size(); ++c) load_counts[c].copy_(sent[1 + buckets.size() + c]);
  seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace moelab::train
