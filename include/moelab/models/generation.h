// Sampling text from a MoEDecoder, one token at a time with a key/value cache: the prompt is
// run once, then each new token costs one position's forward pass. Sampling as in Hugging Face's
// generate(): logits / temperature, then top-k, then top-p (nucleus; Holtzman et al. 2019), then a
// draw from a seeded generator; temperature 0 is greedy. When the context reaches the model's
// max_length, the cache is rebuilt from the last max_length / 2 tokens.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "moelab/models/decoder.h"

namespace moelab::models {

struct GenerationOptions {
  int64_t max_new_tokens = 50;
  /// > 0 scales the logits; 0 picks the most likely token (greedy).
  double temperature = 1.0;
  /// Keep the k most likely tokens; 0 = all.
  int64_t top_k = 0;
  /// Keep the smallest set of most likely tokens whose probability reaches p; 1 = all.
  double top_p = 1.0;
  uint64_t seed = 0;
  /// Stop after this token (the end-of-document token); -1 = never.
  int64_t stop_token = -1;
};

/// The probabilities (V) the options sample from, given one position's logits (V).
at::Tensor sampling_distribution(const at::Tensor& logits, const GenerationOptions& options);

/// The new tokens after `prompt` (at least one id); `on_token` (optional) sees each as it is
/// drawn. The model is put in eval mode.
std::vector<int32_t> generate(MoEDecoderImpl& model, const std::vector<int32_t>& prompt,
                              const GenerationOptions& options,
                              const std::function<void(int32_t)>& on_token = {});

}  // namespace moelab::models
