#include "moelab/train/data_parallel.h"

#include <torch/nn/module.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "moelab/nn/moe_layer.h"
#include "moelab/nn/router.h"
#include "moelab/train/optimizer.h"

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

ExpertShards::ExpertShards(Collective& group, torch::nn::Module& model) : group_(&group) {
  for (const auto& item : model.named_modules()) {
    auto* moe = dynamic_cast<nn::MoELayerImpl*>(item.value().get());
    if (!moe || !moe->experts) continue;
    moe->shard_experts(std::shared_ptr<Collective>(&group, [](Collective*) {}));
    const int64_t total = moe->options.num_experts();
    TORCH_CHECK(total_ == 0 || total_ == total, "expert parallel: every MoE layer needs the same "
                "number of experts (", total_, " and ", total, ")");
    total_ = total;
  }
  if (total_ == 0) return;
  local_ = total_ / group.world_size();
  first_ = group.rank() * local_;
  // Names after sharding: the experts' parameters are new tensors.
  for (const auto& item : model.named_modules()) {
    auto* moe = dynamic_cast<nn::MoELayerImpl*>(item.value().get());
    if (!moe || !moe->experts) continue;
    const std::string prefix = item.key().empty() ? "experts." : item.key() + ".experts.";
    for (const auto& param : moe->experts->named_parameters()) {
      parameters_.emplace_back(prefix + param.key(), param.value());
      names_.insert(prefix + param.key());
      impls_.insert(param.value().unsafeGetTensorImpl());
    }
  }
}

bool ExpertShards::holds(const at::Tensor& parameter) const {
  return impls_.count(parameter.unsafeGetTensorImpl()) > 0;
}

at::Tensor ExpertShards::gather(const at::Tensor& local) const {
  std::vector<int64_t> shape = local.sizes().vec();
  shape[0] = total_;
  std::vector<at::Tensor> whole{at::zeros(shape, local.options())};
  whole[0].narrow(0, first_, local_).copy_(local.detach());
  group_->all_reduce_sum(whole);
  return whole[0];
}

std::map<std::string, at::Tensor> ExpertShards::whole_parameters() const {
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, p] : parameters_) out[name] = gather(p);
  return out;
}


void ExpertShards::convert_optimizer_state(torch::optim::Optimizer& optimizer, bool whole) const {
  auto convert = [&](const at::Tensor& t) {
    if (!t.defined()) return t;
    return whole ? gather(t) : slice(t);
  };
  for (const auto& [name, p] : parameters_) {
    auto& states = optimizer.state();
    const auto found = states.find(optimizer_state_key(states, p));
    // Every rank has a state for every expert parameter once a step ran: their gradients are
    // always defined (DataParallelSync), so the exchanges below happen on all ranks alike.
    if (found == states.end()) continue;
    if (auto* adamw = dynamic_cast<torch::optim::AdamWParamState*>(found->second.get())) {
      adamw->exp_avg(convert(adamw->exp_avg()));
      adamw->exp_avg_sq(convert(adamw->exp_avg_sq()));
      if (adamw->max_exp_avg_sq().defined()) adamw->max_exp_avg_sq(convert(adamw->max_exp_avg_sq()));
    } else if (auto* sgd = dynamic_cast<torch::optim::SGDParamState*>(found->second.get())) {
      sgd->momentum_buffer(convert(sgd->momentum_buffer()));
    } else {
      TORCH_CHECK(false, "expert parallel: cannot checkpoint this optimiser's state (AdamW and SGD can)");
    }
  }
}

