// Field lists of the nn Options structs for config files (see config/fields.h).
#include "moelab/nn/options_yaml.h"

#include "moelab/config/fields.h"

namespace moelab::config {
template <>
struct EnumNames<nn::RouterKind> {
  static nn::RouterKind parse(const std::string& s) { return nn::parse_router_kind(s); }
  static std::string print(nn::RouterKind v) { return nn::to_string(v); }
};
template <>
struct EnumNames<nn::Activation> {
  static nn::Activation parse(const std::string& s) { return nn::parse_activation(s); }
  static std::string print(nn::Activation v) { return nn::to_string(v); }
};
template <>
struct EnumNames<nn::ScoreFunction> {
  static nn::ScoreFunction parse(const std::string& s) { return nn::parse_score_function(s); }
  static std::string print(nn::ScoreFunction v) { return nn::to_string(v); }
};
template <>
struct EnumNames<nn::DropPolicy> {
  static nn::DropPolicy parse(const std::string& s) { return nn::parse_drop_policy(s); }
  static std::string print(nn::DropPolicy v) { return nn::to_string(v); }
};
}  // namespace moelab::config

namespace moelab::nn {

template <typename V>
void visit(V& v, RouterOptions& o) {
  v.field("kind", o.kind());
  v.field("top_k", o.top_k());
  v.field("temperature", o.temperature());
  v.field("normalize_weights", o.normalize_weights());
  v.field("jitter_eps", o.jitter_eps());
  v.field("bias_update_rate", o.bias_update_rate());
  v.field("score_function", o.score_function());
  v.field("num_groups", o.num_groups());
  v.field("topk_groups", o.topk_groups());
  v.field("capacity_factor", o.capacity_factor());
  v.field("seed", o.seed());
}

template <typename V>
void visit(V& v, FFNExpertsOptions& o) {
  v.field("activation", o.activation());
  v.field("bias", o.bias());
}

template <typename V>
void visit(V& v, DispatchOptions& o) {
  v.field("dropless", o.dropless());
  v.field("capacity_factor", o.capacity_factor());
  v.field("drop_policy", o.drop_policy());
}

template <typename V>
void visit(V& v, AuxLossOptions& o) {
  for (const AuxTermInfo& term : aux_term_registry()) v.field(term.key, term.weight(o));
}

template <typename V>
void visit(V& v, MoELayerOptions& o) {
  // The sizes live in the router and expert options; the config states each once.
  int64_t d_model = o.d_model(), d_ff = o.experts().d_ff(), num_experts = o.num_experts();
  v.field("d_model", d_model);
  v.field("d_ff", d_ff);
  v.field("num_experts", num_experts);
  o.router().d_model(d_model).num_experts(num_experts);
  o.experts().d_model(d_model).d_ff(d_ff).num_experts(num_experts);
  v.nested("router", o.router());
  v.nested("experts", o.experts());
  v.nested("dispatch", o.dispatch());
  v.nested("aux", o.aux());
  v.field("num_shared_experts", o.num_shared_experts());
  v.field("shared_d_ff", o.shared_d_ff());
  v.field("shared_gate", o.shared_gate());
}

MOELAB_DEFINE_OPTIONS_YAML(RouterOptions)
MOELAB_DEFINE_OPTIONS_YAML(FFNExpertsOptions)
MOELAB_DEFINE_OPTIONS_YAML(DispatchOptions)
MOELAB_DEFINE_OPTIONS_YAML(AuxLossOptions)
MOELAB_DEFINE_OPTIONS_YAML(MoELayerOptions)

}  // namespace moelab::nn
