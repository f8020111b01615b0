// Dispatch and combine: from routing decisions to rows grouped by expert, and back.
//
// Legend: N tokens, k experts per token, E experts, S kept (token, expert) slots, C capacity.
//
// A DispatchPlan lists the kept slots sorted by expert (stable), so each expert's rows are one
// contiguous slice of the gathered input and experts run as plain GEMMs. No (N, E, C) one-hot
// tensors are built (GShard's einsum formulation costs more than the experts on CPU). Gather and
// combine are parallel loops with a hand-written backward; combine sums each token's own slots,
// so no scatter needs atomics and results are deterministic.
//
// Capacity follows Tutel: capacity_factor > 0 gives C = ceil(cf * k * N / E); 0 gives C = the
// largest load (nothing dropped); < 0 gives min(ceil(|cf| * k * N / E), largest load).
#pragma once

#include <ATen/ATen.h>
#include <torch/arg.h>

#include <string>
#include <vector>

namespace moelab::nn {

enum class DropPolicy {
  kPosition,  // earlier tokens win; all first choices before any second choice (GShard, Tutel)
  kScore,     // higher combine weight wins (batch-prioritised routing, Riquelme et al. 2021)
};
DropPolicy parse_drop_policy(const std::string& name);  // "position" | "score"
std::string to_string(DropPolicy policy);

struct DispatchOptions {
  /// No capacity limit: every routed slot is computed. Default true.
  TORCH_ARG(bool, dropless) = true;
  /// With dropless = false: Tutel's capacity factor (see the file comment). Default 1.
  TORCH_ARG(double, capacity_factor) = 1.0;
  /// Which slots lose when an expert is over capacity. Default position.
  TORCH_ARG(DropPolicy, drop_policy) = DropPolicy::kPosition;
};

/// The kept slots of one batch, grouped by expert.
struct DispatchPlan {
  int64_t num_tokens = 0;
  int64_t num_experts = 0;
  at::Tensor token;   // (S) int64 source token of each slot, sorted by expert
  at::Tensor expert;  // (S) int64 expert of each slot, non-decreasing
  at::Tensor weight;  // (S) combine weight of each slot (differentiable into the router)
  at::Tensor counts;  // (E) int64 slots per expert
  std::vector<int64_t> counts_host;  // the same on the host, to slice by
  // The slots again, grouped by token, for the combine: slots_by_token[token_offsets[t] ..
  // token_offsets[t+1]) are token t's slots (positions into the arrays above).
  at::Tensor slots_by_token;  // (S) int64
  at::Tensor token_offsets;   // (N + 1) int64
  // Token-choice only: which of the (N, k) assignments survived capacity.
  at::Tensor kept;          // (N, k) bool
  int64_t capacity = -1;    // -1 = dropless
  int64_t num_assigned = 0; // slots before capacity
  int64_t num_dropped = 0;  // slots removed by capacity
  int64_t num_slots() const { return token.size(0); }
};

/// Capacity C per expert (see the file comment); max_load is the largest expert's load.
int64_t expert_capacity(double capacity_factor, int64_t num_tokens, int64_t k,
                        int64_t num_experts, int64_t max_load);

/// Plans token-choice routing. indices: (N, k) int64 in [0, E); weights: (N, k).
DispatchPlan plan_token_choice(const at::Tensor& indices, const at::Tensor& weights,
                               int64_t num_experts, const DispatchOptions& options = {});

/// Plans expert-choice routing. tokens: (E, C) int64 in [0, N); weights: (E, C).
DispatchPlan plan_expert_choice(const at::Tensor& tokens, const at::Tensor& weights,
                                int64_t num_tokens);

/// x: (N, ...) -> (S, ...): row s is x[plan.token[s]]. Differentiable in x.
at::Tensor gather_rows(const at::Tensor& x, const DispatchPlan& plan);

/// y: (S, ...), weight: (S) -> (N, ...): row t is the sum of weight[s] * y[s] over t's slots;
/// tokens without slots get zeros. Differentiable in y and weight.
at::Tensor combine_rows(const at::Tensor& y, const at::Tensor& weight, const DispatchPlan& plan);

}  // namespace moelab::nn
