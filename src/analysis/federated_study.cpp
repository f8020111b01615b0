#include "moelab/analysis/federated_study.h"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>

#include "moelab/analysis/plot.h"
#include "moelab/analysis/study.h"
#include "moelab/train/progress.h"
#include "moelab/train/run_directory.h"

namespace fs = std::filesystem;

namespace moelab::analysis {

namespace {

// I(client; expert) in nats from per-client usage fractions weighted by the clients' samples.
double client_expert_information(const std::vector<std::vector<double>>& usage,
                                 const std::vector<double>& weight) {
  double total = 0;
  for (double w : weight) total += w;
  if (usage.empty() || total <= 0) return 0;
  std::vector<double> marginal(usage[0].size(), 0.0);
  for (size_t c = 0; c < usage.size(); ++c) {
    for (size_t e = 0; e < usage[c].size(); ++e) marginal[e] += weight[c] / total * usage[c][e];
  }
  double mi = 0;
  for (size_t c = 0; c < usage.size(); ++c) {
    for (size_t e = 0; e < usage[c].size(); ++e) {
      const double joint = weight[c] / total * usage[c][e];
      if (joint > 0 && marginal[e] > 0) mi += joint * std::log(usage[c][e] / marginal[e]);
    }
  }
  return mi;
}

}  // namespace

nlohmann::json analyse_federated_run(const std::string& run_dir, const YAML::Node& config) {
  const auto lines = train::read_metrics(run_dir);
  std::vector<double> client_samples;
  for (const auto& line : lines) {
    if (line["kind"] == "federated") client_samples = line["client_samples"].get<std::vector<double>>();
  }
  const auto federated = config["federated"];
  const double local_epochs = federated["local_epochs"].as<double>();
  const double local_steps = federated["local_steps"].as<double>();
  const double batch = config["train"]["batch_size"].as<double>();
  nlohmann::json rounds = nlohmann::json::array();
  double samples = 0;
  nlohmann::json last_usage = nlohmann::json::object();
  for (const auto& line : lines) {
    if (line["kind"] != "round") continue;
    for (const auto& client : line["clients"]) {
      const double n = client_samples.at(client.get<size_t>());
      samples += local_steps > 0 ? local_steps * std::min(batch, n) : local_epochs * n;
    }
    rounds.push_back({{"round", line["round"]},
                      {"samples", samples},
                      {"val_accuracy", line.value("val_accuracy", nlohmann::json(nullptr))},
                      {"val_loss", line.value("val_loss", nlohmann::json(nullptr))}});
    last_usage = line["expert_usage"];
  }
  // Layer 0's usage per client of the last round, and its client dependence.
  std::vector<std::string> clients;
  std::vector<std::vector<double>> usage;
  std::vector<double> weight;
  for (const auto& [client, layers] : last_usage.items()) {
    if (layers.empty()) continue;
    clients.push_back(client);
    usage.push_back(layers[0].get<std::vector<double>>());
    weight.push_back(client_samples.at(std::stoul(client)));
  }
  return {{"aggregation", federated["aggregation"].as<std::string>()},
          {"partition", federated["partition"].as<std::string>()},
          {"clients", federated["clients"].as<int64_t>()},
          {"participation", federated["participation"].as<double>()},
          {"client_samples", client_samples},
          {"rounds", rounds},
          {"last_round_clients", clients},
          {"last_round_usage", usage},
          {"client_expert_information", client_expert_information(usage, weight)}};
}

std::string federated_report(const nlohmann::json& study, const std::string& study_dir,
                             const std::string& report_dir) {
  auto png = [&](const std::string& name) { return (fs::path(report_dir) / name).string(); };
  std::string table =
      "<table><tr><th>run</th><th>training</th><th>test accuracy</th><th>I(client; expert), nats"
      "</th><th>train time</th></tr>\n";
  std::vector<Series> curves;
  std::string heatmaps;
  int color = 0;
  for (const auto& run : study["runs"]) {
    const std::string name = run["name"];
    Series curve{name, {}, {}, false, ++color};
    std::string training = "centralised", information = "-";
    if (run.contains("federated")) {
      const auto& f = run["federated"];
      training = fmt::format("{} over {} clients ({}, participation {})", f["aggregation"].get<std::string>(),
                             f["clients"].get<int64_t>(), f["partition"].get<std::string>(),
                             f["participation"].get<double>());
      information = fmt::format("{:.3f}", f["client_expert_information"].get<double>());
      for (const auto& r : f["rounds"]) {
        if (r["val_accuracy"].is_null()) continue;
        curve.x.push_back(r["samples"]);
        curve.y.push_back(r["val_accuracy"]);
      }
      const auto usage = f["last_round_usage"].get<std::vector<std::vector<double>>>();
      if (!usage.empty()) {
        std::vector<std::string> rows, columns;
        for (const auto& c : f["last_round_clients"]) rows.push_back("client " + c.get<std::string>());
        for (size_t e = 0; e < usage[0].size(); ++e) columns.push_back("E" + std::to_string(e));
        heatmap(png("client_usage_" + name + ".png"),
                {"Expert usage per client, last round, layer 0: " + name, "expert", "client"}, rows,
                columns, usage);
        heatmaps += fmt::format("<h3>{0}</h3>\n<img src=\"client_usage_{0}.png\" alt=\"client x expert usage of {0}\">\n",
                                html_escape(name));
      }
    } else {
      const double batch = run.value("batch_size", 0.0);
      for (const auto& line : train::read_metrics((fs::path(study_dir) / name).string())) {
        if (line["kind"] != "eval" || !line.contains("val_accuracy")) continue;
        curve.x.push_back(line["step"].get<double>() * batch);
        curve.y.push_back(line["val_accuracy"]);
      }
    }
    if (!curve.x.empty()) curves.push_back(curve);
    table += fmt::format("<tr><td>{}</td><td>{}</td><td><b>{:.4f}</b></td><td>{}</td><td>{}</td></tr>\n",
                         html_escape(name), html_escape(training), run["test_accuracy"].get<double>(),
                         information, train::format_clock(run["train_seconds"].get<double>()));
  }
  table += "</table>\n";
  line_plot(png("accuracy_per_round.png"),
            {"Validation accuracy (federated: after each round)", "training samples processed", "accuracy"},
            curves);
  return "<h2>Results</h2>\n" + table +
         "<h2>Accuracy per round</h2>\n<img src=\"accuracy_per_round.png\" alt=\"accuracy per round\">\n"
         "<h2>Expert usage per client</h2>\n" + heatmaps;
}

}  // namespace moelab::analysis
