#include "moelab/data/dataset.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "moelab/util/errors.h"

namespace moelab::data {

namespace {

// A source's samples `index_` as a source: rows are mapped into the parent's before reading.
class SubsetSource : public DataSource {
 public:
  SubsetSource(std::shared_ptr<const DataSource> parent, at::Tensor index)
      : parent_(std::move(parent)), index_(std::move(index)) {}
  int64_t size() const override { return index_.size(0); }
  Batch rows(const at::Tensor& index) const override {
    return parent_->rows(index_.index_select(0, index));
  }
  std::shared_ptr<DataSource> subset(const at::Tensor& index) const override {
    return std::make_shared<SubsetSource>(parent_, index_.index_select(0, index));
  }

 private:
  std::shared_ptr<const DataSource> parent_;
  at::Tensor index_;  // (n) int64 rows of the parent
};

}  // namespace

const at::Tensor& Batch::at(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    std::string present;
    for (const auto& [key, _] : tensors_) present += (present.empty() ? "" : ", ") + key;
    throw DataError("batch: no tensor '" + name + "' (the batch has: " +
                    (present.empty() ? std::string("nothing") : present) +
                    "); the data set does not provide what the model or task needs");
  }
  return it->second;
}

at::Tensor Batch::get(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? at::Tensor() : it->second;
}

int64_t Batch::size() const {
  for (const auto& [_, t] : tensors_) {
    if (t.defined() && t.dim() > 0) return t.size(0);
  }
  return 0;
}

std::vector<std::string> Batch::names() const {
  std::vector<std::string> out;
  for (const auto& [key, _] : tensors_) out.push_back(key);
  return out;
}

Batch Batch::rows(const at::Tensor& index) const {
  std::map<std::string, at::Tensor> out;
  for (const auto& [key, t] : tensors_) out[key] = t.index_select(0, index);
  return Batch(std::move(out));
}

Batch Batch::range(int64_t start, int64_t count) const {
  std::map<std::string, at::Tensor> out;
  for (const auto& [key, t] : tensors_) out[key] = t.narrow(0, start, count);
  return Batch(std::move(out));
}

Batch DataSource::range(int64_t start, int64_t count) const {
  return rows(at::arange(start, start + count, at::kLong));
}

std::shared_ptr<DataSource> DataSource::subset(const at::Tensor& index) const {
  return std::make_shared<SubsetSource>(shared_from_this(), index);
}

TensorSet::TensorSet(Batch tensors) : tensors_(std::move(tensors)) {
  size_ = tensors_.size();
  for (const auto& [key, t] : tensors_.tensors()) {
    if (!t.defined() || t.dim() == 0 || t.size(0) != size_) {
      throw DataError("data: tensor '" + key + "' has " +
                      (t.defined() && t.dim() > 0 ? std::to_string(t.size(0)) : std::string("no")) +
                      " rows, the set has " + std::to_string(size_));
    }
  }
}

std::shared_ptr<DataSource> TensorSet::subset(const at::Tensor& index) const {
  return std::make_shared<TensorSet>(tensors_.rows(index));
}

void split_validation(Splits& splits, double fraction, uint64_t seed) {
  if (splits.val) return;  // the data set's own validation split
  const int64_t n = size_of(splits.train);
  const auto n_val = static_cast<int64_t>(std::floor(fraction * static_cast<double>(n)));
  if (n_val == 0) return;
  at::Generator generator = at::detail::createCPUGenerator(seed * 1000003ULL + 7919ULL);
  at::Tensor order = at::randperm(n, generator, at::kLong);
  std::shared_ptr<DataSource> all = splits.train;
  splits.val = all->subset(order.narrow(0, 0, n_val));
  splits.train = all->subset(order.narrow(0, n_val, n - n_val));
}

at::Tensor epoch_permutation(uint64_t seed, int64_t epoch, int64_t size) {
  at::Generator generator = at::detail::createCPUGenerator(seed * 1000003ULL + epoch);
  return at::randperm(size, generator, at::kLong);
}

}  // namespace moelab::data
