#include "moelab/analysis/perturbation_study.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "moelab/analysis/plot.h"
#include "moelab/analysis/study.h"
#include "moelab/config/fields.h"
#include "moelab/data/perturbation.h"
#include "moelab/run/run.h"
#include "moelab/run/run_config.h"
#include "moelab/train/progress.h"
#include "moelab/train/routing_stats.h"
#include "moelab/train/run_directory.h"
#include "moelab/train/task.h"

namespace fs = std::filesystem;

namespace moelab::analysis {

namespace {

constexpr int64_t kBatch = 256;
constexpr int kWeightBins = 10;

nlohmann::json metrics_json(const train::Metrics& m) {
  return {{"values", m.values}, {"details", m.details}, {"samples", m.samples}};
}

// The simulator's truth.json beside the data (DIR/truth.json for data.path DIR/csv), or null.
nlohmann::json simulation_truth(const YAML::Node& config) {
  YAML::Node section = config::clone(config["data"]);
  section.remove("name");
  const fs::path path =
      data::perturbation_data_directory(config::parse_options<data::PerturbationDataOptions>(section, "data"));
  for (const fs::path& candidate : {path / "truth.json", path.parent_path() / "truth.json"}) {
    if (fs::exists(candidate)) {
      nlohmann::json truth;
      std::ifstream(candidate) >> truth;
      if (truth.value("format", "") == "moelab-perturbation-truth") return truth;
    }
  }
  return nullptr;
}

// Each test sample's score (predictions) under `predict`, through the task's accumulator.
template <typename Predict>
train::Metrics score(const data::DataSource& source, const Predict& predict) {
  const auto task = train::make_task("perturbation");
  auto metrics = task->accumulator();
  for (int64_t start = 0; start < source.size(); start += kBatch) {
    const data::Batch rows = source.range(start, std::min(kBatch, source.size() - start));
    models::ModelOutput output;
    output.outputs = predict(rows);
    metrics->add(output, rows, task->sample_loss(output, rows));
  }
  return metrics->result();
}

std::string share_text(const nlohmann::json& shares) {
  std::string text;
  for (size_t e = 0; e < shares.size(); ++e) {
    text += fmt::format("{}E{} {:.0f}%", e ? ", " : "", e, 100 * shares[e].get<double>());
  }
  return text;
}

}  // namespace

nlohmann::json perturbation_baselines(const YAML::Node& config) {
  const data::Splits splits = run::load_data(config);
  if (data::size_of(splits.test) == 0) return nullptr;
  // The cell line's mean response (treated - basal) over the training split.
  const data::Batch train = splits.train->range(0, splits.train->size());
  const at::Tensor cells = train.at(data::kCellLine);
  const int64_t lines = static_cast<int64_t>(std::max<size_t>(splits.cell_line_names.size(), 1));
  const at::Tensor de = (train.at(data::kTargets) - train.at(data::kBasal)).to(at::kDouble);
  at::Tensor sums = at::zeros({lines, de.size(1)}, at::kDouble).index_add_(0, cells, de);
  const at::Tensor counts = at::zeros({lines}, at::kDouble).index_add_(0, cells, at::ones({cells.size(0)}, at::kDouble));
  const at::Tensor mean_de = (sums / counts.clamp_min(1).unsqueeze(1)).to(at::kFloat);
  return {{"no_change", metrics_json(score(*splits.test, [](const data::Batch& b) { return b.at(data::kBasal); }))},
          {"cell_line_mean", metrics_json(score(*splits.test, [&](const data::Batch& b) {
             return b.at(data::kBasal) + mean_de.index_select(0, b.at(data::kCellLine));
           }))}};
}

nlohmann::json analyse_perturbation_run(const std::string& run_dir, const YAML::Node& config) {
  const auto lines = train::read_metrics(run_dir);
  nlohmann::json out = nlohmann::json::object();
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
    if ((*it)["kind"] == "test") {
      out["test"] = *it;
      break;
    }
  }
  const run::LoadedCheckpoint loaded = run::load_checkpoint_model(run_dir);
  const data::Splits splits = run::load_data(loaded.config);
  out["cell_line_names"] = splits.cell_line_names;
  if (data::size_of(splits.test) == 0) return out;
  torch::NoGradGuard no_grad;
  models::Model& model = *loaded.model;
  model.eval();
  const int64_t cells = static_cast<int64_t>(std::max<size_t>(splits.cell_line_names.size(), 1));
  at::Tensor usage, histogram = at::zeros({kWeightBins}, at::kDouble);
  std::vector<at::Tensor> rows_seen, indices_seen, weights_seen;
  for (int64_t start = 0; start < splits.test->size(); start += kBatch) {
    const data::Batch rows = splits.test->range(start, std::min(kBatch, splits.test->size() - start));
    const models::ModelOutput output = model.forward(rows);
    if (output.moe_layers.empty()) return out;
    const nn::RoutingStats& s = output.moe_layers[0].stats;
    const int64_t experts = s.tokens_per_expert.size(0);
    if (experts < 2) return out;  // a dense run: nothing routed
    if (!usage.defined()) usage = at::zeros({cells * experts}, at::kDouble);
    const at::Tensor cell = rows.at(data::kCellLine).unsqueeze(1).expand_as(s.indices);
    usage.index_add_(0, (cell * experts + s.indices).reshape({-1}), s.weights.to(at::kDouble).reshape({-1}));
    // The top expert's weight, in bins of [1/k, 1] (0.5 to 1 for k = 2).
    const at::Tensor top = std::get<0>(s.weights.max(1)).to(at::kDouble);
    const double low = 1.0 / static_cast<double>(s.indices.size(1));
    const at::Tensor bin = ((top - low) / std::max(1 - low, 1e-9) * kWeightBins).floor().clamp(0, kWeightBins - 1).to(at::kLong);
    histogram.index_add_(0, bin, at::ones_like(top));
    rows_seen.push_back(rows.at(data::kSignatureRow));
    indices_seen.push_back(s.indices);
    weights_seen.push_back(s.weights.to(at::kDouble));
  }
  const int64_t experts = usage.size(0) / cells;
  const at::Tensor by_cell = usage.view({cells, experts});
  const at::Tensor shares = by_cell / by_cell.sum(1, true).clamp_min(1e-12);
  std::vector<std::vector<double>> table;
  for (int64_t c = 0; c < cells; ++c) table.push_back(train::to_doubles(shares[c]));
  out["usage_by_cell_line"] = table;
  out["mutual_information_cell_expert"] = train::mutual_information(by_cell);
  out["top_weight_histogram"] = train::to_doubles(histogram);
  const nlohmann::json truth = simulation_truth(loaded.config);
  if (truth.is_null() || !loaded.config["data"]["cell_line"].as<std::string>().empty()) return out;
  // Effective activity of each program in each test sample: triggered and not silent in the
  // sample's cell line.
  const auto active = truth["active_programs"].get<std::vector<std::vector<double>>>();
  const auto strength = truth["strength"].get<std::vector<std::vector<double>>>();
  const at::Tensor row = at::cat(rows_seen), index = at::cat(indices_seen), weight = at::cat(weights_seen);
  const at::Tensor cell = splits.test->range(0, splits.test->size()).at(data::kCellLine);
  const int64_t programs = static_cast<int64_t>(strength.at(0).size()), n = row.size(0);
  at::Tensor activity = at::zeros({n, programs}, at::kDouble);
  for (int64_t i = 0; i < n; ++i) {
    const auto r = row[i].item<int64_t>();
    const auto c = cell[i].item<int64_t>();
    for (int64_t p = 0; p < programs; ++p) {
      activity[i][p] = active.at(r).at(p) * (strength.at(c).at(p) > 0 ? 1.0 : 0.0);
    }
  }
  // (E, P): gate-weighted share of each expert's samples in which each program is active.
  at::Tensor mass = at::zeros({experts, n}, at::kDouble);
  mass.index_put_({index.reshape({-1}), at::arange(n).unsqueeze(1).expand_as(index).reshape({-1})},
                  weight.reshape({-1}), /*accumulate=*/true);
  const at::Tensor per_expert = mass.mm(activity) / mass.sum(1, true).clamp_min(1e-12);
  const at::Tensor overall = activity.mean(0).clamp_min(1e-12);
  // An expert with under 1% of the gate mass has too few samples for a lift: its row is 0 and
  // it is left out of the summary.
  const at::Tensor share = mass.sum(1) / mass.sum().clamp_min(1e-12);
  const at::Tensor counted = share.ge(0.01).to(at::kDouble).unsqueeze(1);
  const at::Tensor lift = per_expert / overall.unsqueeze(0) * counted;
  std::vector<std::vector<double>> lifts;
  for (int64_t e = 0; e < experts; ++e) lifts.push_back(train::to_doubles(lift[e]));
  out["program_lift"] = lifts;
  out["expert_share"] = train::to_doubles(share);
  out["best_lift_mean"] = std::get<0>(lift.max(0)).mean().item<double>();
  return out;
}

