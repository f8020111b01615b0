#include "moelab/models/decoder.h"

#include <torch/nn/functional/linear.h>
#include <torch/nn/init.h>

#include <cmath>

#include "moelab/config/fields.h"
#include "moelab/models/transformer.h"
#include "moelab/nn/options_yaml.h"

namespace moelab::models {

template <typename V>
void visit(V& v, MoEDecoderOptions& o) {
  v.field("vocab_size", o.vocab_size());
  v.field("num_layers", o.num_layers());
  v.field("num_heads", o.num_heads());
  v.field("max_length", o.max_length());
  v.field("positions", o.positions());
  v.field("rope_base", o.rope_base());
  v.field("norm", o.norm());
  v.field("norm_eps", o.norm_eps());
  v.field("dropout", o.dropout());
  v.field("attention_dropout", o.attention_dropout());
  v.field("attention_bias", o.attention_bias());
  v.field("tie_embeddings", o.tie_embeddings());
  v.field("fused_loss", o.fused_loss());
  v.nested("moe", o.moe());
}

YAML::Node to_yaml(const MoEDecoderOptions& options) {
  YAML::Node node = config::write_options(options);
  write_layer_indices(node, options.moe_layer_indices());
  return node;
}

void from_yaml(const YAML::Node& node, MoEDecoderOptions& options, const std::string& where) {
  config::read_options(read_layer_indices(node, options.moe_layer_indices(), where), options, where);
}

MoEDecoderOptions dense_baseline(const MoEDecoderOptions& moe, MatchTarget what) {
  const nn::MoELayerOptions& layer = moe.moe();
  const double f = static_cast<double>(layer.experts().d_ff() > 0 ? layer.experts().d_ff() : 4 * layer.d_model());
  const double projections = nn::is_gated(layer.experts().activation()) ? 3 : 2;
  const double experts = static_cast<double>(layer.num_experts());
  const double shared = static_cast<double>(layer.num_shared_experts()) *
                        static_cast<double>(layer.shared_d_ff() > 0 ? layer.shared_d_ff() : f);
  const double routed = what == MatchTarget::kFlops ? static_cast<double>(layer.router().top_k()) : experts;
  // Per MoE block: routed (+ shared) FFN units plus the router's D x E, in units of one hidden
  // unit's projections x D.
  const double moe_units = routed * f + shared + experts / projections;
  double total = 0;
  for (int64_t l = 0; l < moe.num_layers(); ++l) {
    total += selects_layer(moe.moe_layer_indices(), l) ? moe_units : f;
  }
  MoEDecoderOptions dense = moe;
  dense.moe_layer_indices(std::vector<int64_t>{});
  dense.moe().experts().d_ff(static_cast<int64_t>(std::llround(total / static_cast<double>(moe.num_layers()))));
  return dense;
}

MoEDecoderOptions::MoEDecoderOptions() : moe_(256, 0, 8) {
  moe_.router().top_k(2).normalize_weights(true);
  moe_.aux().load_balance(0.01);
}

DecoderBlockImpl::DecoderBlockImpl(nn::MultiheadAttentionOptions attention_, nn::NormOptions norm_,
                                   nn::FeedForwardOptions ffn_,
                                   std::optional<nn::MoELayerOptions> moe_, double dropout_)
    : attention_options(std::move(attention_)),
      norm_options(std::move(norm_)),
      ffn_options(std::move(ffn_)),
      moe_options(std::move(moe_)),
      dropout_rate(dropout_) {
  reset();
}

void DecoderBlockImpl::reset() {
  norm1 = register_module("norm1", nn::Norm(norm_options));
  attention = register_module("attention", nn::MultiheadAttention(attention_options));
  norm2 = register_module("norm2", nn::Norm(norm_options));
  if (moe_options) {
    moe = register_module("moe", nn::MoELayer(*moe_options));
  } else {
    ffn = register_module("ffn", nn::FeedForward(ffn_options));
  }
  dropout = register_module("dropout", nn::Dropout(dropout_rate));
}

at::Tensor DecoderBlockImpl::forward(const at::Tensor& x, const at::Tensor& mask,
                                     const at::Tensor& token_ids, nn::KVCache* cache,
                                     ModelOutput& routed) {
  at::Tensor h = x + dropout->forward(attention->forward(norm1->forward(x), mask, cache));
  const at::Tensor normed = norm2->forward(h);
  at::Tensor ffn_out;
  if (moe) {
    // The MoE layer's mask covers this call's positions only (the attention's may span a cache).
    const at::Tensor token_mask =
        mask.defined() ? mask.narrow(1, mask.size(1) - x.size(1), x.size(1)) : mask;
    nn::MoEOutput out = moe->forward(normed, token_mask, token_ids);
    ffn_out = out.output;
    routed.aux_loss = routed.aux_loss + out.aux_loss;
    routed.moe_layers.push_back(std::move(out));
  } else {
    ffn_out = ffn->forward(normed);
  }
  return h + dropout->forward(ffn_out);
}

int64_t MoEDecoderImpl::ffn_width() const {
  return options.moe().experts().d_ff() > 0 ? options.moe().experts().d_ff()
                                            : 4 * options.moe().d_model();
}

bool MoEDecoderImpl::is_moe_layer(int64_t layer) const {
  return selects_layer(options.moe_layer_indices(), layer);
}

MoEDecoderImpl::MoEDecoderImpl(MoEDecoderOptions options_) : options(std::move(options_)) {
  const auto& o = options;
  const int64_t d = o.moe().d_model();
  TORCH_CHECK(o.vocab_size() >= 2, "MoEDecoder: vocab_size (", o.vocab_size(), ") must be >= 2 "
              "(0 takes the data's tokenizer's, which a run fills in)");
  TORCH_CHECK(o.num_layers() >= 1 && o.max_length() >= 1, "MoEDecoder: num_layers (",
              o.num_layers(), ") and max_length (", o.max_length(), ") must be >= 1");
  TORCH_CHECK(o.dropout() >= 0 && o.dropout() < 1, "MoEDecoder: dropout (", o.dropout(),
              ") must be in [0, 1)");
  check_layer_indices(o.moe_layer_indices(), o.num_layers(), "MoEDecoder");
  embedding = register_module("embedding", torch::nn::Embedding(o.vocab_size(), d));
  if (o.positions() == nn::PositionKind::kLearned) {
    learned_positions = register_module(
        "positions", nn::LearnedPositions(nn::LearnedPositionsOptions(o.max_length(), d)));
  }
  dropout = register_module("dropout", nn::Dropout(o.dropout()));
  const nn::NormOptions norm = nn::NormOptions(o.norm(), d).eps(o.norm_eps());
  const nn::MultiheadAttentionOptions attention =
      nn::MultiheadAttentionOptions(d, o.num_heads())
          .dropout(o.attention_dropout())
          .bias(o.attention_bias())
          .causal(true)
          .rope(o.positions() == nn::PositionKind::kRope)
          .rope_base(o.rope_base());
  const nn::FeedForwardOptions ffn = nn::FeedForwardOptions(d, ffn_width())
                                         .activation(o.moe().experts().activation())
                                         .bias(o.moe().experts().bias());
  nn::MoELayerOptions moe = o.moe();
  moe.experts().d_ff(ffn_width());
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t l = 0; l < o.num_layers(); ++l) {
    blocks->push_back(DecoderBlock(attention, norm, ffn,
                                   is_moe_layer(l) ? std::optional<nn::MoELayerOptions>(moe)
                                                   : std::nullopt,
                                   o.dropout()));
  }
  final_norm = register_module("final_norm", nn::Norm(norm));
  if (!o.tie_embeddings()) {
    lm_head = register_module("lm_head", torch::nn::Linear(torch::nn::LinearOptions(d, o.vocab_size()).bias(false)));
  }
  reset_parameters();
}

void MoEDecoderImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  const double std = 0.02, residual_std = 0.02 / std::sqrt(2.0 * static_cast<double>(options.num_layers()));
  auto ends_with = [](const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  for (auto& item : named_parameters()) {
    const std::string& name = item.key();
    at::Tensor& p = item.value();
    if (name.find("norm") != std::string::npos) continue;  // ones (and zero shifts) already
    if (ends_with(name, "bias") || ends_with(name, "b_in") || ends_with(name, "b_out")) {
      p.zero_();
    } else if (ends_with(name, "attention.out_proj.weight") || ends_with(name, "ffn.w2.weight") ||
               ends_with(name, "experts.w_out") || ends_with(name, "shared.w2.weight")) {
      p.normal_(0.0, residual_std);
    } else {
      p.normal_(0.0, std);
    }
  }
}

at::Tensor MoEDecoderImpl::output_weight() const {
  return options.tie_embeddings() ? embedding->weight : lm_head->weight;
}

ModelOutput MoEDecoderImpl::forward(const data::Batch& batch) {
  return forward_tokens(batch.at(data::kTokenIds), batch.get(data::kPaddingMask), nullptr,
                        options.fused_loss() && batch.has(data::kTargets));
}

ModelOutput MoEDecoderImpl::forward_tokens(const at::Tensor& token_ids,
                                           const at::Tensor& padding_mask,
                                           std::vector<nn::KVCache>* caches, bool hidden_only) {
  const auto& o = options;
  TORCH_CHECK(token_ids.dim() == 2 && !at::isFloatingType(token_ids.scalar_type()),
              "MoEDecoder: token_ids must be (B, L) integers, got ", token_ids.scalar_type(),
              " of shape ", token_ids.sizes());
  const int64_t batch_size = token_ids.size(0), length = token_ids.size(1);
  const int64_t offset = caches && !caches->empty() ? (*caches)[0].length() : 0;
  TORCH_CHECK(length >= 1 && (o.positions() != nn::PositionKind::kLearned ||
                              offset + length <= o.max_length()),
              "MoEDecoder: ", offset + length, " positions; the learned position table holds "
              "max_length = ", o.max_length());
  if (token_ids.numel() > 0) {
    const int64_t low = token_ids.min().item<int64_t>(), high = token_ids.max().item<int64_t>();
    TORCH_CHECK(low >= 0 && high < o.vocab_size(), "MoEDecoder: token ids must be in [0, ",
                o.vocab_size(), "), got ", low, "..", high,
                " (HINT: model.vocab_size must be the tokenizer's; 0 takes it from the data)");
  }
  at::Tensor mask = padding_mask;
  if (mask.defined()) {
    TORCH_CHECK(mask.dim() == 2 && mask.size(0) == batch_size && mask.size(1) == offset + length,
                "MoEDecoder: padding_mask must be (B, S) = (", batch_size, ", ", offset + length,
                "), got ", mask.sizes());
    mask = mask.to(at::kBool);
  }
  if (caches && caches->empty()) caches->resize(static_cast<size_t>(o.num_layers()));
  const at::Tensor ids = token_ids.to(at::kLong);
  at::Tensor h = embedding->forward(ids);  // (B, L, D)
  if (o.positions() == nn::PositionKind::kSinusoidal) {
    h = h + nn::sinusoidal_positions(length, o.moe().d_model(), offset).to(h.device());
  } else if (o.positions() == nn::PositionKind::kLearned) {
    h = h + learned_positions->forward(length, offset);
  }
  h = dropout->forward(h);
  ModelOutput out;
  out.aux_loss = at::zeros({}, h.options().dtype(at::kFloat));
  for (size_t l = 0; l < blocks->size(); ++l) {
    h = blocks[l]->as<DecoderBlockImpl>()->forward(h, mask, ids,
                                                   caches ? &(*caches)[l] : nullptr, out);
  }
  if (hidden_only) {
    out.hidden = final_norm->forward(h);
    out.output_weight = output_weight();
  } else {
    out.outputs = torch::nn::functional::linear(final_norm->forward(h), output_weight());
  }
  return out;
}

