#include "moelab/models/mlp_moe.h"

#include "moelab/config/fields.h"
#include "moelab/nn/options_yaml.h"

namespace moelab::models {

template <typename V>
void visit(V& v, MLPMoEOptions& o) {
  v.field("input_dim", o.input_dim());
  v.field("num_classes", o.num_classes());
  v.field("num_layers", o.num_layers());
  v.nested("moe", o.moe());
}
MOELAB_DEFINE_OPTIONS_YAML(MLPMoEOptions)

MLPMoEOptions::MLPMoEOptions() : moe_(64, 128, 4) {
  moe_.router().top_k(2);
}

MLPMoEImpl::MLPMoEImpl(MLPMoEOptions options_) : options(std::move(options_)) {
  TORCH_CHECK(options.input_dim() >= 1, "MLPMoE: input_dim (", options.input_dim(),
              ") must be >= 1");
  TORCH_CHECK(options.num_classes() >= 1, "MLPMoE: num_classes (", options.num_classes(),
              ") must be >= 1");
  TORCH_CHECK(options.num_layers() >= 1, "MLPMoE: num_layers (", options.num_layers(),
              ") must be >= 1");
  const int64_t width = options.moe().d_model();
  input = register_module("input", torch::nn::Linear(options.input_dim(), width));
  for (int64_t l = 0; l < options.num_layers(); ++l) {
    norms.push_back(register_module("norm" + std::to_string(l),
                                    torch::nn::LayerNorm(torch::nn::LayerNormOptions({width}))));
    blocks.push_back(register_module("moe" + std::to_string(l), nn::MoELayer(options.moe())));
  }
  final_norm = register_module("final_norm",
                               torch::nn::LayerNorm(torch::nn::LayerNormOptions({width})));
  head = register_module("head", torch::nn::Linear(width, options.num_classes()));
}

ModelOutput MLPMoEImpl::forward(const data::Batch& batch) {
  const at::Tensor& x = batch.at(data::kInputs);
  const at::Tensor mask = batch.get(data::kPaddingMask), token_ids = batch.get(data::kTokenIds);
  TORCH_CHECK(x.dim() == 2 && x.size(1) == options.input_dim(), "MLPMoE: input must be (B, ",
              options.input_dim(), "), got ", x.sizes());
  ModelOutput out;
  at::Tensor h = input->forward(x);
  out.aux_loss = at::zeros({}, h.options());
  for (size_t l = 0; l < blocks.size(); ++l) {
    // Norms take float32 (bf16 autocast leaves them to the caller on LibTorch 1.13's CPU).
    nn::MoEOutput moe = blocks[l]->forward(norms[l]->forward(h.to(at::kFloat)), mask, token_ids);
    h = h + moe.output;
    out.aux_loss = out.aux_loss + moe.aux_loss;
    out.moe_layers.push_back(std::move(moe));
  }
  out.outputs = head->forward(final_norm->forward(h.to(at::kFloat)));
  return out;
}

ModelCost MLPMoEImpl::cost() const {
  ModelCost cost;
  cost.parameters_total = nn::count_parameters(*this);
  int64_t macs = options.input_dim() * options.moe().d_model() +
                 options.moe().d_model() * options.num_classes();
  cost.parameters_active = cost.parameters_total;
  for (const auto& block : blocks) {
    cost.parameters_active += block->active_parameters() - nn::count_parameters(*block);
    macs += block->active_macs_per_token();
  }
  cost.flops_per_sample = 2 * macs;
  return cost;
}

}  // namespace moelab::models
