#include "moelab/nn/feed_forward.h"

namespace moelab::nn {

FeedForwardImpl::FeedForwardImpl(FeedForwardOptions options_) : options(std::move(options_)) {
  reset();
}

void FeedForwardImpl::reset() {
  TORCH_CHECK(options.d_model() >= 1, "FeedForward: d_model (", options.d_model(),
              ") must be >= 1");
  TORCH_CHECK(options.d_ff() >= 1, "FeedForward: d_ff (", options.d_ff(), ") must be >= 1");
  auto linear = [&](int64_t in, int64_t out) {
    return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(options.bias()));
  };
  w1 = register_module("w1", linear(options.d_model(), options.d_ff()));
  w2 = register_module("w2", linear(options.d_ff(), options.d_model()));
  if (is_gated(options.activation())) {
    w3 = register_module("w3", linear(options.d_model(), options.d_ff()));
  }
}

void FeedForwardImpl::pretty_print(std::ostream& stream) const {
  stream << "moelab::nn::FeedForward(d_model=" << options.d_model() << ", d_ff=" << options.d_ff()
         << ", activation=" << to_string(options.activation()) << ", bias=" << options.bias()
         << ")";
}

at::Tensor FeedForwardImpl::forward(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == options.d_model(), "FeedForward: input's last dim (",
              x.dim() >= 1 ? x.size(-1) : 0, ") must equal d_model (", options.d_model(), ")");
  at::Tensor hidden = activate(w1->forward(x), options.activation());
  if (w3) hidden = hidden * w3->forward(x);
  return w2->forward(hidden);
}

}  // namespace moelab::nn