ModelCost MoEDecoderImpl::cost() const {
  // Per token (a sample of a language model is a token here): attention's L x L terms, which
  // depend on the context, come on top.
  ModelCost cost;
  cost.parameters_total = nn::count_parameters(*this);
  cost.parameters_active = cost.parameters_total;
  const int64_t d = options.moe().d_model();
  const int64_t ffn_macs = (nn::is_gated(options.moe().experts().activation()) ? 3 : 2) * d * ffn_width();
  int64_t macs = options.vocab_size() * d;  // the output projection; the embedding is a lookup
  for (const auto& module : *blocks) {
    const auto* block = module->as<DecoderBlockImpl>();
    macs += 4 * d * d;
    if (block->moe) {
      cost.parameters_active += block->moe->active_parameters() - nn::count_parameters(*block->moe);
      macs += block->moe->active_macs_per_token();
    } else {
      macs += ffn_macs;
    }
  }
  cost.flops_per_sample = 2 * macs;
  return cost;
}

nlohmann::json MoEDecoderImpl::resolved_sizes() const {
  std::vector<int64_t> moe_layers;
  for (int64_t l = 0; l < options.num_layers(); ++l) {
    if (is_moe_layer(l)) moe_layers.push_back(l);
  }
  return {{"d_ff", ffn_width()}, {"moe_layers", moe_layers}};
}

}  // namespace moelab::models
