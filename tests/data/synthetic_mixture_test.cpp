#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moelab/data/synthetic_mixture.h"
#include "moelab/util/errors.h"

using moelab::data::make_synthetic_mixture;
using moelab::data::SyntheticMixtureOptions;

TEST(SyntheticMixtureTest, SeededAndStructured) {
  auto options = SyntheticMixtureOptions().num_samples(600).input_dim(5).num_classes(3).num_clusters(6);
  auto a = make_synthetic_mixture(options), b = make_synthetic_mixture(options);
  auto c = make_synthetic_mixture(SyntheticMixtureOptions(options).seed(1));
  EXPECT_TRUE(torch::equal(a.features, b.features));
  EXPECT_FALSE(torch::equal(a.features, c.features));
  EXPECT_EQ(a.features.sizes(), at::IntArrayRef({600, 5}));
  EXPECT_TRUE(torch::equal(a.labels, a.clusters.remainder(3)));
  EXPECT_EQ(std::get<0>(at::_unique(a.clusters)).numel(), 6);
  // Samples sit around their cluster's mean: the spread within a cluster is cluster_std.
  at::Tensor members = a.features.index_select(0, (a.clusters == 0).nonzero().view({-1}));
  EXPECT_NEAR(members.std(0).mean().item<double>(), 1.0, 0.25);
}

TEST(SyntheticMixtureTest, RejectsImpossibleOptions) {
  EXPECT_THROW(make_synthetic_mixture(SyntheticMixtureOptions().num_classes(9).num_clusters(8)),
               moelab::ConfigError);
  EXPECT_THROW(make_synthetic_mixture(SyntheticMixtureOptions().num_samples(0)), moelab::ConfigError);
}
