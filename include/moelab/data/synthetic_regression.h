// A seeded regression set with a piecewise-linear target, the structure a mixture of experts
// fits well: x ~ N(0, I), the region of x is the direction (of num_regions random ones) it is
// closest to, and y = A_region x / sqrt(input_dim) + N(0, noise_std^2) with one random matrix A
// per region. Several outputs at once, so per-output and averaged regression metrics differ.
#pragma once

#include <ATen/ATen.h>
#include <torch/arg.h>

#include <string>

#include "moelab/data/batch.h"

namespace YAML {
class Node;
}

namespace moelab::data {

struct SyntheticRegressionOptions {
  /// Samples to draw, >= 1. Default 4096.
  TORCH_ARG(int64_t, num_samples) = 4096;
  /// Features per sample, >= 1. Default 8.
  TORCH_ARG(int64_t, input_dim) = 8;
  /// Regression targets per sample, >= 1. Default 3.
  TORCH_ARG(int64_t, num_outputs) = 3;
  /// Linear pieces of the target, >= 1. Default 4.
  TORCH_ARG(int64_t, num_regions) = 4;
  /// Standard deviation of the target noise, >= 0. Default 0.1.
  TORCH_ARG(double, noise_std) = 0.1;
  /// Same seed, same data. Default 0.
  TORCH_ARG(uint64_t, seed) = 0;
};

YAML::Node to_yaml(const SyntheticRegressionOptions& options);
void from_yaml(const YAML::Node& node, SyntheticRegressionOptions& options,
               const std::string& where);

/// inputs (N, input_dim) float32, targets (N, num_outputs) float32, regions (N) int64. Drawn
/// from its own generator (the global RNG is untouched); ConfigError for options out of range.
Batch make_synthetic_regression(const SyntheticRegressionOptions& options);

}  // namespace moelab::data
