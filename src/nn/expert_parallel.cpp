#include "moelab/nn/expert_parallel.h"

#include <torch/autograd.h>

#include <numeric>

namespace moelab::nn {

namespace {

class AllToAllRows : public torch::autograd::Function<AllToAllRows> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            int64_t group_address, std::vector<int64_t> send_counts,
                            std::vector<int64_t> recv_counts) {
    ctx->saved_data["group"] = group_address;
    ctx->saved_data["send"] = send_counts;
    ctx->saved_data["recv"] = recv_counts;
    auto* group = reinterpret_cast<Collective*>(group_address);
    return group->all_to_all_rows(input.contiguous(), send_counts, recv_counts);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* group = reinterpret_cast<Collective*>(ctx->saved_data["group"].toInt());
    const std::vector<int64_t> send = ctx->saved_data["send"].toIntVector();
    const std::vector<int64_t> recv = ctx->saved_data["recv"].toIntVector();
    // The rows came in along `recv` routes; their gradients go back along them.
    return {group->all_to_all_rows(grads[0].contiguous(), recv, send), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

}  // namespace

at::Tensor all_to_all_rows(Collective& group, const at::Tensor& input,
                           const std::vector<int64_t>& send_counts,
                           const std::vector<int64_t>& recv_counts) {
  return AllToAllRows::apply(input, reinterpret_cast<int64_t>(&group), send_counts, recv_counts);
}

at::Tensor run_experts_parallel(Collective& group, const at::Tensor& dispatched,
                                const std::vector<int64_t>& counts, const LocalExperts& local_experts) {
  const int64_t world = group.world_size();
  const int64_t num_experts = static_cast<int64_t>(counts.size());
  TORCH_CHECK(num_experts % world == 0, "expert parallel: ", num_experts,
              " experts do not split evenly over ", world, " ranks");
  const int64_t local = num_experts / world;
  TORCH_CHECK(dispatched.size(0) == std::accumulate(counts.begin(), counts.end(), int64_t{0}),
              "expert parallel: ", dispatched.size(0), " rows but the counts add up to ",
              std::accumulate(counts.begin(), counts.end(), int64_t{0}));

  // How many rows each rank sends to each other rank's experts: (W, E/W) -> received (W, E/W),
  // row q = the rows rank q sends to each of this rank's experts.
  at::Tensor counts_out = at::tensor(counts, at::kLong).view({world, local});
  const at::Tensor counts_in =
      group.all_to_all_rows(counts_out, std::vector<int64_t>(world, 1), std::vector<int64_t>(world, 1))
          .contiguous();
  const int64_t* from = counts_in.data_ptr<int64_t>();
  std::vector<int64_t> send(world, 0), recv(world, 0), local_counts(local, 0);
  for (int64_t r = 0; r < world; ++r) {
    for (int64_t j = 0; j < local; ++j) {
      send[r] += counts[r * local + j];
      recv[r] += from[r * local + j];
      local_counts[j] += from[r * local + j];
    }
  }

  const at::Tensor received = all_to_all_rows(group, dispatched, send, recv);  // (R, D) by source
  // By source rank then local expert -> by local expert then source rank, for the experts.
  std::vector<int64_t> order;
  order.reserve(static_cast<size_t>(received.size(0)));
  std::vector<int64_t> source_start(world, 0);
  for (int64_t q = 1; q < world; ++q) source_start[q] = source_start[q - 1] + recv[q - 1];
  for (int64_t j = 0; j < local; ++j) {
    for (int64_t q = 0; q < world; ++q) {
      int64_t start = source_start[q];
      for (int64_t i = 0; i < j; ++i) start += from[q * local + i];
      for (int64_t i = 0; i < from[q * local + j]; ++i) order.push_back(start + i);
    }
  }
  const at::Tensor by_expert = at::tensor(order, at::kLong);
  const at::Tensor computed = local_experts(received.index_select(0, by_expert), local_counts);
  // Back to the order the rows came in, then home.
  const at::Tensor by_source = at::empty_like(by_expert);
  if (by_expert.numel() > 0) by_source.index_put_({by_expert}, at::arange(by_expert.numel(), at::kLong));
  return all_to_all_rows(group, computed.index_select(0, by_source), recv, send);
}

}  // namespace moelab::nn
