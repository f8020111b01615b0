// What a data set is to the trainer: sources of samples for train, validation and test, the
// class names for reports, and an optional augmentation of training batches.
//
// A DataSource is indexed by sample: `rows(index)` returns those samples as one Batch. The
// trainer draws the index from an order that is a pure function of (seed, epoch, cursor), so a
// resumed run sees the same batches. An in-memory set (TensorSet) is one kind of source; a
// source that reads fixed-length blocks from a memory-mapped token file is another (a sample is
// then a block), and both serve the same loop.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "moelab/data/batch.h"
#include "moelab/data/tokenizer.h"

namespace moelab::data {

/// Sources live in shared_ptrs (make_shared): a subset view keeps its parent alive.
class DataSource : public std::enable_shared_from_this<DataSource> {
 public:
  virtual ~DataSource() = default;
  /// Samples in the source.
  virtual int64_t size() const = 0;
  /// The samples `index` (int64 (n), values in [0, size())) as one batch.
  virtual Batch rows(const at::Tensor& index) const = 0;
  /// Samples [start, start + count), in order (evaluation); by default rows(arange).
  virtual Batch range(int64_t start, int64_t count) const;
  /// The samples `index` as a source of their own (a validation split, a client's shard). By
  /// default a view that maps its rows into this source's.
  virtual std::shared_ptr<DataSource> subset(const at::Tensor& index) const;
};

/// Named tensors held in memory, all with the same first dimension N.
class TensorSet : public DataSource {
 public:
  TensorSet() = default;
  /// DataError naming the tensor if the first dimensions differ.
  explicit TensorSet(Batch tensors);

  int64_t size() const override { return size_; }
  Batch rows(const at::Tensor& index) const override { return tensors_.rows(index); }
  Batch range(int64_t start, int64_t count) const override {
    return tensors_.range(start, count);
  }
  std::shared_ptr<DataSource> subset(const at::Tensor& index) const override;

  /// Every sample as one batch (no copy).
  const Batch& all() const { return tensors_; }

 private:
  Batch tensors_;
  int64_t size_ = 0;
};

/// The size of an optional source (0 when there is none).
inline int64_t size_of(const std::shared_ptr<DataSource>& source) {
  return source ? source->size() : 0;
}

struct Splits {
  std::shared_ptr<DataSource> train, val, test;  // val and test may be null
  /// Classification: a name per class (reports, export). Empty for other tasks.
  std::vector<std::string> class_names;
  /// Per-channel input normalisation the loader applied (empty if none): a user of an export
  /// applies the same to their inputs.
  std::vector<double> input_mean, input_std;
  /// Applied to each training batch (random crop, flip, ...); draws from the global generator,
  /// which checkpoints save. Empty: no augmentation.
  std::function<Batch(Batch batch)> augment;
  /// Text data: the tokenizer that made the token ids (saved with the run and its exports).
  std::shared_ptr<const Tokenizer> tokenizer;
  /// Names of the token_tags classes (part of speech), empty if the text has none.
  std::vector<std::string> tag_names;
  /// Sizes a model may take from the data, by the model's option name (num_genes,
  /// num_cell_lines, input_dim): a model option set to 0 gets the data's value, and one set
  /// otherwise must equal it.
  std::map<std::string, int64_t> sizes;
  /// Perturbation data: the name of each cell line (the cell_line tensor's values index it).
  std::vector<std::string> cell_line_names;
  /// What the loader wants the user to know about the data, e.g. "3 invalid SMILES skipped"
  /// (the trainer prints them and writes them to the run's metrics log at the start).
  std::vector<std::string> notes;
};

/// Moves a seeded `fraction` of `train` into `val` (the same seed, the same split); a data set
/// that has its own validation split keeps it.
void split_validation(Splits& splits, double fraction, uint64_t seed);

/// The order of one epoch over `size` samples: a pure function of (seed, epoch).
at::Tensor epoch_permutation(uint64_t seed, int64_t epoch, int64_t size);

}  // namespace moelab::data