std::string perturbation_report(const nlohmann::json& study, const std::string& study_dir,
                                const std::string& report_dir) {
  auto png = [&](const std::string& name) { return (fs::path(report_dir) / name).string(); };
  const std::vector<std::string> metrics{"r2_top20", "r2_top40", "r2_top80", "pearson_de", "mse"};
  auto cell = [](const nlohmann::json& values, const std::string& key, const nlohmann::json& skipped, int64_t samples) {
    if (key != "mse" && skipped.contains(key) && skipped[key].get<double>() >= static_cast<double>(samples)) {
      return std::string("n/a");  // every sample skipped: a constant prediction has no r
    }
    return values.contains(key) ? fmt::format("{:.4f}", values[key].get<double>()) : std::string("-");
  };
  std::string table =
      "<table><tr><th>model</th><th>R&sup2; top-20 DE</th><th>R&sup2; top-40</th><th>R&sup2; top-80</th>"
      "<th>Pearson DE</th><th>MSE</th><th>parameters (total / active)</th><th>FLOPs / sample</th>"
      "<th>train time</th></tr>\n";
  std::vector<std::string> cell_names;
  std::vector<std::pair<std::string, nlohmann::json>> per_cell;  // (model, per_cell_line details)
  std::vector<Series> losses;
  std::string sections;
  int color = 0;
  for (const auto& run : study["runs"]) {
    const std::string name = run["name"];
    const auto& p = run["perturbation"];
    const auto& test = p["test"];
    if (cell_names.empty()) cell_names = p["cell_line_names"].get<std::vector<std::string>>();
    std::string row = fmt::format("<tr><td>{}</td>", html_escape(name));
    for (const auto& key : metrics) {
      const std::string text = test.contains(key) ? fmt::format("{:.4f}", test[key].get<double>()) : "-";
      row += key == "r2_top20" ? "<td><b>" + text + "</b></td>" : "<td>" + text + "</td>";
    }
    table += row + fmt::format("<td>{} / {}</td><td>{}</td><td>{}</td></tr>\n",
                               train::format_thousands(run["parameters_total"].get<int64_t>()),
                               train::format_thousands(run["parameters_active"].get<int64_t>()),
                               train::format_thousands(run["flops_per_sample"].get<int64_t>()),
                               train::format_clock(run["train_seconds"].get<double>()));
    if (test.contains("details")) per_cell.emplace_back(name, test["details"]["per_cell_line"]);
    ++color;
    Series train{name + " train", {}, {}, false, color}, val{name + " val", {}, {}, true, color};
    for (const auto& line : train::read_metrics((fs::path(study_dir) / name).string())) {
      if (line["kind"] == "train") {
        train.x.push_back(line["step"]);
        train.y.push_back(line["task_loss"]);
      } else if (line["kind"] == "eval") {
        val.x.push_back(line["step"]);
        val.y.push_back(line["val_loss"]);
      }
    }
    losses.push_back(train);
    if (!val.x.empty()) losses.push_back(val);
    if (!p.contains("usage_by_cell_line")) continue;
    const auto usage = p["usage_by_cell_line"].get<std::vector<std::vector<double>>>();
    std::vector<std::string> experts;
    for (size_t e = 0; e < usage.at(0).size(); ++e) experts.push_back("E" + std::to_string(e));
    const std::string usage_file = "usage_by_cell_line_" + name + ".png";
    heatmap(png(usage_file), {name + ": gate weight per expert, by cell line (test split)", "expert", "cell line"},
            cell_names, experts, usage);
    std::vector<std::string> bins;
    const auto histogram = p["top_weight_histogram"].get<std::vector<double>>();
    for (int b = 0; b < kWeightBins; ++b) bins.push_back(fmt::format("{}", b + 1));
    const std::string histogram_file = "gate_weights_" + name + ".png";
    bar_plot(png(histogram_file), {name + ": the top expert's gate weight (bins from 1/k to 1)", "bin", "samples"},
             bins, {Series{"samples", {}, histogram, false, 1}});
    sections += fmt::format(
        "<h3>{}</h3>\n<p>Mutual information between cell line and expert: <b>{:.3f} nats</b>.</p>\n"
        "<img src=\"{}\" alt=\"expert usage by cell line\">\n<img src=\"{}\" alt=\"gate weight histogram\">\n",
        html_escape(name), p["mutual_information_cell_expert"].get<double>(), usage_file, histogram_file);
    if (p.contains("program_lift")) {
      const auto lift = p["program_lift"].get<std::vector<std::vector<double>>>();
      std::vector<std::string> programs;
      for (size_t q = 0; q < lift.at(0).size(); ++q) programs.push_back("P" + std::to_string(q));
      const std::string lift_file = "program_lift_" + name + ".png";
      heatmap(png(lift_file), {name + ": lift of each simulated program among each expert's samples", "program", "expert"},
              experts, programs, lift);
      sections += fmt::format(
          "<p>Experts and the simulator's gene programs: lift = share of an expert's (gate-weighted) test "
          "samples in which the program is active / its share over all test samples; 1 = no preference; "
          "experts with under 1% of the gate mass are left blank. Mean over programs of the best "
          "expert's lift: <b>{:.2f}</b>. Gate mass per expert: {}.</p>\n<img src=\"{}\" alt=\"program lift\">\n",
          p["best_lift_mean"].get<double>(), share_text(p["expert_share"]), lift_file);
    }
  }
  const auto& baselines = study["baselines"];
  for (const char* name : {"cell_line_mean", "no_change"}) {
    if (!baselines.contains(name)) continue;
    const auto& b = baselines[name];
    std::string row = fmt::format("<tr><td>baseline: {}</td>", name);
    for (const auto& key : metrics) {
      row += "<td>" + cell(b["values"], key, b["details"]["skipped"], b["samples"].get<int64_t>()) + "</td>";
    }
    table += row + "<td>-</td><td>-</td><td>-</td></tr>\n";
    per_cell.emplace_back(std::string("baseline: ") + name, b["details"]["per_cell_line"]);
  }
  table += "</table>\n";
  std::string cells = "<table><tr><th>cell line</th>";
  for (const auto& [model, _] : per_cell) cells += "<th>" + html_escape(model) + "</th>";
  cells += "</tr>\n";
  for (size_t c = 0; c < cell_names.size(); ++c) {
    cells += "<tr><td>" + html_escape(cell_names[c]) + "</td>";
    for (const auto& [model, details] : per_cell) {
      const std::string key = std::to_string(c);
      const bool scored = details.contains(key) &&
                          details[key]["skipped"]["r2_top20"].get<double>() < details[key]["samples"].get<double>();
      cells += scored ? fmt::format("<td>{:.4f}</td>", details[key]["r2_top20"].get<double>()) : "<td>n/a</td>";
    }
    cells += "</tr>\n";
  }
  cells += "</table>\n";
  line_plot(png("loss.png"), {"Training (solid) and validation (dashed) loss (MSE)", "step", "loss"}, losses,
            /*log_y=*/true);
  return fmt::format(
      "<h2>Results (test split)</h2>\n{}\n<p>R&sup2; top-n: per sample, Pearson r&sup2; between the true and "
      "predicted differential expression (treated - basal) over the n genes of largest true change, "
      "averaged; n/a: the prediction's change is constant, so r is undefined for every sample.</p>\n"
      "<h2>R&sup2; top-20 by cell line</h2>\n{}\n<h2>Loss</h2>\n<img src=\"loss.png\" alt=\"loss curves\">\n"
      "<h2>Routing</h2>\n{}",
      table, cells, sections.empty() ? "<p>No MoE runs.</p>" : sections);
}

}  // namespace moelab::analysis