DataParallelSync::DataParallelSync(Collective& collective, torch::nn::Module& model, int64_t batch_size,
                                   const ExpertShards* experts, int64_t bucket_bytes)
    : collective_(collective), experts_(experts) {
  TORCH_CHECK(batch_size >= collective.world_size(), "data parallel: the batch of ", batch_size,
              " samples is smaller than the ", collective.world_size(), " ranks");
  TORCH_CHECK(bucket_bytes > 0, "data parallel: bucket_bytes must be > 0");
  share_ = static_cast<double>(shard_of(batch_size, collective.rank(), collective.world_size()).size()) /
           static_cast<double>(batch_size);
  // Buckets in the reverse order of the parameters (the backward pass's order), one dtype each;
  // the first is small so that the exchange starts early.
  const int64_t first_bucket_bytes = std::min<int64_t>(bucket_bytes, int64_t{1} << 20);
  std::vector<at::Tensor> params = model.parameters();
  std::reverse(params.begin(), params.end());
  int64_t bytes = 0;
  for (auto& param : params) {
    if (!param.requires_grad() || (experts_ && experts_->holds(param))) continue;
    const int64_t size = param.numel() * static_cast<int64_t>(param.element_size());
    const int64_t cap = buckets_.size() <= 1 ? first_bucket_bytes : bucket_bytes;
    if (buckets_.empty() || bytes >= cap ||
        param.scalar_type() != slots_[buckets_.back().slots.front()].param.scalar_type()) {
      buckets_.emplace_back();
      bytes = 0;
    }
    Bucket& bucket = buckets_.back();
    Slot slot;
    slot.param = param;
    slot.bucket = buckets_.size() - 1;
    slot.offset = bucket.slots.empty() ? 0 : slots_[bucket.slots.back()].offset + slots_[bucket.slots.back()].param.numel();
    bucket.slots.push_back(slots_.size());
    slots_.push_back(slot);
    bytes += size;
  }
  for (auto& bucket : buckets_) {
    const Slot& last = slots_[bucket.slots.back()];
    bucket.flat = at::empty({last.offset + last.param.numel()}, last.param.options().requires_grad(false));
  }
  for (size_t i = 0; i < slots_.size(); ++i) {
    hooks_.push_back(slots_[i].param.register_hook([this, i](const at::Tensor& grad) { on_gradient(i, grad); }));
  }
}

DataParallelSync::~DataParallelSync() {
  for (size_t i = 0; i < hooks_.size(); ++i) slots_[i].param.remove_hook(hooks_[i]);
}

void DataParallelSync::before_last_backward() {
  armed_ = true;
  next_bucket_ = 0;
  for (auto& slot : slots_) slot.ready = false;
  for (auto& bucket : buckets_) {
    bucket.waiting = bucket.slots.size();
    bucket.sum.reset();
  }
}

// Hooks on leaves run before the gradient is added to .grad (which holds the earlier micro-
// batches' sum): the bucket gets the step's whole gradient.
void DataParallelSync::on_gradient(size_t index, const at::Tensor& grad) {
  if (!armed_ || !grad.defined()) return;
  // Experts run side by side run their backward passes on several threads at once.
  std::lock_guard<std::mutex> lock(hook_mutex_);
  Slot& slot = slots_[index];
  Bucket& bucket = buckets_[slot.bucket];
  TORCH_INTERNAL_ASSERT(!slot.ready && !bucket.sum, "data parallel: a second gradient for one parameter "
                        "in one backward pass");
  torch::NoGradGuard no_grad;
  at::Tensor view = bucket.flat.narrow(0, slot.offset, slot.param.numel()).view_as(slot.param);
  view.copy_(grad);
  if (slot.param.grad().defined()) view.add_(slot.param.grad());
  slot.ready = true;
  --bucket.waiting;
  start_ready_buckets();
}

void DataParallelSync::start_ready_buckets() {
  while (next_bucket_ < buckets_.size() && buckets_[next_bucket_].waiting == 0) {
    start(next_bucket_++);
    ++started_early_;
  }
}

void DataParallelSync::start(size_t index) {
  buckets_[index].sum = collective_.start_all_reduce_sum({buckets_[index].flat});
}

