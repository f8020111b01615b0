#include "moelab/train/perturbation_task.h"

#include <array>
#include <cmath>

#include "moelab/data/perturbation.h"
#include "moelab/util/errors.h"

namespace moelab::train {

namespace {

constexpr std::array<int64_t, 3> kTopGenes{20, 40, 80};

// Per cell line: samples, loss, mse, then (sum of r^2, scored samples) for top-20/40/80 and
// (sum of r, scored samples) for pearson_de.
constexpr int kSamples = 0, kLoss = 1, kMse = 2, kRank = 3, kPearson = kRank + 2 * 3, kSums = kPearson + 2;
using Sums = std::array<double, kSums>;

// Pearson r of each row of a and b (n, m) in float64; `scored` false where either row is
// constant (its centred sum of squares is 0 up to rounding).
void row_pearson(const at::Tensor& a, const at::Tensor& b, at::Tensor& r, at::Tensor& scored) {
  const at::Tensor ac = a - a.mean(1, true), bc = b - b.mean(1, true);
  const at::Tensor va = (ac * ac).sum(1), vb = (bc * bc).sum(1);
  const double eps = 1e-12;
  scored = va.gt(eps * (a * a).sum(1).clamp_min(1e-300)) & vb.gt(eps * (b * b).sum(1).clamp_min(1e-300));
  r = at::where(scored, (ac * bc).sum(1) / (va * vb).clamp_min(1e-300).sqrt(), at::zeros_like(va));
}

class PerturbationAccumulator : public MetricAccumulator {
 public:
  void add(const models::ModelOutput& output, const data::Batch& batch,
           const at::Tensor& sample_loss) override {
    const int64_t b = batch.size();
    if (b == 0) return;
    const at::Tensor basal = batch.at(data::kBasal).to(at::kDouble);
    const at::Tensor true_de = batch.at(data::kTargets).to(at::kDouble) - basal;  // (B, G)
    const at::Tensor pred_de = output.outputs.detach().to(at::kDouble) - basal;   // (B, G)
    const at::Tensor cells = batch.has(data::kCellLine) ? batch.at(data::kCellLine).to(at::kLong)
                                                        : at::zeros({b}, at::kLong);
    std::vector<at::Tensor> columns;  // each (B)
    columns.push_back(at::ones({b}, at::kDouble));
    columns.push_back(sample_loss.detach().to(at::kDouble));
    columns.push_back((pred_de - true_de).pow(2).mean(1));
    const at::Tensor magnitude = true_de.abs();
    for (int64_t top : kTopGenes) {
      const at::Tensor genes = std::get<1>(magnitude.topk(std::min<int64_t>(top, true_de.size(1)), 1));
      at::Tensor r, scored;
      row_pearson(true_de.gather(1, genes), pred_de.gather(1, genes), r, scored);
      columns.push_back(r * r);
      columns.push_back(scored.to(at::kDouble));
    }
    at::Tensor r, scored;
    row_pearson(true_de, pred_de, r, scored);
    columns.push_back(r);
    columns.push_back(scored.to(at::kDouble));
    const at::Tensor table = at::stack(columns, 1).contiguous();  // (B, kSums)
    const at::Tensor cell = cells.contiguous();
    const double* rows = table.data_ptr<double>();
    const int64_t* cell_of = cell.data_ptr<int64_t>();
    for (int64_t i = 0; i < b; ++i) {
      Sums& sums = per_cell_[cell_of[i]];
      for (int c = 0; c < kSums; ++c) sums[c] += rows[i * kSums + c];
    }
  }

  Metrics result() const override {
    Metrics m;
    Sums total{};
    nlohmann::json per_cell = nlohmann::json::object();
    for (const auto& [cell, sums] : per_cell_) {
      for (int c = 0; c < kSums; ++c) total[c] += sums[c];
      per_cell[std::to_string(cell)] = values_json(sums);
    }
    m.samples = static_cast<int64_t>(total[kSamples]);
    const nlohmann::json overall = values_json(total);
    for (const auto& [name, value] : overall.items()) {
      if (name != "skipped" && name != "samples") m.values[name] = value.get<double>();
    }
    m.details = {{"skipped", overall.at("skipped")}, {"per_cell_line", per_cell}};
    return m;
  }

  nlohmann::json state() const override {
    nlohmann::json cells = nlohmann::json::object();
    for (const auto& [cell, sums] : per_cell_) cells[std::to_string(cell)] = sums;
    return {{"per_cell_line", cells}};
  }
  void load_state(const nlohmann::json& state) override {
    per_cell_.clear();
    for (const auto& [cell, sums] : state.at("per_cell_line").items()) {
      per_cell_[std::stoll(cell)] = sums.get<Sums>();
    }
  }

 private:
  static nlohmann::json values_json(const Sums& s) {
    auto mean = [](double sum, double count) { return count > 0 ? sum / count : 0.0; };
    nlohmann::json values{{"samples", s[kSamples]},
                          {"loss", mean(s[kLoss], s[kSamples])},
                          {"mse", mean(s[kMse], s[kSamples])}};
    nlohmann::json skipped = nlohmann::json::object();
    for (size_t t = 0; t < kTopGenes.size(); ++t) {
      const std::string name = "r2_top" + std::to_string(kTopGenes[t]);
      values[name] = mean(s[kRank + 2 * t], s[kRank + 2 * t + 1]);
      skipped[name] = s[kSamples] - s[kRank + 2 * t + 1];
    }
    values["pearson_de"] = mean(s[kPearson], s[kPearson + 1]);
    skipped["pearson_de"] = s[kSamples] - s[kPearson + 1];
    values["skipped"] = skipped;
    return values;
  }

  std::map<int64_t, Sums> per_cell_;
};

class PerturbationTask : public Task {
 public:
  std::string name() const override { return "perturbation"; }
  std::vector<MetricInfo> metrics() const override {
    return {{"loss", false},      {"mse", false},      {"r2_top20", true},
            {"r2_top40", true},   {"r2_top80", true},  {"pearson_de", true}};
  }
  at::Tensor sample_loss(const models::ModelOutput& output, const data::Batch& batch) const override {
    const at::Tensor& targets = batch.at(data::kTargets);
    const at::Tensor predictions = output.outputs.to(at::kFloat);
    TORCH_CHECK(predictions.sizes() == targets.sizes(), "task perturbation: the model predicts ",
                predictions.sizes(), " for targets ", targets.sizes(),
                " (HINT: model.num_genes must be the data's gene count)");
    return (predictions - targets).pow(2).mean(1);
  }
  std::unique_ptr<MetricAccumulator> accumulator() const override {
    return std::make_unique<PerturbationAccumulator>();
  }
  void check_batch(const data::Batch& batch) const override {
    const at::Tensor& targets = batch.at(data::kTargets);
    if (!batch.has(data::kBasal)) {
      throw DataError("task perturbation: the data has no basal expression (a 'basal' tensor); "
                      "HINT: data.name: perturbation");
    }
    const at::Tensor& basal = batch.at(data::kBasal);
    if (!at::isFloatingType(targets.scalar_type()) || targets.dim() != 2 || basal.sizes() != targets.sizes()) {
      throw DataError("task perturbation: targets and basal must be (B, genes) real numbers of one "
                      "shape, got targets " + std::string(c10::toString(targets.scalar_type())) + " " +
                      c10::str(targets.sizes()) + " and basal " + c10::str(basal.sizes()));
    }
  }
};

}  // namespace

std::shared_ptr<Task> make_perturbation_task() { return std::make_shared<PerturbationTask>(); }

}  // namespace moelab::train
