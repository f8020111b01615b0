// Builds an MoE layer through the installed library and checks one forward pass.
#include <moelab/nn/moe_layer.h>  // first: the installed header must stand alone
#include <torch/torch.h>

#include <iostream>

int main() {
  moelab::nn::MoELayerOptions options(8, 16, 4);
  options.router().top_k(2);
  moelab::nn::MoELayer layer(options);
  const auto out = layer->forward(torch::randn({5, 8}));
  const bool ok = out.output.sizes() == at::IntArrayRef({5, 8}) &&
                  out.stats.tokens_per_expert.sum().item<int64_t>() == 10;
  std::cout << (ok ? "consumer: moelab MoE layer ok" : "consumer: unexpected output") << "\n";
  return ok ? 0 : 1;
}
