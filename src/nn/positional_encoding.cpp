#include "moelab/nn/positional_encoding.h"

#include <torch/nn/init.h>

namespace moelab::nn {

namespace {
struct PositionKindName {
  PositionKind kind;
  const char* name;
};
constexpr PositionKindName kPositionKindNames[] = {{PositionKind::kNone, "none"},
                                                   {PositionKind::kSinusoidal, "sinusoidal"},
                                                   {PositionKind::kLearned, "learned"},
                                                   {PositionKind::kRope, "rope"}};
}  // namespace

PositionKind parse_position_kind(const std::string& name) {
  std::string valid;
  for (const auto& entry : kPositionKindNames) {
    if (name == entry.name) return entry.kind;
    valid += valid.empty() ? entry.name : std::string(", ") + entry.name;
  }
  TORCH_CHECK(false, "unknown position kind '", name, "'; expected one of ", valid);
}

std::string to_string(PositionKind kind) {
  for (const auto& entry : kPositionKindNames) {
    if (entry.kind == kind) return entry.name;
  }
  TORCH_INTERNAL_ASSERT(false, "unnamed PositionKind");
}

at::Tensor sinusoidal_positions(int64_t length, int64_t d_model, int64_t offset) {
  TORCH_CHECK(length >= 0 && d_model >= 1 && offset >= 0, "sinusoidal_positions: length (", length,
              ") and offset (", offset, ") must be >= 0, d_model (", d_model, ") >= 1");
  const auto options = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor positions = at::arange(offset, offset + length, options).unsqueeze(1);  // (L, 1)
  // (ceil(D/2)): 10000^(-2i/D); column 2i gets sin, column 2i+1 cos of the same angle.
  const at::Tensor frequencies =
      at::pow(10000.0, -at::arange(0, d_model, 2, options) / static_cast<double>(d_model));
  const at::Tensor angles = positions * frequencies;  // (L, ceil(D/2))
  at::Tensor table = at::empty({length, d_model}, options);
  table.slice(1, 0, d_model, 2).copy_(angles.sin());
  table.slice(1, 1, d_model, 2).copy_(angles.cos().narrow(1, 0, d_model / 2));
  return table.to(at::kFloat);
}

LearnedPositionsImpl::LearnedPositionsImpl(LearnedPositionsOptions options_)
    : options(std::move(options_)) {
  reset();
}

void LearnedPositionsImpl::reset() {
  TORCH_CHECK(options.max_length() >= 1 && options.d_model() >= 1, "LearnedPositions: max_length (",
              options.max_length(), ") and d_model (", options.d_model(), ") must be >= 1");
  weight = register_parameter("weight", at::empty({options.max_length(), options.d_model()}));
  torch::NoGradGuard no_grad;
  weight.normal_(0.0, 0.02);
}

at::Tensor LearnedPositionsImpl::forward(int64_t length, int64_t offset) {
  TORCH_CHECK(offset >= 0 && offset + length <= options.max_length(), "LearnedPositions: positions ",
              offset, "..", offset + length - 1, " are past max_length (", options.max_length(),
              ") (HINT: raise the model's max_length)");
  return weight.narrow(0, offset, length);
}

}  // namespace moelab::nn
