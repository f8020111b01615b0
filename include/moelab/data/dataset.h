// What a data set is to the trainer: labelled inputs split into train, validation and test parts,
// plus the class names for reports and an optional augmentation of training batches.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <vector>

namespace moelab::data {

struct LabelledSet {
  at::Tensor inputs;  // (N, ...) float32: vectors (N, D) or images (N, C, H, W)
  at::Tensor labels;  // (N) int64 in [0, num_classes)

  int64_t size() const { return inputs.defined() ? inputs.size(0) : 0; }
  LabelledSet rows(const at::Tensor& index) const {
    return {inputs.index_select(0, index), labels.index_select(0, index)};
  }
};

struct Splits {
  LabelledSet train, val, test;  // val and test may be empty (size 0)
  std::vector<std::string> class_names;
  /// Applied to each training batch (random crop, flip, ...); draws from the global generator,
  /// which checkpoints save. Empty: no augmentation.
  std::function<at::Tensor(const at::Tensor& batch)> augment;
};

/// Moves a seeded `fraction` of `train` into `val` (the same seed, the same split).
void split_validation(Splits& splits, double fraction, uint64_t seed);

}  // namespace moelab::data
