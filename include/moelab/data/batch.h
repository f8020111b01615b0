// One batch as a set of named tensors. Every tensor's first dimension is the batch (B); what
// a model or a task needs beyond that it reads by name, so a new model (token ids, a padding
// mask, several inputs) needs no new batch type and no change to the trainer.
//
// Names every part of moelab agrees on:
//   inputs        (B, ...) the model's input (vectors, images, sequences of features)
//   targets       (B) int64 class labels, or (B, outputs) float32 regression targets
//   padding_mask  (B, L) bool, true = a real position (sequence models)
//   token_ids     (B, L) int64 (language models; the hash router)
//   target_word_starts  (B, L) bool, the target token begins a word (per-word perplexity)
//   token_tags    (B, L) int64, each input token's part-of-speech class, -1 if none (analysis)
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <string>
#include <vector>

namespace moelab::data {

inline constexpr const char* kInputs = "inputs";
inline constexpr const char* kTargets = "targets";
inline constexpr const char* kPaddingMask = "padding_mask";
inline constexpr const char* kTokenIds = "token_ids";
inline constexpr const char* kTargetWordStarts = "target_word_starts";
inline constexpr const char* kTokenTags = "token_tags";

class Batch {
 public:
  Batch() = default;
  Batch(std::map<std::string, at::Tensor> tensors) : tensors_(std::move(tensors)) {}

  /// The tensor called `name`; DataError naming the batch's tensors if it has none.
  const at::Tensor& at(const std::string& name) const;
  /// The tensor called `name`, or an undefined tensor (optional inputs such as a padding mask).
  at::Tensor get(const std::string& name) const;
  bool has(const std::string& name) const { return tensors_.count(name) > 0; }
  void set(const std::string& name, at::Tensor tensor) { tensors_[name] = std::move(tensor); }

  /// Samples in the batch (the first dimension of its tensors); 0 when empty.
  int64_t size() const;
  std::vector<std::string> names() const;
  const std::map<std::string, at::Tensor>& tensors() const { return tensors_; }

  /// The rows `index` (int64 (n)) of every tensor.
  Batch rows(const at::Tensor& index) const;
  /// Rows [start, start + count) of every tensor, without copying.
  Batch range(int64_t start, int64_t count) const;

 private:
  std::map<std::string, at::Tensor> tensors_;
};

}  // namespace moelab::data
