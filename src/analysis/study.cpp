#include "moelab/analysis/study.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "moelab/analysis/federated_study.h"
#include "moelab/analysis/language_model_study.h"
#include "moelab/analysis/perturbation_study.h"
#include "moelab/analysis/plot.h"
#include "moelab/config/config.h"
#include "moelab/models/registry.h"
#include "moelab/run/run.h"
#include "moelab/run/run_config.h"
#include "moelab/train/checkpoint.h"
#include "moelab/train/routing_stats.h"
#include "moelab/train/run_directory.h"
#include "moelab/train/trainer.h"
#include "moelab/util/errors.h"

namespace fs = std::filesystem;

namespace moelab::analysis {

namespace {

void reject_unknown(const YAML::Node& node, const std::vector<std::string>& known,
                    const std::string& where) {
  if (!node.IsMap()) throw ConfigError(where + ": expected a section of keys");
  for (const auto& item : node) {
    const std::string key = item.first.as<std::string>();
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      config::throw_unknown_key(where, key, known);
    }
  }
}

using train::mutual_information;
using train::read_metrics;
using train::to_doubles;
using train::top_classes;

const nlohmann::json* last_of_kind(const std::vector<nlohmann::json>& lines, const std::string& kind) {
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
    if ((*it)["kind"] == kind) return &*it;
  }
  return nullptr;
}

}  // namespace

StudyPlan plan_study(const std::vector<std::string>& files, const std::vector<std::string>& overrides) {
  const YAML::Node tree = config::resolve(YAML::Node(YAML::NodeType::Map), files, overrides);
  reject_unknown(tree, {"study", "base", "runs"}, "");
  StudyPlan plan;
  const YAML::Node study = tree["study"];
  if (study) reject_unknown(study, {"name", "reference"}, "study");
  plan.name = study && study["name"] ? study["name"].as<std::string>() : "study";
  plan.reference = study && study["reference"] ? study["reference"].as<std::string>() : "";
  const YAML::Node base = tree["base"] ? tree["base"] : YAML::Node(YAML::NodeType::Map);
  if (!tree["runs"] || !tree["runs"].IsSequence() || tree["runs"].size() == 0) {
    throw ConfigError("runs: expected a list of runs");
  }
  struct MatchedRun {
    std::string name;
    YAML::Node config;  // base with the run's train/data; the model comes from the reference
    models::MatchTarget target;
  };
  std::map<std::string, YAML::Node> resolved;
  std::vector<MatchedRun> matched;  // resolved once the reference is
  std::vector<std::string> order;
  for (size_t i = 0; i < tree["runs"].size(); ++i) {
    const YAML::Node run = tree["runs"][i];
    const std::string where = "runs[" + std::to_string(i) + "]";
    reject_unknown(run, {"name", "model", "data", "task", "train", "federated", "match"}, where);
    if (!run["name"]) throw ConfigError(where + ".name: every run needs a name");
    const std::string name = run["name"].as<std::string>();
    if (name.empty() || name.find('/') != std::string::npos ||
        std::find(order.begin(), order.end(), name) != order.end()) {
      throw ConfigError(where + ".name: '" + name + "' must be unique, non-empty, without '/'");
    }
    order.push_back(name);
    YAML::Node config = config::clone(base);
    for (const char* section : {"train", "data", "task", "federated"}) {
      if (run[section]) {
        YAML::Node target = config[section] ? config[section] : YAML::Node(YAML::NodeType::Map);
        config::merge(target, run[section]);
        config[section] = target;
      }
    }
    if (run["match"]) {
      const std::string what = run["match"].as<std::string>();
      if (what != "flops" && what != "parameters") {
        throw ConfigError(where + ".match: expected flops or parameters, got '" + what + "'");
      }
      matched.push_back({name, config,
                         what == "flops" ? models::MatchTarget::kFlops : models::MatchTarget::kParameters});
      continue;
    }
    if (run["model"]) {
      YAML::Node model = config["model"] ? config["model"] : YAML::Node(YAML::NodeType::Map);
      config::merge(model, run["model"]);
      config["model"] = model;
    }
    try {
      resolved[name] = run::resolve_run_config(config);
    } catch (const ConfigError& e) {
      throw ConfigError(where + " (" + name + "): " + e.what());
    }
  }
  if (!matched.empty()) {
    if (plan.reference.empty() || !resolved.count(plan.reference)) {
      throw ConfigError("study.reference: runs with `match` need the name of an MoE run to "
                        "match ('" + plan.reference + "' is not one)");
    }
    const YAML::Node reference = resolved[plan.reference]["model"];
    const models::ModelEntry& entry = models::find_model(reference["name"].as<std::string>());
    if (!entry.dense_baseline) {
      throw ConfigError("study.reference: '" + plan.reference + "' is a " + entry.name +
                        " run, which has no dense baseline to match");
    }
    YAML::Node options = config::clone(reference);
    options.remove("name");
    for (MatchedRun& run : matched) {
      run.config["model"] = entry.dense_baseline(options, run.target);
      resolved[run.name] = run::resolve_run_config(run.config);
    }
  }
  for (const auto& name : order) plan.runs.emplace_back(name, YAML::Dump(resolved[name]));
  return plan;
}

