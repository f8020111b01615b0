// Expert parallelism: the E experts of a MoE layer split over the W ranks of a group (rank r
// holds experts [r * E/W, (r + 1) * E/W)), each rank routing its own tokens. A layer's slots,
// already sorted by expert and so by the rank that holds it, travel there with an all-to-all of
// variable split sizes, are computed by that rank's experts, and travel back the same way; the
// backward pass sends the gradients along the reverse routes. A rank that sends or receives no
// rows takes part all the same (every rank calls every exchange, in the same order).
//
// Per token and chosen expert one row of D values goes out and one of D_out comes back (twice
// each again in the backward pass), plus E/W counts per pair of ranks and layer call.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <vector>

#include "moelab/util/collective.h"

namespace moelab::nn {

/// `local_experts(rows, counts)`: rows (R, D) sorted by this rank's experts, counts (E/W).
using LocalExperts = std::function<at::Tensor(const at::Tensor&, const std::vector<int64_t>&)>;

/// dispatched (S, D): rows sorted by global expert, counts[e] rows for expert e (E counts, E a
/// multiple of the group's size). Returns the experts' outputs (S, D_out) in the same order.
/// Differentiable in `dispatched` and in whatever `local_experts` computes with.
at::Tensor run_experts_parallel(Collective& group, const at::Tensor& dispatched,
                                const std::vector<int64_t>& counts, const LocalExperts& local_experts);

/// `input`'s rows exchanged as Collective::all_to_all_rows does, differentiably: the gradient
/// travels back along the reverse routes.
at::Tensor all_to_all_rows(Collective& group, const at::Tensor& input,
                           const std::vector<int64_t>& send_counts,
                           const std::vector<int64_t>& recv_counts);

}  // namespace moelab::nn
