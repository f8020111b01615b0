// Absolute position encodings for Transformer inputs: the fixed sinusoidal table of Vaswani et
// al. 2017 and learned position embeddings (GPT-2 style, initialised N(0, 0.02^2)). Rotary
// positions act inside attention instead (attention.h).
//
// Legend: L positions, D width.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include <string>

namespace moelab::nn {

enum class PositionKind { kNone, kSinusoidal, kLearned, kRope };
/// "none", "sinusoidal", "learned", "rope"; an error naming them otherwise.
PositionKind parse_position_kind(const std::string& name);
std::string to_string(PositionKind kind);

/// (L, D) float32: [p, 2i] = sin(p / 10000^(2i/D)), [p, 2i+1] = cos(p / 10000^(2i/D)), for
/// positions offset .. offset + L - 1.
at::Tensor sinusoidal_positions(int64_t length, int64_t d_model, int64_t offset = 0);

struct LearnedPositionsOptions {
  LearnedPositionsOptions(int64_t max_length, int64_t d_model)
      : max_length_(max_length), d_model_(d_model) {}
  /// Positions the table holds, >= 1.
  TORCH_ARG(int64_t, max_length);
  /// Width D, >= 1.
  TORCH_ARG(int64_t, d_model);
};

class LearnedPositionsImpl : public torch::nn::Cloneable<LearnedPositionsImpl> {
 public:
  explicit LearnedPositionsImpl(LearnedPositionsOptions options);
  void reset() override;
  /// (L, D): the rows for positions offset .. offset + L - 1 (an error past max_length).
  at::Tensor forward(int64_t length, int64_t offset = 0);

  LearnedPositionsOptions options;
  at::Tensor weight;  // (max_length, D)
};
TORCH_MODULE(LearnedPositions);

}  // namespace moelab::nn
