#include "moelab/data/synthetic_mixture.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include "moelab/config/fields.h"
#include "moelab/util/errors.h"
#include "moelab/util/runtime.h"

namespace moelab::data {

template <typename V>
void visit(V& v, SyntheticMixtureOptions& o) {
  v.field("num_samples", o.num_samples());
  v.field("input_dim", o.input_dim());
  v.field("num_classes", o.num_classes());
  v.field("num_clusters", o.num_clusters());
  v.field("center_scale", o.center_scale());
  v.field("cluster_std", o.cluster_std());
  v.field("seed", o.seed());
}
MOELAB_DEFINE_OPTIONS_YAML(SyntheticMixtureOptions)

LabelledVectors make_synthetic_mixture(const SyntheticMixtureOptions& o) {
  auto require = [](bool ok, const std::string& message) {
    if (!ok) throw ConfigError("synthetic_mixture: " + message);
  };
  require(o.num_samples() >= 1, "num_samples (" + std::to_string(o.num_samples()) + ") must be >= 1");
  require(o.input_dim() >= 1, "input_dim (" + std::to_string(o.input_dim()) + ") must be >= 1");
  require(o.num_classes() >= 2 && o.num_classes() <= o.num_clusters(),
          "num_classes (" + std::to_string(o.num_classes()) + ") must be in [2, num_clusters=" +
              std::to_string(o.num_clusters()) + "]");
  require(o.cluster_std() > 0, "cluster_std must be > 0");
  require(o.num_samples() <= (int64_t{1} << 31), "num_samples (" + std::to_string(o.num_samples()) +
                                                      ") must be <= 2^31");
  // Features, noise and centres gathered: about 12 bytes per value while the set is drawn.
  const double bytes = 12.0 * static_cast<double>(o.num_samples()) * static_cast<double>(o.input_dim());
  require(physical_memory_bytes() == 0 || bytes <= static_cast<double>(physical_memory_bytes()),
          "num_samples (" + std::to_string(o.num_samples()) + ") x input_dim (" +
              std::to_string(o.input_dim()) + ") needs about " + fmt::format("{:.1f}", bytes / 1e9) +
              " GB; this machine has " +
              fmt::format("{:.1f}", static_cast<double>(physical_memory_bytes()) / 1e9) + " GB");
  at::Generator generator = at::detail::createCPUGenerator(o.seed());
  at::Tensor centres =
      at::normal(0.0, o.center_scale(), {o.num_clusters(), o.input_dim()}, generator);
  LabelledVectors out;
  out.clusters = at::randint(o.num_clusters(), {o.num_samples()}, generator, at::kLong);
  at::Tensor noise = at::normal(0.0, o.cluster_std(), {o.num_samples(), o.input_dim()}, generator);
  out.features = (centres.index_select(0, out.clusters) + noise).to(at::kFloat);
  out.labels = out.clusters.remainder(o.num_classes());
  return out;
}

}  // namespace moelab::data
