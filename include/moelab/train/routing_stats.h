// What routing did, sample by sample: the loss of the samples each expert computed, the counts of
// (class, expert) assignments, and how much the expert choice says about the class (mutual
// information). The trainer logs these; the report plots them.
#pragma once

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "moelab/nn/moe_layer.h"

namespace moelab::train {

/// Per-expert sums over the samples an expert computed (each of a sample's kept top-k choices
/// counts once): the samples' loss and their number.
class ExpertTally {
 public:
  /// `sample_loss` (B) must be per sample, and the layer must route samples (indices (B, k)).
  /// Layers that route tokens within samples (indices with another row count) are skipped.
  void add(const nn::RoutingStats& stats, const at::Tensor& sample_loss);
  bool empty() const { return !count_.defined(); }
  void clear() { loss_sum_ = count_ = at::Tensor(); }

  /// Mean loss per expert; null in JSON (NaN here) for an expert that computed nothing.
  std::vector<double> mean_loss() const;
  /// Fraction of the counted assignments per expert.
  std::vector<double> usage() const;
  std::vector<double> counts() const;

  nlohmann::json state() const;
  void load_state(const nlohmann::json& state);

 private:
  at::Tensor loss_sum_, count_;  // (E) double
};

/// Every tally's state(), in order: a JSON array.
nlohmann::json tally_states(const std::vector<ExpertTally>& tallies);
/// Loads states[l] into tallies[l], growing `tallies` to the states' count where it is shorter.
void load_tally_states(std::vector<ExpertTally>& tallies, const nlohmann::json& states);

/// (num_classes, E) int64: how often a sample of each class was computed by each expert.
at::Tensor class_expert_counts(const nn::RoutingStats& stats, const at::Tensor& labels,
                               int64_t num_classes);

/// Mutual information I(class; expert) in nats from a (classes, E) count matrix.
double mutual_information(const at::Tensor& counts);

/// The `n` classes an expert sees most, with the share of its samples each makes up.
std::vector<std::pair<int64_t, double>> top_classes(const at::Tensor& counts, int64_t expert,
                                                    int64_t n);

/// A (rows, E) int64 count matrix as JSON, one array per row; counts_from_rows reads it back.
nlohmann::json count_rows(const at::Tensor& counts);
at::Tensor counts_from_rows(const nlohmann::json& rows);

/// A tensor's values, flattened, as doubles.
std::vector<double> to_doubles(const at::Tensor& t);

/// A vector of doubles as JSON with NaN written as null.
nlohmann::json to_json_numbers(const std::vector<double>& values);

}  // namespace moelab::train
