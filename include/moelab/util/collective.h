// What moelab needs from a group of processes that train one model together: their number,
// this one's rank, sums over ranks, texts gathered from every rank, and rows exchanged between
// ranks. dist/ implements it on PyTorch's c10d (Gloo on CPU, NCCL on GPU); the layers below use
// it without knowing the transport (data parallelism in train/, expert parallelism in nn/), and
// no Collective at all means one process.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

namespace moelab {

/// A sum over ranks started by Collective::start_all_reduce_sum.
class PendingSum {
 public:
  virtual ~PendingSum() = default;
  /// Returns once the tensors hold their sums (a TrainingError if a rank was lost).
  virtual void wait() = 0;
};

class Collective {
 public:
  virtual ~Collective() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  /// Replaces each tensor (contiguous) by its sum over ranks; every rank passes the same shapes
  /// in the same order. The tensors travel concurrently.
  virtual void all_reduce_sum(std::vector<at::Tensor>& tensors) = 0;
  /// Starts replacing each tensor (contiguous) by its sum over ranks and returns at once, so that
  /// the sum travels while this rank computes (gradient buckets during the backward pass). These
  /// sums run on a channel of their own: the other methods may exchange meanwhile (expert
  /// parallelism's all-to-all in the same backward pass), but every rank must start the same
  /// sequence of these. The tensors are not to be touched before wait().
  virtual std::unique_ptr<PendingSum> start_all_reduce_sum(std::vector<at::Tensor> tensors) = 0;
  /// Every rank's `text`, in rank order.
  virtual std::vector<std::string> all_gather_text(const std::string& text) = 0;
  /// Rows exchanged between all ranks: the first send_counts[0] rows of `input` (N, ...) go to
  /// rank 0, the next send_counts[1] to rank 1, ...; returns the rows received, rank 0's first,
  /// recv_counts[r] of them from rank r. Any count may be 0, on any rank.
  virtual at::Tensor all_to_all_rows(const at::Tensor& input, const std::vector<int64_t>& send_counts,
                                     const std::vector<int64_t>& recv_counts) = 0;
};

}  // namespace moelab
