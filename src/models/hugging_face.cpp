#include "moelab/models/hugging_face.h"

#include "moelab/nn/router.h"
#include "moelab/util/errors.h"

namespace moelab::models {

HuggingFaceModel to_hugging_face(const MoEDecoderImpl& model, int64_t eos_token_id) {
  const MoEDecoderOptions& o = model.options;
  const nn::MoELayerOptions& moe = o.moe();
  auto refuse = [](bool bad, const std::string& key, const std::string& why) {
    if (bad) throw ConfigError("export --format hf: model." + key + " " + why);
  };
  refuse(o.norm() != nn::NormKind::kRMSNorm, "norm", "must be rmsnorm (Mixtral and Llama use RMSNorm)");
  refuse(o.positions() != nn::PositionKind::kRope, "positions", "must be rope");
  refuse(o.attention_bias(), "attention_bias", "must be false");
  refuse(moe.experts().activation() != nn::Activation::kSwiGLU, "moe.experts.activation", "must be swiglu");
  refuse(moe.experts().bias(), "moe.experts.bias", "must be false");
  int64_t moe_blocks = 0;
  for (int64_t l = 0; l < o.num_layers(); ++l) moe_blocks += model.is_moe_layer(l) ? 1 : 0;
  refuse(moe_blocks != 0 && moe_blocks != o.num_layers(), "moe_layer_indices",
         "must select every block (Mixtral) or none (Llama); this model mixes dense and MoE blocks");
  const bool mixtral = moe_blocks > 0;
  if (mixtral) {
    const nn::RouterOptions& r = moe.router();
    refuse(r.kind() != nn::RouterKind::kTopK, "moe.router.kind", "must be top_k (Mixtral's softmax top-k)");
    refuse(!r.normalize_weights(), "moe.router.normalize_weights",
           "must be true (Mixtral renormalises the top-k weights)");
    refuse(r.temperature() != 1.0, "moe.router.temperature", "must be 1");
    refuse(moe.num_shared_experts() > 0, "moe.num_shared_experts", "must be 0 (Mixtral has no shared experts)");
  }
  HuggingFaceModel out;
  const int64_t f = model.ffn_width();
  auto add = [&](const std::string& name, const at::Tensor& t) {
    out.tensors.emplace_back(name, t.detach().contiguous());
  };
  add("model.embed_tokens.weight", model.embedding->weight);
  for (int64_t l = 0; l < o.num_layers(); ++l) {
    const auto* block = model.blocks->ptr(static_cast<size_t>(l))->as<DecoderBlockImpl>();
    const std::string prefix = "model.layers." + std::to_string(l) + ".";
    add(prefix + "input_layernorm.weight", block->norm1->weight);
    add(prefix + "self_attn.q_proj.weight", block->attention->q_proj->weight);
    add(prefix + "self_attn.k_proj.weight", block->attention->k_proj->weight);
    add(prefix + "self_attn.v_proj.weight", block->attention->v_proj->weight);
    add(prefix + "self_attn.o_proj.weight", block->attention->out_proj->weight);
    add(prefix + "post_attention_layernorm.weight", block->norm2->weight);
    if (block->moe) {
      add(prefix + "block_sparse_moe.gate.weight", block->moe->router->gate->weight);
      const auto& experts = block->moe->experts;
      for (int64_t e = 0; e < moe.num_experts(); ++e) {
        const std::string expert = prefix + "block_sparse_moe.experts." + std::to_string(e) + ".";
        add(expert + "w1.weight", experts->gate_weight(e));  // (F, D)
        add(expert + "w3.weight", experts->up_weight(e));    // (F, D)
        add(expert + "w2.weight", experts->w_out[e]);        // (D, F)
      }
    } else {
      add(prefix + "mlp.gate_proj.weight", block->ffn->w1->weight);
      add(prefix + "mlp.up_proj.weight", block->ffn->w3->weight);
      add(prefix + "mlp.down_proj.weight", block->ffn->w2->weight);
    }
  }
  add("model.norm.weight", model.final_norm->weight);
  add("lm_head.weight", model.output_weight());
  out.config = {{"architectures", {mixtral ? "MixtralForCausalLM" : "LlamaForCausalLM"}},
                {"model_type", mixtral ? "mixtral" : "llama"},
                {"vocab_size", o.vocab_size()},
                {"hidden_size", moe.d_model()},
                {"intermediate_size", f},
                {"num_hidden_layers", o.num_layers()},
                {"num_attention_heads", o.num_heads()},
                {"num_key_value_heads", o.num_heads()},
                {"hidden_act", "silu"},
                {"max_position_embeddings", o.max_length()},
                {"rms_norm_eps", o.norm_eps()},
                {"rope_theta", o.rope_base()},
                {"attention_dropout", 0.0},
                {"attention_bias", false},
                {"tie_word_embeddings", o.tie_embeddings()},
                {"bos_token_id", nullptr},
                {"eos_token_id", eos_token_id},
                {"torch_dtype", "float32"},
                {"initializer_range", 0.02},
                {"use_cache", true}};
  if (mixtral) {
    out.config["num_local_experts"] = moe.num_experts();
    out.config["num_experts_per_tok"] = moe.router().top_k();
    out.config["router_aux_loss_coef"] = moe.aux().load_balance();
    out.config["output_router_logits"] = false;
    out.config["sliding_window"] = nullptr;
  } else {
    out.config["mlp_bias"] = false;
    out.config["pretraining_tp"] = 1;
  }
  return out;
}

}  // namespace moelab::models
