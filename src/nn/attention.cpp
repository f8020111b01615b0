#include "moelab/nn/attention.h"

#include <cmath>

namespace moelab::nn {

at::Tensor apply_rotary(const at::Tensor& x, int64_t offset, double base) {
  const int64_t length = x.size(-2), head_dim = x.size(-1), half = head_dim / 2;
  TORCH_CHECK(head_dim % 2 == 0, "apply_rotary: the head width (", head_dim, ") must be even");
  TORCH_CHECK(offset >= 0 && base > 0, "apply_rotary: offset (", offset, ") must be >= 0 and base (",
              base, ") > 0");
  const at::TensorOptions options = x.options().dtype(at::kDouble);
  // (Dh/2): base^(-2i/Dh); angles (L, Dh/2) in float64, then x's type.
  const at::Tensor inverse_frequency =
      at::pow(base, -at::arange(0, half, options) * (2.0 / static_cast<double>(head_dim)));
  const at::Tensor positions = at::arange(offset, offset + length, options);
  const at::Tensor angles = at::outer(positions, inverse_frequency);
  const at::Tensor cos = at::cat({angles.cos(), angles.cos()}, -1).to(x.scalar_type());  // (L, Dh)
  const at::Tensor sin = at::cat({angles.sin(), angles.sin()}, -1).to(x.scalar_type());
  const at::Tensor rotated_half = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos + rotated_half * sin;
}

MultiheadAttentionImpl::MultiheadAttentionImpl(MultiheadAttentionOptions options_)
    : options(std::move(options_)) {
  reset();
}

void MultiheadAttentionImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.num_heads() >= 1 && o.d_model() >= 1 && o.d_model() % o.num_heads() == 0,
              "MultiheadAttention: d_model (", o.d_model(), ") must be a positive multiple of "
              "num_heads (", o.num_heads(), ")");
  TORCH_CHECK(o.dropout() >= 0 && o.dropout() < 1, "MultiheadAttention: dropout (", o.dropout(),
              ") must be in [0, 1)");
  TORCH_CHECK(!o.rope() || (o.d_model() / o.num_heads()) % 2 == 0,
              "MultiheadAttention: rope needs an even head width, got d_model / num_heads = ",
              o.d_model() / o.num_heads());
  auto projection = [&](const char* name) {
    return register_module(
        name, torch::nn::Linear(torch::nn::LinearOptions(o.d_model(), o.d_model()).bias(o.bias())));
  };
  q_proj = projection("q_proj");
  k_proj = projection("k_proj");
  v_proj = projection("v_proj");
  out_proj = projection("out_proj");
  attention_dropout = register_module("attention_dropout", nn::Dropout(o.dropout()));
}

at::Tensor MultiheadAttentionImpl::forward(const at::Tensor& x, const at::Tensor& key_mask,
                                           KVCache* cache) {
  const auto& o = options;
  TORCH_CHECK(x.dim() == 3 && x.size(2) == o.d_model(), "MultiheadAttention: input must be (B, L, ",
              o.d_model(), "), got ", x.sizes());
  const int64_t batch = x.size(0), length = x.size(1), heads = o.num_heads();
  const int64_t head_dim = o.d_model() / heads;
  const int64_t offset = cache ? cache->length() : 0;
  TORCH_CHECK(!cache || offset == 0 || cache->keys.size(0) == batch,
              "MultiheadAttention: the cache holds ", cache ? cache->keys.size(0) : 0,
              " sequences, the input ", batch);
  auto split_heads = [&](const at::Tensor& t) {  // (B, L, D) -> (B, H, L, Dh)
    return t.view({batch, length, heads, head_dim}).transpose(1, 2);
  };
  at::Tensor q = split_heads(q_proj->forward(x));
  at::Tensor k = split_heads(k_proj->forward(x));
  at::Tensor v = split_heads(v_proj->forward(x));
  if (o.rope()) {
    q = apply_rotary(q, offset, o.rope_base());
    k = apply_rotary(k, offset, o.rope_base());
  }
  if (cache) {
    if (offset > 0) {
      k = at::cat({cache->keys, k}, 2);
      v = at::cat({cache->values, v}, 2);
    }
    cache->keys = k.detach();
    cache->values = v.detach();
  }
  const int64_t keys = k.size(2);
  at::Tensor scores = at::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(head_dim));
  // (B, H, L, S). Masked scores get -1e30, not -inf: a row with no visible key (a sequence of
  // padding only) then averages instead of producing NaN, in float32 and bfloat16 alike.
  at::Tensor visible;
  if (key_mask.defined()) {
    TORCH_CHECK(key_mask.dim() == 2 && key_mask.size(0) == batch && key_mask.size(1) == keys,
                "MultiheadAttention: key_mask must be (B, S) = (", batch, ", ", keys, "), got ",
                key_mask.sizes());
    visible = key_mask.to(at::kBool).view({batch, 1, 1, keys});
  }
  if (o.causal()) {
    // Query i sits at position offset + i and sees keys 0 .. offset + i.
    const at::Tensor query_positions = at::arange(offset, offset + length, x.options().dtype(at::kLong));
    const at::Tensor key_positions = at::arange(keys, x.options().dtype(at::kLong));
    const at::Tensor causal = key_positions.view({1, keys}).le(query_positions.view({length, 1}));
    visible = visible.defined() ? visible.logical_and(causal) : causal;
  }
  if (visible.defined()) {
    scores = scores.masked_fill(visible.logical_not(), -1e30);
  }
  // The softmax in float32 whatever the scores' type (bf16 under autocast), as Llama and Mixtral
  // do; the weights then take v's type for the second matmul.
  const bool reduced = scores.scalar_type() == at::kBFloat16 || scores.scalar_type() == at::kHalf;
  const at::Tensor weights = attention_dropout->forward(
      reduced ? at::softmax(scores, -1, at::kFloat).to(v.scalar_type()) : at::softmax(scores, -1));
  const at::Tensor context = at::matmul(weights, v);  // (B, H, L, Dh)
  return out_proj->forward(context.transpose(1, 2).reshape({batch, length, o.d_model()}));
}

}  // namespace moelab::nn
