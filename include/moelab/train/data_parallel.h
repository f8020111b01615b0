// Data parallelism: every rank holds the same weights and computes its shard of each global
// batch (the global batch and its order do not depend on the number of ranks); after the
// backward pass of a step's last micro-batch the gradients are summed over ranks, each rank's
// loss having been scaled by its shard's share of the batch, so that every rank applies the
// gradient of the whole batch's mean loss and the weights stay identical, as in one process.
// With expert parallelism (parallel.expert) the routed experts are split over the ranks instead
// of copied, and only the other parameters' gradients are summed.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "moelab/train/step.h"
#include "moelab/util/collective.h"

namespace torch::optim {
class Optimizer;
}

namespace moelab::train {

/// The rows [begin, end) of a global batch of `batch_size` samples that `rank` of `world_size`
/// computes: contiguous shards in rank order whose sizes differ by at most one.
struct Shard {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};
Shard shard_of(int64_t batch_size, int rank, int world_size);

/// JSON states of sums (metric accumulators, expert tallies) added together: numbers add,
/// arrays element by element, objects key by key (a key on one side only is taken as it is),
/// null and [] are the empty sum. Anything else (strings, arrays of different lengths) is a logic error.
nlohmann::json add_json_sums(const nlohmann::json& a, const nlohmann::json& b);
/// Every number of `value` times `factor` (nulls stay null).
nlohmann::json scale_json(const nlohmann::json& value, double factor);

/// The sharded experts of a model trained expert-parallel (nn::MoELayer::shard_experts): which
/// parameters hold only this rank's E/W experts, and the exchanges a checkpoint needs to hold
/// whole experts (so that a run written by N ranks resumes on M, or on one process).
class ExpertShards {
 public:
  ExpertShards() = default;
  /// Shards every MoE layer of `model` with FFN experts over `group`.
  ExpertShards(Collective& group, torch::nn::Module& model);
  bool empty() const { return parameters_.empty(); }
  /// Whether `parameter` holds only this rank's experts.
  bool holds(const at::Tensor& parameter) const;
  /// The whole tensor (E, ...) of a sharded one (E/W, ...), on every rank (an exchange).
  at::Tensor gather(const at::Tensor& local) const;
  /// This rank's rows of a whole tensor.
  at::Tensor slice(const at::Tensor& whole) const { return whole.narrow(0, first_, local_).clone(); }
  /// Whole values of the sharded parameters by name, for a checkpoint (an exchange).
  std::map<std::string, at::Tensor> whole_parameters() const;
  /// Names of the sharded parameters.
  bool holds_name(const std::string& name) const { return names_.count(name) > 0; }
  /// The optimiser's per-parameter state of the sharded parameters made whole (`whole` true,
  /// before saving it) or this rank's again (after saving, or after loading a whole one).
  /// AdamW and SGD states; every rank calls it together.
  void convert_optimizer_state(torch::optim::Optimizer& optimizer, bool whole) const;

 private:
  Collective* group_ = nullptr;
  int64_t first_ = 0, local_ = 0, total_ = 0;
  std::vector<std::pair<std::string, at::Tensor>> parameters_;
  std::set<std::string> names_;
  std::set<const void*> impls_;  // the parameters' TensorImpls: holds() runs per parameter per step
};

/// StepOptions::sync for data parallelism. The gradients travel in buckets of about
/// `bucket_bytes` (the first at most 1 MB), in the reverse order of the model's parameters, the
/// order the backward pass produces them: during the step's last backward pass a hook on each
/// parameter copies its gradient into its bucket, and a bucket whose gradients are all there
/// starts its sum over ranks at once (after the buckets before it, so every rank starts the same
/// sequence) while the backward pass goes on, as PyTorch's DDP does. synchronise() sends the
/// buckets still waiting for a gradient: a parameter without one on this rank (an expert no
/// local token chose) takes part with zeros, and is left without a gradient only if no rank had
/// one, as in one process. The routing load counts of aux-free routers are summed too, so every
/// rank moves its biases alike; the step's finite flag and loss sums become the global batch's.
class DataParallelSync : public GradientSync {
 public:
  /// `experts`: parameters that hold this rank's experts only (their gradients arrive whole
  /// through the experts' all-to-all and are not summed again); may be empty. Parameters that
  /// do not require a gradient (frozen ones) are not sent.
  DataParallelSync(Collective& collective, torch::nn::Module& model, int64_t batch_size,
                   const ExpertShards* experts = nullptr, int64_t bucket_bytes = int64_t{25} << 20);
  ~DataParallelSync() override;
  DataParallelSync(const DataParallelSync&) = delete;
  DataParallelSync& operator=(const DataParallelSync&) = delete;
  /// The factor each rank's loss is multiplied by before its backward pass (StepOptions::
  /// loss_scale): its shard's share of the batch, so that the sums over ranks are the batch's.
  double loss_scale() const { return share_; }
  void before_last_backward() override;
  void synchronise(torch::nn::Module& model, StepResult& result) override;
  void clip_gradients(torch::nn::Module& model, double max_norm) override;
  /// Seconds spent in synchronise since construction: the communication of data parallelism
  /// that the backward pass did not hide.
  double seconds() const { return seconds_; }
  /// The number of buckets, and how many of them started during backward passes so far.
  int64_t buckets() const { return static_cast<int64_t>(buckets_.size()); }
  int64_t buckets_started_early() const { return started_early_; }

 private:
  struct Slot {  // a parameter's place in its bucket
    at::Tensor param;
    size_t bucket = 0;
    int64_t offset = 0;
    bool ready = false;
  };
  struct Bucket {
    at::Tensor flat;  // (elements) of the parameters' dtype
    std::vector<size_t> slots;
    size_t waiting = 0;
    std::unique_ptr<PendingSum> sum;
  };
  void on_gradient(size_t slot, const at::Tensor& grad);
  void start_ready_buckets();
  void start(size_t bucket);

  Collective& collective_;
  const ExpertShards* experts_;
  double share_;  // this rank's shard size / the global batch size
  std::vector<Slot> slots_;
  std::vector<Bucket> buckets_;
  std::vector<unsigned> hooks_;
  std::mutex hook_mutex_;
  bool armed_ = false;  // inside the step's last backward pass
  size_t next_bucket_ = 0;
  int64_t started_early_ = 0;
  double seconds_ = 0;
};

}  // namespace moelab::train
