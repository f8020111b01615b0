// The normalisations moelab's Transformers use, behind one module: LayerNorm (Ba et al. 2016;
// learned scale and shift) or RMSNorm (Zhang & Sennrich 2019; x / sqrt(mean(x^2) + eps) times a
// learned scale, no shift, as in Llama and Mixtral). Both compute in float32 and return the
// input's type.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include <string>

namespace moelab::nn {

enum class NormKind { kLayerNorm, kRMSNorm };
/// "layernorm" or "rmsnorm"; an error naming both otherwise.
NormKind parse_norm_kind(const std::string& name);
std::string to_string(NormKind kind);

struct NormOptions {
  NormOptions(NormKind kind, int64_t d_model) : kind_(kind), d_model_(d_model) {}
  TORCH_ARG(NormKind, kind);
  /// Width D, >= 1.
  TORCH_ARG(int64_t, d_model);
  /// Added to the variance (or the mean square). Default 1e-5.
  TORCH_ARG(double, eps) = 1e-5;
};

class NormImpl : public torch::nn::Cloneable<NormImpl> {
 public:
  explicit NormImpl(NormOptions options);
  void reset() override;
  /// x: (..., D) -> (..., D).
  at::Tensor forward(const at::Tensor& x);

  NormOptions options;
  at::Tensor weight;  // (D), ones
  at::Tensor bias;    // (D), zeros; layernorm only
};
TORCH_MODULE(Norm);

}  // namespace moelab::nn