void DataParallelSync::clip_gradients(torch::nn::Module& model, double max_norm) {
  torch::NoGradGuard no_grad;
  // Squared norms: the replicated parameters' (the same on every rank) plus every rank's experts'.
  at::Tensor replicated = at::zeros({}, at::kDouble);
  std::vector<at::Tensor> experts{at::zeros({1}, at::kDouble)};
  std::vector<at::Tensor> grads;
  for (auto& param : model.parameters()) {
    if (!param.grad().defined()) continue;
    grads.push_back(param.grad());
    const at::Tensor square = param.grad().to(at::kDouble).pow(2).sum();
    if (experts_ && experts_->holds(param)) {
      experts[0] += square;
    } else {
      replicated += square;
    }
  }
  if (experts_ && !experts_->empty()) collective_.all_reduce_sum(experts);
  const double total = std::sqrt(replicated.item<double>() + experts[0].item<double>());
  // As torch::nn::utils::clip_grad_norm_ scales.
  const double coefficient = max_norm / (total + 1e-6);
  if (coefficient < 1) {
    for (auto& grad : grads) grad.mul_(coefficient);
  }
}

void DataParallelSync::synchronise(torch::nn::Module& model, StepResult& result) {
  const auto start_time = std::chrono::steady_clock::now();
  torch::NoGradGuard no_grad;
  if (!armed_) before_last_backward();  // called without the step's hook: every bucket starts here
  armed_ = false;
  if (experts_ && !experts_->empty()) {
    for (auto& param : model.parameters()) {
      if (!experts_->holds(param)) continue;
      // Whole already (the experts' all-to-all brought every rank's share); defined always, as
      // the single-process tensor of all experts would be.
      if (!param.grad().defined()) param.mutable_grad() = at::zeros_like(param);
      // A non-finite expert gradient on one rank makes every rank skip the step.
      if (result.finite && !is_finite(param.grad())) result.finite = false;
    }
  }
  // The buckets the backward pass did not complete: their missing gradients from .grad (no hook
  // ran: the parameter had no gradient in the last micro-batch) or zeros.
  for (size_t b = next_bucket_; b < buckets_.size(); ++b) {
    for (size_t i : buckets_[b].slots) {
      Slot& slot = slots_[i];
      if (slot.ready) continue;
      at::Tensor view = buckets_[b].flat.narrow(0, slot.offset, slot.param.numel());
      if (slot.param.grad().defined()) {
        view.copy_(slot.param.grad().reshape({-1}));
      } else {
        view.zero_();
      }
    }
    start(b);
  }
  next_bucket_ = buckets_.size();

  // Per parameter: whether this rank has a gradient; then the finite flag (0 = finite) and the
  // loss sums, scaled by this rank's share so that their sums over ranks are the batch's.
  const size_t p = slots_.size();
  at::Tensor header = at::zeros({static_cast<int64_t>(p) + 4}, at::kDouble);
  double* h = header.data_ptr<double>();
  for (size_t i = 0; i < p; ++i) h[i] = slots_[i].param.grad().defined() ? 1.0 : 0.0;
  h[p] = result.finite ? 0.0 : 1.0;  // summed: 0 only if every rank is finite
  h[p + 1] = share_ * result.loss_sum;
  h[p + 2] = share_ * result.task_loss_sum;
  h[p + 3] = share_ * result.aux_loss_sum;
  std::vector<at::Tensor> sent{header};
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
  for (size_t c = 0; c < load_counts.size(); ++c) load_counts[c].copy_(sent[1 + c]);
  // Each rank's loss was scaled by its share (StepOptions::loss_scale): the sums are the batch's.
  for (auto& bucket : buckets_) {
    bucket.sum->wait();
    bucket.sum.reset();
  }
  for (size_t i = 0; i < p; ++i) {
    Slot& slot = slots_[i];
    if (h[i] == 0.0) {
      slot.param.mutable_grad() = at::Tensor();  // no rank had a gradient
      continue;
    }
    const at::Tensor summed = buckets_[slot.bucket].flat.narrow(0, slot.offset, slot.param.numel()).view_as(slot.param);
    if (slot.param.grad().defined()) {
      slot.param.mutable_grad().copy_(summed);
    } else {
      slot.param.mutable_grad() = summed.clone();
    }
  }
  seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time).count();
}

}  // namespace moelab::train