nlohmann::json run_study(const StudyPlan& plan, const std::string& study_dir,
                         train::ConsoleMode console, std::ostream& out) {
  std::error_code ec;
  fs::create_directories(study_dir, ec);
  if (ec) throw ConfigError(study_dir + ": cannot create study directory: " + ec.message());
  nlohmann::json study{{"name", plan.name}, {"reference", plan.reference}, {"runs", nlohmann::json::array()}};
  for (const auto& [name, config_text] : plan.runs) {
    const std::string run_dir = (fs::path(study_dir) / name).string();
    const YAML::Node config = YAML::Load(config_text);
    std::vector<nlohmann::json> lines = read_metrics(run_dir);
    if (!last_of_kind(lines, "test")) {
      out << fmt::format("== {} ==", name) << std::endl;
      if (run::federated_options(config).clients() > 0) {
        // A federated run that never reached a checkpoint starts over.
        auto federated = train::latest_checkpoint(run_dir).empty()
                             ? (fs::remove_all(run_dir), run::start_federated_run(config, run_dir))
                             : run::resume_federated_run(run_dir);
        federated->set_console(out);
        federated->run();
      } else {
        std::unique_ptr<train::Trainer> trainer;
        if (!train::latest_checkpoint(run_dir).empty()) {
          trainer = run::resume_run(run_dir);
        } else {
          fs::remove_all(run_dir);  // a run that never reached a checkpoint starts over
          trainer = run::start_run(config, run_dir);
        }
        trainer->set_console(console, out);
        const train::TrainSummary summary = trainer->run();
        if (summary.stop_reason == train::StopReason::kSignal ||
            summary.stop_reason == train::StopReason::kTimeLimit) {
          throw TrainingError("study: run '" + name + "' stopped (" + train::to_string(summary.stop_reason) +
                              ") at step " + std::to_string(summary.steps) +
                              "; run the same study command again to continue");
        }
      }
      lines = read_metrics(run_dir);
    }
    const nlohmann::json* test = last_of_kind(lines, "test");
    if (!test) throw TrainingError("study: run '" + name + "' finished without a test evaluation");
    // The run's own config: a language model's vocabulary is filled in from its data.
    const YAML::Node saved = config::load_file((fs::path(run_dir) / train::kRunConfigFile).string());
    const models::ModelCost cost = run::build_model(saved)->cost();
    const std::string checkpoint = train::latest_checkpoint(run_dir);
    const double seconds =
        checkpoint.empty() ? 0.0
                           : train::read_manifest(checkpoint)["metadata"].value("train_seconds", 0.0);
    nlohmann::json entry{{"name", name},
                         {"model", config["model"]["name"].as<std::string>()},
                         {"task", config["task"]["name"].as<std::string>()},
                         {"parameters_total", cost.parameters_total},
                         {"parameters_active", cost.parameters_active},
                         {"flops_per_sample", cost.flops_per_sample},
                         {"test_loss", (*test)["loss"]},
                         {"test_split", (*test)["split"]},
                         {"train_seconds", seconds},
                         {"steps", (*test)["step"]}};
    if (entry["task"] == "language_model") {
      entry["language_model"] = analyse_language_model_run(run_dir, config);
    } else if (entry["task"] == "perturbation") {
      entry["perturbation"] = analyse_perturbation_run(run_dir, config);
    } else {
      entry["test_accuracy"] = (*test)["accuracy"];
    }
    entry["batch_size"] = config["train"]["batch_size"].as<int64_t>();
    if (run::federated_options(config).clients() > 0) entry["federated"] = analyse_federated_run(run_dir, config);
    study["runs"].push_back(entry);
  }
  if (!plan.runs.empty() && study["runs"][0]["task"] == "perturbation") {
    study["baselines"] = perturbation_baselines(YAML::Load(plan.runs[0].second));
  }
  std::ofstream(fs::path(study_dir) / "study.json") << study.dump(2) << "\n";
  return study;
}

