#include "moelab/data/synthetic_regression.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include <cmath>

#include "moelab/config/fields.h"
#include "moelab/util/errors.h"
#include "moelab/util/runtime.h"

namespace moelab::data {

template <typename V>
void visit(V& v, SyntheticRegressionOptions& o) {
  v.field("num_samples", o.num_samples());
  v.field("input_dim", o.input_dim());
  v.field("num_outputs", o.num_outputs());
  v.field("num_regions", o.num_regions());
  v.field("noise_std", o.noise_std());
  v.field("seed", o.seed());
}
MOELAB_DEFINE_OPTIONS_YAML(SyntheticRegressionOptions)

Batch make_synthetic_regression(const SyntheticRegressionOptions& o) {
  auto require = [](bool ok, const std::string& key, const std::string& rule, auto value) {
    if (!ok) {
      throw ConfigError("data." + key + ": must be " + rule + ", got " + std::to_string(value));
    }
  };
  require(o.num_samples() >= 1 && o.num_samples() <= (int64_t{1} << 31), "num_samples",
          "in [1, 2^31]", o.num_samples());
  require(o.input_dim() >= 1, "input_dim", ">= 1", o.input_dim());
  require(o.num_outputs() >= 1, "num_outputs", ">= 1", o.num_outputs());
  // x in float64 plus the gathered (N, outputs, D) maps: the larger term dominates.
  const double bytes = 8.0 * static_cast<double>(o.num_samples()) * static_cast<double>(o.input_dim()) *
                       (2.0 + static_cast<double>(o.num_outputs()));
  require(physical_memory_bytes() == 0 || bytes <= static_cast<double>(physical_memory_bytes()),
          "num_samples", "small enough to fit in memory (about " + fmt::format("{:.1f}", bytes / 1e9) +
                             " GB needed)", o.num_samples());
  require(o.num_regions() >= 1, "num_regions", ">= 1", o.num_regions());
  require(std::isfinite(o.noise_std()) && o.noise_std() >= 0, "noise_std", "finite and >= 0",
          o.noise_std());
  at::Generator generator = at::detail::createCPUGenerator(o.seed());
  const auto d = o.input_dim();
  at::Tensor directions = at::normal(0.0, 1.0, {o.num_regions(), d}, generator, at::kDouble);
  at::Tensor maps = at::normal(0.0, 1.0, {o.num_regions(), o.num_outputs(), d}, generator, at::kDouble);
  at::Tensor x = at::normal(0.0, 1.0, {o.num_samples(), d}, generator, at::kDouble);
  at::Tensor regions = x.matmul(directions.t()).argmax(1);  // (N)
  // y_n = A_{region(n)} x_n / sqrt(d): (N, outputs, d) x (N, d, 1)
  at::Tensor y = maps.index_select(0, regions).bmm(x.unsqueeze(2)).squeeze(2) /
                 std::sqrt(static_cast<double>(d));
  y = y + at::normal(0.0, 1.0, y.sizes(), generator, at::kDouble) * o.noise_std();
  return Batch({{kInputs, x.to(at::kFloat)}, {kTargets, y.to(at::kFloat)}, {"regions", regions}});
}

}  // namespace moelab::data
