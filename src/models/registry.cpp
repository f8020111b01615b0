#include "moelab/models/registry.h"

#include <yaml-cpp/yaml.h>

#include "moelab/config/config.h"
#include "moelab/config/fields.h"
#include "moelab/models/chemoe.h"
#include "moelab/models/decoder.h"
#include "moelab/models/mlp_moe.h"
#include "moelab/models/transformer.h"
#include "moelab/models/vision.h"
#include "moelab/nn/activation.h"
#include "moelab/util/errors.h"

namespace moelab::models {

namespace {

using config::parse_options;

template <typename Options, typename Impl>
ModelEntry add_model(const std::string& name, const std::string& description) {
  return {name,
          description,
          [] { return to_yaml(Options()); },
          [](const YAML::Node& section, const std::string& where) {
            parse_options<Options>(section, where);
          },
          [](const YAML::Node& section, const std::string& where) -> std::shared_ptr<Model> {
            return std::make_shared<Impl>(parse_options<Options>(section, where));
          },
          {},
          {},
          {}};
}

// Parameters of an MoE layer from its options, in double (sizes may be absurd on purpose).
double moe_layer_parameters(const nn::MoELayerOptions& o) {
  const double d = static_cast<double>(o.d_model()), f = static_cast<double>(o.experts().d_ff());
  const double e = static_cast<double>(o.num_experts());
  const double projections = nn::is_gated(o.experts().activation()) ? 3 : 2;
  const double shared_f =
      static_cast<double>(o.shared_d_ff() > 0 ? o.shared_d_ff() : o.experts().d_ff());
  const double biases = o.experts().bias() ? e * ((projections - 1) * f + d) : 0.0;
  return d * e + e * projections * d * f + biases +
         static_cast<double>(o.num_shared_experts()) * projections * d * shared_f;
}

// Floats an MoE layer keeps per token for backward: the norm and residual, router logits and
// probabilities, and for each of the k routed copies its input, hidden units and output.
double moe_layer_activations(const nn::MoELayerOptions& o) {
  const double d = static_cast<double>(o.d_model()), f = static_cast<double>(o.experts().d_ff());
  const double projections = nn::is_gated(o.experts().activation()) ? 3 : 2;
  const double k = static_cast<double>(o.router().top_k());
  return 4 * d + 2 * static_cast<double>(o.num_experts()) + k * (2 * d + projections * f) +
         static_cast<double>(o.num_shared_experts()) * (2 * d + projections * f);
}

std::vector<ModelEntry> register_models() {
  std::vector<ModelEntry> entries;
  entries.push_back(add_model<MLPMoEOptions, MLPMoEImpl>(
      "mlp_moe", "MoE MLP for vector data (pre-norm residual MoE blocks); classes or outputs"));
  entries.back().estimate_parameters = [](const YAML::Node& section) {
    const auto o = parse_options<MLPMoEOptions>(section, "model");
    const double d = static_cast<double>(o.moe().d_model());
    const double classes = static_cast<double>(o.num_classes());
    // input projection, per block a norm and the MoE layer, the final norm, the head
    return (static_cast<double>(o.input_dim()) + 1) * d +
           static_cast<double>(o.num_layers()) * (moe_layer_parameters(o.moe()) + 2 * d) + 2 * d +
           (d + 1) * classes;
  };
  entries.back().estimate_activations = [](const YAML::Node& section) {
    const auto o = parse_options<MLPMoEOptions>(section, "model");
    return static_cast<double>(o.input_dim()) + 2 * static_cast<double>(o.num_classes()) +
           static_cast<double>(o.num_layers()) * moe_layer_activations(o.moe());
  };
  entries.push_back(add_model<VisionMoEOptions, VisionMoEImpl>(
      "vision_moe", "MoE of small CNN experts with a tiny CNN router; hard top-1 or top-k"));
  entries.back().estimate_parameters = [](const YAML::Node& section) {
    const auto o = parse_options<VisionMoEOptions>(section, "model");
    return static_cast<double>(o.num_experts()) *
           static_cast<double>(convnet_parameters(o.expert()));
  };
  entries.back().estimate_activations = [](const YAML::Node& section) {
    const auto o = parse_options<VisionMoEOptions>(section, "model");
    return static_cast<double>(o.router().top_k()) * convnet_activations(o.expert());
  };
  entries.back().dense_baseline = [](const YAML::Node& section, MatchTarget target) {
    YAML::Node model = to_yaml(dense_baseline(parse_options<VisionMoEOptions>(section, "model"), target));
    model["name"] = "cnn";
    return model;
  };
  entries.push_back(add_model<ConvNetOptions, DenseCNNImpl>(
      "cnn", "dense CNN baseline (the expert's structure with a width multiplier)"));
  entries.back().estimate_parameters = [](const YAML::Node& section) {
    return static_cast<double>(convnet_parameters(parse_options<ConvNetOptions>(section, "model")));
  };
  entries.back().estimate_activations = [](const YAML::Node& section) {
    return convnet_activations(parse_options<ConvNetOptions>(section, "model"));
  };
  entries.push_back(add_model<ResNet18Options, ResNet18Impl>(
      "resnet18", "ResNet-18, CIFAR form (3x3 stem, no max-pool)"));
  entries.back().estimate_parameters = [](const YAML::Node& section) {
    return resnet18_parameters(parse_options<ResNet18Options>(section, "model"));
  };
  entries.back().estimate_activations = [](const YAML::Node& section) {
    return resnet18_activations(parse_options<ResNet18Options>(section, "model"));
  };
  entries.push_back(add_model<TransformerMoEClassifierOptions, TransformerMoEClassifierImpl>(
      "transformer_moe_classifier",
      "post-LN Transformer encoder over (B, L, F) sequences with MoE FFNs in chosen layers"));
  entries.back().estimate_parameters = [](const YAML::Node& section) {
    const auto o = parse_options<TransformerMoEClassifierOptions>(section, "model");
    const double d = static_cast<double>(o.moe().d_model());
    nn::MoELayerOptions moe = o.moe();
    if (moe.experts().d_ff() == 0) moe.experts().d_ff(4 * o.moe().d_model());
    const double f = static_cast<double>(moe.experts().d_ff());
    const double layers = static_cast<double>(o.num_layers());
    const double moe_layers =
        o.moe_layer_indices() ? static_cast<double>(o.moe_layer_indices()->size()) : layers;
    return (static_cast<double>(o.input_dim()) + 1) * d + layers * (4 * (d * d + d) + 4 * d) +
           moe_layers * moe_layer_parameters(moe) + (layers - moe_layers) * (2 * d * f + f + d) +
           2 * d + (d + 1) * static_cast<double>(o.num_classes()) +
           (o.positions() == nn::PositionKind::kLearned ? static_cast<double>(o.max_length()) * d : 0);
  };
  entries.back().estimate_activations = [](const YAML::Node& section) {
    // Per position: a sample is a sequence whose length is the data's, so this is a lower
    // bound (the check refuses only what cannot fit even then).
    const auto o = parse_options<TransformerMoEClassifierOptions>(section, "model");
    nn::MoELayerOptions moe = o.moe();
    if (moe.experts().d_ff() == 0) moe.experts().d_ff(4 * o.moe().d_model());
    const double d = static_cast<double>(o.moe().d_model());
    return static_cast<double>(o.num_layers()) * (12 * d + moe_layer_activations(moe));
  };
  entries.push_back(add_model<MoEDecoderOptions, MoEDecoderImpl>(
      "moe_decoder", "causal pre-norm Transformer language model with MoE FFNs in chosen blocks"));
  entries.back().estimate_parameters = [](const YAML::Node& section) {
    const auto o = parse_options<MoEDecoderOptions>(section, "model");
    nn::MoELayerOptions moe = o.moe();
    if (moe.experts().d_ff() == 0) moe.experts().d_ff(4 * o.moe().d_model());
    const double d = static_cast<double>(o.moe().d_model()), f = static_cast<double>(moe.experts().d_ff());
    const double v = static_cast<double>(std::max<int64_t>(o.vocab_size(), 2));
    const double layers = static_cast<double>(o.num_layers());
    const double moe_layers =
        o.moe_layer_indices() ? static_cast<double>(o.moe_layer_indices()->size()) : layers;
    const double projections = nn::is_gated(moe.experts().activation()) ? 3 : 2;
    const double norm = o.norm() == nn::NormKind::kLayerNorm ? 2 * d : d;
    const double ffn = projections * d * f + (moe.experts().bias() ? (projections - 1) * f + d : 0);
    return v * d * (o.tie_embeddings() ? 1 : 2) +
           (o.positions() == nn::PositionKind::kLearned ? static_cast<double>(o.max_length()) * d : 0) +
           layers * (4 * d * d + (o.attention_bias() ? 4 * d : 0) + 2 * norm) + norm +
           moe_layers * moe_layer_parameters(moe) + (layers - moe_layers) * ffn;
  };
  entries.back().dense_baseline = [](const YAML::Node& section, MatchTarget target) {
    YAML::Node model = to_yaml(dense_baseline(parse_options<MoEDecoderOptions>(section, "model"), target));
    model["name"] = "moe_decoder";
    return model;
  };
  entries.back().estimate_activations = [](const YAML::Node& section) {
    // Per position (a block's length is the data's): the layers, and the logits over V.
    const auto o = parse_options<MoEDecoderOptions>(section, "model");
    nn::MoELayerOptions moe = o.moe();
    if (moe.experts().d_ff() == 0) moe.experts().d_ff(4 * o.moe().d_model());
    const double d = static_cast<double>(o.moe().d_model());
    return static_cast<double>(o.num_layers()) * (12 * d + moe_layer_activations(moe)) +
           3 * static_cast<double>(std::max<int64_t>(o.vocab_size(), 2));
  };
  entries.push_back(add_model<CheMoEOptions, CheMoEImpl>(
      "chemoe", "CheMoE: gene-expression response to a compound; experts shared by all genes, "
                "sparse dispatch of each sample to its k experts"));
  entries.back().estimate_parameters = [](const YAML::Node& section) {
    const auto o = parse_options<CheMoEOptions>(section, "model");
    const double d = static_cast<double>(o.d_model()), e = static_cast<double>(o.num_experts());
    const double in = static_cast<double>(std::max<int64_t>(o.input_dim(), 1));
    const double genes = static_cast<double>(std::max<int64_t>(o.num_genes(), 1));
    const double cells = static_cast<double>(std::max<int64_t>(o.num_cell_lines(), 1));
    const double h = static_cast<double>(o.encoder_hidden()), h1 = static_cast<double>(o.expert_hidden()),
                 h2 = static_cast<double>(o.expert_hidden2());
    // Linear(a, b) with its bias, LayerNorm(b): (a + 1) b and 2 b.
    const double molecule = (in + 1) * h + 2 * h + (h + 1) * d + 2 * d;
    const double basal = (genes + 1) * 2 * d + 4 * d + (2 * d + 1) * d + 2 * d;
    const double gate = (3 * d + 1) * d + 2 * d + (d + 1) * e + (o.gate() == CheMoEGate::kOriginal ? 2 * e : 0);
    const double expert = (4 * d + 1) * h1 + 2 * h1 + (h1 + 1) * h2 + 2 * h2 + h2 + 1;
    return molecule + basal + (cells + genes) * d + gate + e * expert;
  };
  entries.back().estimate_activations = [](const YAML::Node& section) {
    // Per sample: each of its k experts keeps ~4 floats per hidden unit of every gene's row.
    const auto o = parse_options<CheMoEOptions>(section, "model");
    const double genes = static_cast<double>(std::max<int64_t>(o.num_genes(), 1));
    const double k = static_cast<double>(o.dense_experts() ? o.num_experts() : o.top_k());
    return k * genes * 4 * static_cast<double>(o.expert_hidden() + o.expert_hidden2()) +
           4 * static_cast<double>(std::max<int64_t>(o.input_dim(), 1) + o.encoder_hidden());
  };
  entries.back().dense_baseline = [](const YAML::Node& section, MatchTarget target) {
    if (target != MatchTarget::kFlops) {
      throw ConfigError("model chemoe: its dense baseline is matched on FLOPs only (baseline: iso_flops)");
    }
    YAML::Node model = to_yaml(dense_baseline(parse_options<CheMoEOptions>(section, "model")));
    model["name"] = "chemoe";
    return model;
  };
  return entries;
}

}  // namespace

const std::vector<ModelEntry>& model_registry() {
  static const std::vector<ModelEntry> entries = register_models();
  return entries;
}

const ModelEntry& find_model(const std::string& name) {
  return config::find_by_name(model_registry(), name, "model.name", "model");
}

}  // namespace moelab::models
