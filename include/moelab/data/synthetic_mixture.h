// A seeded Gaussian-mixture classification set with known structure: cluster c has a centre
// drawn from N(0, center_scale^2 I), its samples are centre + N(0, cluster_std^2 I), and its label
// is c mod num_classes, so several clusters share a class. A router that specialises should send
// each cluster to few experts; the true cluster of every sample is kept for that analysis.
#pragma once

#include <ATen/ATen.h>
#include <torch/arg.h>

#include <string>

namespace YAML {
class Node;
}

namespace moelab::data {

struct SyntheticMixtureOptions {
  /// Samples to draw, >= 1. Default 4096.
  TORCH_ARG(int64_t, num_samples) = 4096;
  /// Features per sample, >= 1. Default 16.
  TORCH_ARG(int64_t, input_dim) = 16;
  /// Classes, in [2, num_clusters]. Default 4.
  TORCH_ARG(int64_t, num_classes) = 4;
  /// Mixture components, >= num_classes. Default 8.
  TORCH_ARG(int64_t, num_clusters) = 8;
  /// Standard deviation of the cluster centres. Default 3.
  TORCH_ARG(double, center_scale) = 3.0;
  /// Standard deviation of samples around their centre, > 0. Default 1.
  TORCH_ARG(double, cluster_std) = 1.0;
  /// Same seed, same data. Default 0.
  TORCH_ARG(uint64_t, seed) = 0;
};

YAML::Node to_yaml(const SyntheticMixtureOptions& options);
void from_yaml(const YAML::Node& node, SyntheticMixtureOptions& options, const std::string& where);

struct LabelledVectors {
  at::Tensor features;  // (N, input_dim) float32
  at::Tensor labels;    // (N) int64 in [0, num_classes)
  at::Tensor clusters;  // (N) int64 in [0, num_clusters)
};

/// Draws the data set from its own generator (the global RNG is untouched).
LabelledVectors make_synthetic_mixture(const SyntheticMixtureOptions& options);

}  // namespace moelab::data
