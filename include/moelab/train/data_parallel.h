// Data parallelism: every rank holds the same weights and computes its shard of each global
// batch (the global batch and its order do not depend on the number of ranks); after the
// backward pass of a step's last micro-batch the gradients are summed over ranks, each rank's
// scaled by its shard's share of the batch, so that every rank applies the gradient of the whole
// batch's mean loss and the weights stay identical, as in one process.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>

#include "moelab/train/step.h"
#include "moelab/util/collective.h"

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

/// StepOptions::sync for data parallelism. Gradients travel in buckets of about `bucket_bytes`
/// (all sent, then all awaited); a parameter without a gradient on this rank (an expert no local
/// token chose) takes part with zeros, and is left without one only if no rank had one, as in
/// one process. The routing load counts of aux-free routers are summed too, so every rank moves
/// its biases alike; the step's finite flag and loss sums become the global batch's.
class DataParallelSync : public GradientSync {
 public:
  DataParallelSync(Collective& collective, int64_t batch_size, int64_t bucket_bytes = int64_t{25} << 20);
  void synchronise(torch::nn::Module& model, StepResult& result) override;
  /// Seconds spent in synchronise since construction: the communication of data parallelism.
  double seconds() const { return seconds_; }

 private:
  Collective& collective_;
  double share_;  // this rank's shard size / the global batch size
  int64_t bucket_bytes_;
  double seconds_ = 0;
};

}  // namespace moelab::train
