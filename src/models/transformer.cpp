#include "moelab/models/transformer.h"

#include <torch/nn/functional/activation.h>

#include <algorithm>

#include "moelab/config/fields.h"
#include "moelab/nn/options_yaml.h"

namespace moelab::models {

template <typename V>
void visit(V& v, TransformerMoEClassifierOptions& o) {
  v.field("input_dim", o.input_dim());
  v.field("num_classes", o.num_classes());
  v.field("num_layers", o.num_layers());
  v.field("num_heads", o.num_heads());
  v.field("max_length", o.max_length());
  v.field("positions", o.positions());
  v.field("dropout", o.dropout());
  v.field("attention_dropout", o.attention_dropout());
  v.nested("moe", o.moe());
}

namespace {
constexpr const char* kMoELayerIndices = "moe_layer_indices";
}  // namespace

void write_layer_indices(YAML::Node& node, const std::optional<std::vector<int64_t>>& indices) {
  YAML::Node list = indices ? YAML::Node(YAML::NodeType::Sequence) : YAML::Node(YAML::NodeType::Null);
  if (indices) {
    for (int64_t i : *indices) list.push_back(i);
    list.SetStyle(YAML::EmitterStyle::Flow);
  }
  node[kMoELayerIndices] = list;
}

YAML::Node read_layer_indices(const YAML::Node& node, std::optional<std::vector<int64_t>>& indices,
                              const std::string& where) {
  YAML::Node rest = config::clone(node);
  if (!rest.IsMap() || !rest[kMoELayerIndices]) return rest;
  const YAML::Node list = rest[kMoELayerIndices];
  const std::string key = where + "." + kMoELayerIndices;
  if (list.IsNull()) {
    indices = std::nullopt;
  } else if (list.IsSequence()) {
    std::vector<int64_t> read;
    for (const auto& item : list) {
      try {
        read.push_back(item.as<int64_t>());
      } catch (const YAML::Exception&) {
        throw ConfigError(key + ": expected a list of layer indices (integers), null for every "
                          "layer or [] for none");
      }
    }
    indices = read;
  } else {
    throw ConfigError(key + ": expected a list of layer indices, null for every layer or [] "
                      "for none, got '" + list.as<std::string>("") + "'");
  }
  rest.remove(kMoELayerIndices);
  return rest;
}

bool selects_layer(const std::optional<std::vector<int64_t>>& indices, int64_t layer) {
  return !indices || std::find(indices->begin(), indices->end(), layer) != indices->end();
}

void check_layer_indices(const std::optional<std::vector<int64_t>>& indices, int64_t layers,
                         const std::string& model) {
  if (!indices) return;
  for (int64_t index : *indices) {
    TORCH_CHECK(index >= 0 && index < layers, model, ": moe_layer_indices has ", index,
                ", outside the layers 0..", layers - 1);
  }
}

// moe_layer_indices is a list or null, which the scalar fields do not cover: written and read
// by the helpers above, the rest through visit.
YAML::Node to_yaml(const TransformerMoEClassifierOptions& options) {
  YAML::Node node = config::write_options(options);
  write_layer_indices(node, options.moe_layer_indices());
  return node;
}

void from_yaml(const YAML::Node& node, TransformerMoEClassifierOptions& options,
               const std::string& where) {
  config::read_options(read_layer_indices(node, options.moe_layer_indices(), where), options, where);
}

TransformerMoEClassifierOptions::TransformerMoEClassifierOptions() : moe_(64, 0, 4) {
  moe_.router().top_k(2).normalize_weights(true);
  moe_.experts().activation(nn::Activation::kGELU).bias(true);
  moe_.aux().load_balance(0.01);
}

PostNormEncoderLayerImpl::PostNormEncoderLayerImpl(int64_t d_model_, int64_t num_heads_,
                                                   int64_t d_ff_, double dropout_,
                                                   double attention_dropout_,
                                                   std::optional<nn::MoELayerOptions> moe_)
    : d_model(d_model_),
      num_heads(num_heads_),
      d_ff(d_ff_),
      dropout_rate(dropout_),
      attention_dropout_rate(attention_dropout_),
      moe_options(std::move(moe_)) {
  reset();
}

void PostNormEncoderLayerImpl::reset() {
  attention = register_module(
      "attention", nn::MultiheadAttention(nn::MultiheadAttentionOptions(d_model, num_heads)
                                              .dropout(attention_dropout_rate)));
  norm1 = register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d_model})));
  norm2 = register_module("norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d_model})));
  if (moe_options) {
    moe = register_module("moe", nn::MoELayer(*moe_options));
  } else {
    fc1 = register_module("fc1", torch::nn::Linear(d_model, d_ff));
    fc2 = register_module("fc2", torch::nn::Linear(d_ff, d_model));
  }
  dropout = register_module("dropout", nn::Dropout(dropout_rate));
}

at::Tensor PostNormEncoderLayerImpl::forward(const at::Tensor& x, const at::Tensor& mask,
                                             ModelOutput& routed) {
  // Norms take float32 (bf16 autocast leaves them to the caller on LibTorch 1.13's CPU).
  const at::Tensor h = norm1->forward((x + dropout->forward(attention->forward(x, mask))).to(at::kFloat));
  at::Tensor ffn;
  if (moe) {
    nn::MoEOutput out = moe->forward(h, mask);
    ffn = out.output;
    routed.aux_loss = routed.aux_loss + out.aux_loss;
    routed.moe_layers.push_back(std::move(out));
  } else {
    ffn = fc2->forward(dropout->forward(torch::nn::functional::gelu(fc1->forward(h))));
  }
  return norm2->forward((h + dropout->forward(ffn)).to(at::kFloat));
}

