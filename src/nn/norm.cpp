#include "moelab/nn/norm.h"

#include <ATen/ATen.h>

#include "moelab/util/errors.h"

namespace moelab::nn {

NormKind parse_norm_kind(const std::string& name) {
  if (name == "layernorm") return NormKind::kLayerNorm;
  if (name == "rmsnorm") return NormKind::kRMSNorm;
  throw ConfigError("unknown norm '" + name + "' (valid: layernorm, rmsnorm)");
}

std::string to_string(NormKind kind) {
  return kind == NormKind::kLayerNorm ? "layernorm" : "rmsnorm";
}

NormImpl::NormImpl(NormOptions options_) : options(std::move(options_)) { reset(); }

void NormImpl::reset() {
  TORCH_CHECK(options.d_model() >= 1 && options.eps() > 0, "Norm: d_model (", options.d_model(),
              ") must be >= 1 and eps (", options.eps(), ") > 0");
  weight = register_parameter("weight", at::ones({options.d_model()}));
  if (options.kind() == NormKind::kLayerNorm) {
    bias = register_parameter("bias", at::zeros({options.d_model()}));
  }
}

at::Tensor NormImpl::forward(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == options.d_model(), "Norm: input must be (..., ",
              options.d_model(), "), got ", x.sizes());
  const at::Tensor x32 = x.to(at::kFloat);
  at::Tensor y;
  if (options.kind() == NormKind::kLayerNorm) {
    y = at::layer_norm(x32, {options.d_model()}, weight, bias, options.eps());
  } else {
    y = x32 * at::rsqrt(x32.pow(2).mean(-1, true) + options.eps()) * weight;
  }
  return y.to(x.scalar_type());
}

}  // namespace moelab::nn
