// A moe_decoder in the layout Hugging Face transformers loads unchanged: Mixtral
// (MixtralForCausalLM) when every block is MoE, Llama (LlamaForCausalLM) when none is. The
// weights keep their values; only names (and the experts' stacked tensors, split per expert)
// change:
//
//   moelab                                   Hugging Face
//   embedding.weight                         model.embed_tokens.weight
//   blocks.N.norm1.weight                    model.layers.N.input_layernorm.weight
//   blocks.N.attention.{q,k,v}_proj.weight   model.layers.N.self_attn.{q,k,v}_proj.weight
//   blocks.N.attention.out_proj.weight       model.layers.N.self_attn.o_proj.weight
//   blocks.N.norm2.weight                    model.layers.N.post_attention_layernorm.weight
//   blocks.N.moe.router.gate.weight (E, D)   model.layers.N.block_sparse_moe.gate.weight
//   blocks.N.moe.experts.w_in[e][:F]         model.layers.N.block_sparse_moe.experts.e.w1.weight
//   blocks.N.moe.experts.w_in[e][F:]         model.layers.N.block_sparse_moe.experts.e.w3.weight
//   blocks.N.moe.experts.w_out[e]            model.layers.N.block_sparse_moe.experts.e.w2.weight
//   blocks.N.ffn.{w1,w3,w2}.weight           model.layers.N.mlp.{gate,up,down}_proj.weight
//   final_norm.weight                        model.norm.weight
//   the output projection                    lm_head.weight (tie_word_embeddings when tied)
//
// Both use RoPE in the rotate-half form moelab's attention uses, so q and k need no permutation.
// What the two architectures cannot express is refused with the option to change: layernorm,
// learned/sinusoidal/no positions, biases, non-SwiGLU experts, shared experts, routers other
// than a softmax top-k with renormalised weights at temperature 1 (Mixtral's), a mix of dense and
// MoE blocks.
#pragma once

#include <nlohmann/json.hpp>

#include "moelab/io/safetensors.h"
#include "moelab/models/decoder.h"

namespace moelab::models {

struct HuggingFaceModel {
  io::NamedTensors tensors;
  nlohmann::json config;  // config.json
};

/// ConfigError naming the model option that has no Mixtral/Llama counterpart.
HuggingFaceModel to_hugging_face(const MoEDecoderImpl& model, int64_t eos_token_id);

}  // namespace moelab::models
