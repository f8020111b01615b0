// What moelab needs from a group of processes that train one model together: their number,
// this one's rank, sums over ranks, texts gathered from every rank, and rows exchanged between
// ranks. dist/ implements it on PyTorch's c10d (Gloo on CPU, NCCL on GPU); the layers below use
// it without knowing the transport (data parallelism in train/, expert parallelism in nn/), and
// no Collective at all means one process.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace moelab {

class Collective {
 public:
  virtual ~Collective() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  /// Replaces each tensor (contiguous) by its sum over ranks; every rank passes the same shapes
  /// in the same order. The tensors travel concurrently.
  virtual void all_reduce_sum(std::vector<at::Tensor>& tensors) = 0;
  /// Every rank's `text`, in rank order.
  virtual std::vector<std::string> all_gather_text(const std::string& text) = 0;
  /// Rows exchanged between all ranks: the first send_counts[0] rows of `input` (N, ...) go to
  /// rank 0, the next send_counts[1] to rank 1, ...; returns the rows received, rank 0's first,
  /// recv_counts[r] of them from rank r. Any count may be 0, on any rank.
  virtual at::Tensor all_to_all_rows(const at::Tensor& input, const std::vector<int64_t>& send_counts,
                                     const std::vector<int64_t>& recv_counts) = 0;
};

}  // namespace moelab