int64_t TransformerMoEClassifierImpl::ffn_width() const {
  return options.moe().experts().d_ff() > 0 ? options.moe().experts().d_ff()
                                            : 4 * options.moe().d_model();
}

bool TransformerMoEClassifierImpl::is_moe_layer(int64_t layer) const {
  return selects_layer(options.moe_layer_indices(), layer);
}

TransformerMoEClassifierImpl::TransformerMoEClassifierImpl(TransformerMoEClassifierOptions options_)
    : options(std::move(options_)) {
  const auto& o = options;
  const int64_t d = o.moe().d_model();
  TORCH_CHECK(o.input_dim() >= 1 && o.num_classes() >= 2 && o.num_layers() >= 1,
              "TransformerMoEClassifier: input_dim (", o.input_dim(), ") and num_layers (",
              o.num_layers(), ") must be >= 1, num_classes (", o.num_classes(), ") >= 2");
  TORCH_CHECK(o.dropout() >= 0 && o.dropout() < 1, "TransformerMoEClassifier: dropout (",
              o.dropout(), ") must be in [0, 1)");
  TORCH_CHECK(o.positions() != nn::PositionKind::kRope,
              "TransformerMoEClassifier: positions must be sinusoidal, learned or none (rope is "
              "for the decoder)");
  check_layer_indices(o.moe_layer_indices(), o.num_layers(), "TransformerMoEClassifier");
  input = register_module("input", torch::nn::Linear(o.input_dim(), d));
  if (o.positions() == nn::PositionKind::kLearned) {
    learned_positions = register_module(
        "positions", nn::LearnedPositions(nn::LearnedPositionsOptions(o.max_length(), d)));
  }
  dropout = register_module("dropout", nn::Dropout(o.dropout()));
  nn::MoELayerOptions moe_options = o.moe();
  moe_options.experts().d_ff(ffn_width());
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t l = 0; l < o.num_layers(); ++l) {
    layers->push_back(PostNormEncoderLayer(
        d, o.num_heads(), ffn_width(), o.dropout(), o.attention_dropout(),
        is_moe_layer(l) ? std::optional<nn::MoELayerOptions>(moe_options) : std::nullopt));
  }
  final_norm = register_module("final_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  head = register_module("head", torch::nn::Linear(d, o.num_classes()));
}

ModelOutput TransformerMoEClassifierImpl::forward(const data::Batch& batch) {
  const auto& o = options;
  const at::Tensor& x = batch.at(data::kInputs);
  TORCH_CHECK(x.dim() == 3 && x.size(2) == o.input_dim(), "TransformerMoEClassifier: inputs "
              "must be (B, L, ", o.input_dim(), "), got ", x.sizes(),
              " (HINT: data.as_sequence: true turns images into sequences of rows)");
  const int64_t batch_size = x.size(0), length = x.size(1);
  TORCH_CHECK(length >= 1 && (o.positions() != nn::PositionKind::kLearned || length <= o.max_length()),
              "TransformerMoEClassifier: sequences of ", length, " positions; max_length is ",
              o.max_length());
  at::Tensor mask = batch.get(data::kPaddingMask);
  if (mask.defined()) {
    TORCH_CHECK(mask.sizes() == at::IntArrayRef({batch_size, length}), "TransformerMoEClassifier: "
                "padding_mask must be (B, L) = (", batch_size, ", ", length, "), got ", mask.sizes());
    mask = mask.to(at::kBool);
  }
  at::Tensor h = input->forward(x.to(at::kFloat));  // (B, L, D)
  if (o.positions() == nn::PositionKind::kSinusoidal) {
    h = h + nn::sinusoidal_positions(length, o.moe().d_model()).to(h.device());
  } else if (o.positions() == nn::PositionKind::kLearned) {
    h = h + learned_positions->forward(length);
  }
  h = dropout->forward(h);
  ModelOutput out;
  out.aux_loss = at::zeros({}, h.options().dtype(at::kFloat));
  for (const auto& layer : *layers) {
    h = layer->as<PostNormEncoderLayerImpl>()->forward(h, mask, out);
  }
  // Mean over the real positions: (B, D).
  at::Tensor pooled;
  if (mask.defined()) {
    const at::Tensor weights = mask.to(h.scalar_type()).unsqueeze(-1);  // (B, L, 1)
    pooled = (h * weights).sum(1) / weights.sum(1).clamp_min(1.0);
  } else {
    pooled = h.mean(1);
  }
  out.outputs = head->forward(final_norm->forward(pooled));
  return out;
}

ModelCost TransformerMoEClassifierImpl::cost() const {
  // FLOPs per position: the sequence length is the data's, not the model's, and attention's
  // L x L score terms come on top.
  ModelCost cost;
  cost.parameters_total = nn::count_parameters(*this);
  cost.parameters_active = cost.parameters_total;
  const int64_t d = options.moe().d_model();
  int64_t macs = options.input_dim() * d + options.num_classes() * d;
  for (const auto& module : *layers) {
    const auto* layer = module->as<PostNormEncoderLayerImpl>();
    macs += 4 * d * d;  // the attention's projections
    if (layer->moe) {
      cost.parameters_active += layer->moe->active_parameters() - nn::count_parameters(*layer->moe);
      macs += layer->moe->active_macs_per_token();
    } else {
      macs += 2 * d * ffn_width();
    }
  }
  cost.flops_per_sample = 2 * macs;
  return cost;
}

nlohmann::json TransformerMoEClassifierImpl::resolved_sizes() const {
  std::vector<int64_t> moe_layers;
  for (int64_t l = 0; l < options.num_layers(); ++l) {
    if (is_moe_layer(l)) moe_layers.push_back(l);
  }
  return {{"d_ff", ffn_width()}, {"moe_layers", moe_layers}};
}

}  // namespace moelab::models