std::string html_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else if (c == '"') out += "&quot;";
    else out += c;
  }
  return out;
}

namespace {

// A report page: the shared style, the title, then `body` (HTML).
std::string html_page(const std::string& title, const std::string& body) {
  return fmt::format(R"(<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>moelab study: {0}</title>
<style>
body {{ font-family: 'DejaVu Sans', Arial, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
th {{ background: #f0f4f8; }}
td:first-child, th:first-child {{ text-align: left; }}
img {{ max-width: 100%; display: block; margin: 1em 0; border: 1px solid #eee; }}
</style></head><body>
<h1>moelab study: {0}</h1>
{1}</body></html>
)", html_escape(title), body);
}

double value_or_nan(const nlohmann::json& v) {
  return v.is_number() ? v.get<double>() : std::nan("");
}

// One point per expert at `x`, expert e's value going to curves[e] ("expert e").
void add_expert_points(std::vector<Series>& curves, double x, const nlohmann::json& values) {
  curves.resize(values.size());
  for (size_t e = 0; e < values.size(); ++e) {
    curves[e].title = "expert " + std::to_string(e);
    curves[e].x.push_back(x);
    curves[e].y.push_back(value_or_nan(values[e]));
  }
}

}  // namespace

std::string write_report(const std::string& study_dir) {
  const fs::path study_file = fs::path(study_dir) / "study.json";
  if (!fs::exists(study_file)) {
    throw DataError(study_file.string() + ": no such file (is " + study_dir + " a finished study?)");
  }
  nlohmann::json study;
  std::ifstream(study_file) >> study;
  const fs::path report = fs::path(study_dir) / "report";
  fs::create_directories(report);
  auto png = [&](const std::string& name) { return (report / name).string(); };
  if (!study["runs"].empty() && study["runs"][0].contains("perturbation")) {
    const std::string index = (report / "index.html").string();
    std::ofstream(index) << html_page(
        study["name"].get<std::string>(),
        "<p>Gene-expression response to compounds at one training budget, scored on differential\n"
        "expression (treated - basal) as CheMoE and PDGrapher score it. FLOPs: forward multiply-adds\n"
        "x 2 per sample, each expert's first layer counted over all its inputs for every gene as the\n"
        "published code computes it.</p>\n" + perturbation_report(study, study_dir, report.string()));
    return index;
  }
  bool federated = false;
  for (const auto& run : study["runs"]) federated = federated || run.contains("federated");
  if (federated) {
    const std::string index = (report / "index.html").string();
    std::ofstream(index) << html_page(
        study["name"].get<std::string>(),
        "<p>Centralised and federated training of one model on one data set: each federated run's\n"
        "clients keep their share of the training split; only weights travel. Test accuracy of the\n"
        "final global model; accuracy per round against the training samples processed.</p>\n" +
            federated_report(study, study_dir, report.string()));
    return index;
  }
  const bool language_models = !study["runs"].empty() && study["runs"][0].contains("language_model");
  if (language_models) {
    const std::string body = language_model_report(study, study_dir, report.string());
    const std::string index = (report / "index.html").string();
    std::ofstream(index) << html_page(
        study["name"].get<std::string>(),
        "<p>Language models at one training budget. Perplexity per word: exp(total negative\n"
        "log-likelihood / words) on the split, the end of each document counting as a word. FLOPs:\n"
        "forward multiply-adds x 2 per token (router + the k chosen experts for MoE runs), attention's\n"
        "context-length terms left out.</p>\n" + body);
    return index;
  }

  std::vector<Series> train_loss, val_loss;
  std::vector<double> accuracy, flops, params;
  std::vector<std::string> names;
  std::string sections;
  std::vector<std::string> class_names;
  std::vector<Series> usage_bars;
  size_t max_experts = 0;

  for (const auto& run : study["runs"]) {
    const std::string name = run["name"];
    const auto lines = read_metrics((fs::path(study_dir) / name).string());
    const int color = static_cast<int>(names.size() % 8) + 1;
    Series train{name + " train", {}, {}, false, color}, val{name + " val", {}, {}, true, color};
    std::vector<Series> expert_curves, usage_curves;
    for (const auto& line : lines) {
      if (line["kind"] == "train") {
        train.x.push_back(line["step"]);
        train.y.push_back(line["loss"]);
        const auto& layers = line["moe_layers"];
        if (!layers.empty() && layers[0].contains("expert_loss")) {
          add_expert_points(expert_curves, line["step"], layers[0]["expert_loss"]);
        }
      } else if (line["kind"] == "epoch" && !line["moe_layers"].empty()) {
        add_expert_points(usage_curves, line["epoch"].get<double>() + 1, line["moe_layers"][0]["usage"]);
      } else if (line["kind"] == "eval") {
        val.x.push_back(line["step"]);
        val.y.push_back(line["val_loss"]);
      }
    }
    train_loss.push_back(train);
    if (!val.x.empty()) val_loss.push_back(val);
    names.push_back(name);
    accuracy.push_back(run["test_accuracy"]);
    flops.push_back(run["flops_per_sample"]);
    params.push_back(run["parameters_total"]);

    const nlohmann::json* test = last_of_kind(lines, "test");
    if (!test || (*test)["moe_layers"].empty()) continue;
    class_names = (*test)["class_names"].get<std::vector<std::string>>();
    const auto& layer = (*test)["moe_layers"][0];
    const auto rows = layer["class_expert"].get<std::vector<std::vector<double>>>();
    const size_t experts = rows.empty() ? 0 : rows[0].size();
    max_experts = std::max(max_experts, experts);
    std::vector<double> flat;
    for (const auto& row : rows) flat.insert(flat.end(), row.begin(), row.end());
    const at::Tensor counts =
        at::tensor(flat, at::kDouble).view({static_cast<int64_t>(rows.size()), static_cast<int64_t>(experts)});
    const at::Tensor per_class = counts.sum(1, /*keepdim=*/true);
    const std::vector<double> per_expert = to_doubles(counts.sum(0));
    const double total = counts.sum().item<double>();
    Series usage{name, {}, {}, false, 0};
    for (double v : per_expert) usage.y.push_back(total > 0 ? v / total : 0.0);
    usage_bars.push_back(usage);

    // Class x expert as the share of each class's images that each expert computed.
    const at::Tensor share_tensor = counts / per_class.clamp_min(1.0);
    std::vector<std::vector<double>> shares;
    for (int64_t c = 0; c < share_tensor.size(0); ++c) shares.push_back(to_doubles(share_tensor[c]));
    std::vector<std::string> expert_labels;
    for (size_t e = 0; e < experts; ++e) expert_labels.push_back("E" + std::to_string(e));
    heatmap(png("heatmap_" + name + ".png"),
            {name + ": share of each class's test images per expert", "expert", "class"},
            class_names, expert_labels, shares);
    if (!expert_curves.empty()) {
      line_plot(png("expert_loss_" + name + ".png"),
                {name + ": training loss of the images each expert computed", "step", "loss"},
                expert_curves, /*log_y=*/true);
    }
    if (!usage_curves.empty()) {
      line_plot(png("usage_per_epoch_" + name + ".png"),
                {name + ": share of the training images each expert computed, per epoch", "epoch",
                 "share of routed images"},
                usage_curves);
    }
    const double mi = mutual_information(counts);
    const double class_entropy = nn::distribution_entropy(per_class.view({-1})).item<double>();
    sections += fmt::format(
        "<h3>{}</h3>\n<p>Mutual information between class and expert: <b>{:.3f} nats</b> "
        "({:.0f}% of the class entropy, {:.3f} nats; 0 = routing ignores the class, 100% = the "
        "expert determines it).</p>\n<table><tr><th>expert</th><th>share of test images</th>"
        "<th>test loss of its images</th><th>top classes (share of the expert's images)</th></tr>\n",
        html_escape(name), mi, class_entropy > 0 ? 100.0 * mi / class_entropy : 0.0, class_entropy);
    const auto losses = layer["expert_loss"];
    for (size_t e = 0; e < experts; ++e) {
      std::string top;
      for (const auto& [c, share] : top_classes(counts, static_cast<int64_t>(e), 3)) {
        top += fmt::format("{}{} ({:.0f}%)", top.empty() ? "" : ", ", html_escape(class_names.at(c)),
                           100.0 * share);
      }
      const double loss = e < losses.size() ? value_or_nan(losses[e]) : std::nan("");
      sections += fmt::format("<tr><td>E{}</td><td>{:.1f}%</td><td>{}</td><td>{}</td></tr>\n", e,
                              total > 0 ? 100.0 * per_expert[e] / total : 0.0,
                              std::isfinite(loss) ? fmt::format("{:.4f}", loss) : "-",
                              top.empty() ? "-" : top);
    }
    sections += fmt::format(
        "</table>\n<img src=\"heatmap_{0}.png\" alt=\"class x expert heatmap of {0}\">\n", name);
    if (!expert_curves.empty()) {
      sections += fmt::format("<img src=\"expert_loss_{0}.png\" alt=\"per-expert loss of {0}\">\n", name);
    }
    if (!usage_curves.empty()) {
      sections += fmt::format(
          "<img src=\"usage_per_epoch_{0}.png\" alt=\"expert usage per epoch of {0}\">\n", name);
    }
  }

  std::vector<Series> losses = train_loss;
  losses.insert(losses.end(), val_loss.begin(), val_loss.end());
  line_plot(png("loss.png"), {"Training (solid) and validation (dashed) loss", "step", "loss"},
            losses, /*log_y=*/true);
  std::vector<double> accuracy_percent;
  for (double a : accuracy) accuracy_percent.push_back(100.0 * a);
  scatter_plot(png("accuracy_vs_flops.png"),
               {"Test accuracy vs active FLOPs per image", "forward FLOPs per image", "test accuracy (%)"},
               flops, accuracy_percent, names, /*log_x=*/true);
  scatter_plot(png("accuracy_vs_params.png"),
               {"Test accuracy vs parameters", "parameters (total)", "test accuracy (%)"}, params,
               accuracy_percent, names, /*log_x=*/true);
  const bool has_moe = !usage_bars.empty();
  if (has_moe) {
    std::vector<std::string> experts;
    for (size_t e = 0; e < max_experts; ++e) experts.push_back("E" + std::to_string(e));
    bar_plot(png("expert_usage.png"),
             {"Expert activation on the test set", "expert", "share of routed test images"},
             experts, usage_bars);
  }

  std::string table =
      "<table><tr><th>run</th><th>model</th><th>test accuracy</th><th>parameters (total)</th>"
      "<th>parameters (active)</th><th>FLOPs / image</th><th>train time</th><th>steps</th></tr>\n";
  for (const auto& run : study["runs"]) {
    table += fmt::format(
        "<tr><td>{}</td><td>{}</td><td><b>{:.2f}%</b></td><td>{}</td><td>{}</td><td>{}</td>"
        "<td>{}</td><td>{}</td></tr>\n",
        html_escape(run["name"].get<std::string>()), html_escape(run["model"].get<std::string>()),
        100.0 * run["test_accuracy"].get<double>(), train::format_thousands(run["parameters_total"].get<int64_t>()),
        train::format_thousands(run["parameters_active"].get<int64_t>()), train::format_thousands(run["flops_per_sample"].get<int64_t>()),
        train::format_clock(run["train_seconds"].get<double>()), run["steps"].get<int64_t>());
  }
  table += "</table>\n";

  std::string html = html_page(study["name"].get<std::string>(), fmt::format(R"(<p>Runs at one training budget; test accuracy on the {1} split. FLOPs are forward
multiply-adds x 2 per image (router + the k chosen experts for MoE runs). Parameters: total,
and active per image.</p>
<h2>Results</h2>
{2}
<h2>Loss</h2>
<img src="loss.png" alt="training and validation loss">
<h2>Accuracy vs cost</h2>
<img src="accuracy_vs_flops.png" alt="accuracy vs FLOPs">
<img src="accuracy_vs_params.png" alt="accuracy vs parameters">
{3}
<h2>Specialisation</h2>
{4}
)",
      "",
      study["runs"].empty() ? "test" : html_escape(study["runs"][0]["test_split"].get<std::string>()),
      table,
      has_moe ? "<h2>Expert usage</h2>\n<img src=\"expert_usage.png\" alt=\"expert activation histogram\">"
              : "",
      sections.empty() ? "<p>No MoE runs.</p>" : sections));
  const std::string index = (report / "index.html").string();
  std::ofstream(index) << html;
  return index;
}

}  // namespace moelab::analysis
