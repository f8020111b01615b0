#include "moelab/analysis/language_model_study.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>

#include "moelab/analysis/plot.h"
#include "moelab/analysis/study.h"
#include "moelab/data/text.h"
#include "moelab/models/generation.h"
#include "moelab/nn/aux_losses.h"
#include "moelab/run/run.h"
#include "moelab/run/run_config.h"
#include "moelab/train/progress.h"
#include "moelab/train/routing_stats.h"
#include "moelab/train/run_directory.h"

namespace fs = std::filesystem;

namespace moelab::analysis {

namespace {

const std::vector<std::string> kPrompts{"The jury said that", "In the morning he", "It is clear that the"};

const nlohmann::json* last_line(const std::vector<nlohmann::json>& lines, const std::string& kind) {
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
    if ((*it)["kind"] == kind) return &*it;
  }
  return nullptr;
}

// (tags, E) counts of (part of speech of the input token, expert) over the test split, per MoE
// layer; tokens without a tag are left out.
std::vector<at::Tensor> tag_expert_counts(models::Model& model, data::DataSource& source, int64_t tags) {
  torch::NoGradGuard no_grad;
  model.eval();
  std::vector<at::Tensor> counts;
  const int64_t batch = 32;
  for (int64_t start = 0; start < source.size(); start += batch) {
    data::Batch rows = source.range(start, std::min(batch, source.size() - start));
    const at::Tensor tag = rows.at(data::kTokenTags).reshape({-1});
    data::Batch inputs({{data::kTokenIds, rows.at(data::kTokenIds)}});
    const models::ModelOutput out = model.forward(inputs);
    counts.resize(out.moe_layers.size());
    for (size_t l = 0; l < out.moe_layers.size(); ++l) {
      const nn::RoutingStats& s = out.moe_layers[l].stats;
      const int64_t experts = s.tokens_per_expert.size(0);
      if (!counts[l].defined()) counts[l] = at::zeros({tags * experts}, at::kLong);
      const at::Tensor valid = tag.ge(0);
      const at::Tensor indices = s.indices.index({valid});
      const at::Tensor kept = s.kept.defined() ? s.kept.index({valid}).to(at::kBool) : indices.ge(0);
      const at::Tensor cell = tag.index({valid}).unsqueeze(1).expand_as(indices) * experts + indices;
      const at::Tensor chosen = cell.masked_select(kept);
      counts[l].index_add_(0, chosen, at::ones_like(chosen));
    }
  }
  for (auto& c : counts) c = c.view({tags, -1});
  return counts;
}

}  // namespace

nlohmann::json analyse_language_model_run(const std::string& run_dir, const YAML::Node& config) {
  const auto lines = train::read_metrics(run_dir);
  const nlohmann::json* test = last_line(lines, "test");
  const nlohmann::json* eval = last_line(lines, "eval");
  double tokens_per_s = 0;
  int64_t rates = 0;
  for (const auto& line : lines) {
    if (line["kind"] == "train" && line.contains("tokens_per_s")) {
      tokens_per_s += line["tokens_per_s"].get<double>();
      ++rates;
    }
  }
  nlohmann::json out{{"test_perplexity", test ? (*test)["perplexity"] : nlohmann::json()},
                     {"test_word_perplexity", test ? (*test)["word_perplexity"] : nlohmann::json()},
                     {"val_word_perplexity", eval ? (*eval)["val_word_perplexity"] : nlohmann::json()},
                     {"train_tokens_per_s", rates ? tokens_per_s / static_cast<double>(rates) : 0.0}};
  const run::LoadedLanguageModel loaded = run::load_language_model(run_dir);
  auto* decoder = dynamic_cast<models::MoEDecoderImpl*>(loaded.model.get());
  // Sample generations from fixed prompts, seeded.
  nlohmann::json samples = nlohmann::json::array();
  for (size_t p = 0; p < kPrompts.size(); ++p) {
    std::vector<int32_t> prompt = loaded.tokenizer->encode(loaded.tokenizer->split_words(kPrompts[p]));
    prompt.pop_back();
    models::GenerationOptions options;
    options.max_new_tokens = 30;
    options.temperature = 0.8;
    options.top_k = 40;
    options.seed = p;
    options.stop_token = loaded.tokenizer->end_of_document();
    samples.push_back({{"prompt", kPrompts[p]},
                       {"continuation", loaded.tokenizer->decode(models::generate(*decoder, prompt, options))}});
  }
  out["samples"] = samples;
  const data::Splits splits = run::load_data(config);
  if (splits.tag_names.empty() || data::size_of(splits.test) == 0) return out;
  const auto counts = tag_expert_counts(*loaded.model, *splits.test, static_cast<int64_t>(splits.tag_names.size()));
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& c : counts) {
    const at::Tensor per_tag = c.sum(1).to(at::kDouble);
    layers.push_back({{"tag_expert", train::count_rows(c)},
                      {"mutual_information", train::mutual_information(c)},
                      {"tag_entropy", nn::distribution_entropy(per_tag).item<double>()}});
  }
  out["tag_names"] = splits.tag_names;
  out["moe_layers"] = layers;
  return out;
}

std::string language_model_report(const nlohmann::json& study, const std::string& study_dir,
                                  const std::string& report_dir) {
  auto png = [&](const std::string& name) { return (fs::path(report_dir) / name).string(); };
  std::vector<Series> losses;
  std::string table =
      "<table><tr><th>run</th><th>test perplexity per word</th><th>validation perplexity per "
      "word</th><th>training tokens/s</th><th>parameters (total)</th><th>parameters (active)</th>"
      "<th>FLOPs / token</th><th>train time</th><th>steps</th></tr>\n";
  std::string sections, samples;
  int color = 0;
  for (const auto& run : study["runs"]) {
    const std::string name = run["name"];
    const auto& lm = run["language_model"];
    table += fmt::format(
        "<tr><td>{}</td><td><b>{:.1f}</b></td><td>{:.1f}</td><td>{:.0f}</td><td>{}</td><td>{}</td>"
        "<td>{}</td><td>{}</td><td>{}</td></tr>\n",
        html_escape(name), lm["test_word_perplexity"].get<double>(),
        lm["val_word_perplexity"].is_number() ? lm["val_word_perplexity"].get<double>() : std::nan(""),
        lm["train_tokens_per_s"].get<double>(), train::format_thousands(run["parameters_total"].get<int64_t>()),
        train::format_thousands(run["parameters_active"].get<int64_t>()),
        train::format_thousands(run["flops_per_sample"].get<int64_t>()),
        train::format_clock(run["train_seconds"].get<double>()), run["steps"].get<int64_t>());
    ++color;
    const auto lines = train::read_metrics((fs::path(study_dir) / name).string());
    Series train{name + " train", {}, {}, false, color}, val{name + " val", {}, {}, true, color};
    std::vector<std::pair<double, std::vector<std::vector<double>>>> usage;  // (step, [layer][expert])
    for (const auto& line : lines) {
      if (line["kind"] == "train") {
        train.x.push_back(line["step"]);
        train.y.push_back(line["task_loss"]);
        std::vector<std::vector<double>> per_layer;
        for (const auto& layer : line["moe_layers"]) per_layer.push_back(layer["usage"].get<std::vector<double>>());
        if (!per_layer.empty()) usage.emplace_back(line["step"].get<double>(), per_layer);
      } else if (line["kind"] == "eval") {
        val.x.push_back(line["step"]);
        val.y.push_back(line["val_loss"]);
      }
    }
    losses.push_back(train);
    if (!val.x.empty()) losses.push_back(val);
    samples += fmt::format("<h3>{}</h3>\n<ul>\n", html_escape(name));
    for (const auto& s : lm["samples"]) {
      samples += fmt::format("<li><b>{}</b> {}</li>\n", html_escape(s["prompt"].get<std::string>()),
                             html_escape(s["continuation"].get<std::string>()));
    }
    samples += "</ul>\n";
    if (usage.empty()) continue;
    sections += fmt::format("<h3>{}</h3>\n", html_escape(name));
    // Usage over training, per layer: experts x (up to 8) spans of steps.
    for (size_t l = 0; l < usage[0].second.size(); ++l) {
      const size_t experts = usage[0].second[l].size();
      std::vector<std::string> expert_labels;
      for (size_t e = 0; e < experts; ++e) expert_labels.push_back("E" + std::to_string(e));
      const size_t buckets = std::min<size_t>(8, usage.size());
      std::vector<std::vector<double>> grid(experts, std::vector<double>(buckets, 0.0));
      std::vector<double> seen(buckets, 0.0);
      std::vector<std::string> bucket_labels(buckets);
      for (size_t i = 0; i < usage.size(); ++i) {
        const size_t b = i * buckets / usage.size();
        for (size_t e = 0; e < experts && e < usage[i].second[l].size(); ++e) grid[e][b] += usage[i].second[l][e];
        seen[b] += 1;
        bucket_labels[b] = fmt::format("{:.0f}", usage[i].first);
      }
      for (auto& row : grid) {
        for (size_t b = 0; b < buckets; ++b) row[b] /= std::max(seen[b], 1.0);
      }
      const std::string usage_file = fmt::format("usage_{}_layer{}.png", name, l);
      heatmap(png(usage_file), {fmt::format("{}, layer {}: share of routed tokens per expert over training", name, l),
                                "training step (end of the span)", "expert"},
              expert_labels, bucket_labels, grid);
      sections += fmt::format("<img src=\"{}\" alt=\"expert usage over training, layer {}\">\n", usage_file, l);
    }
    if (!lm.contains("moe_layers") || lm["moe_layers"].empty()) continue;
    const auto tag_names = lm["tag_names"].get<std::vector<std::string>>();
    for (size_t l = 0; l < lm["moe_layers"].size(); ++l) {
      const auto& layer = lm["moe_layers"][l];
      const auto rows = layer["tag_expert"].get<std::vector<std::vector<double>>>();
      const size_t experts = rows.empty() ? 0 : rows[0].size();
      std::vector<std::string> expert_labels;
      for (size_t e = 0; e < experts; ++e) expert_labels.push_back("E" + std::to_string(e));
      // Share of each tag's tokens (x k slots) that each expert computed.
      std::vector<std::vector<double>> shares;
      std::vector<std::string> labels;
      for (size_t t = 0; t < rows.size(); ++t) {
        double total = 0;
        for (double v : rows[t]) total += v;
        if (total <= 0) continue;
        std::vector<double> share;
        for (double v : rows[t]) share.push_back(v / total);
        shares.push_back(share);
        labels.push_back(tag_names.at(t));
      }
      const std::string file = fmt::format("pos_expert_{}_layer{}.png", name, l);
      heatmap(png(file), {fmt::format("{}, layer {}: share of each word class's tokens per expert", name, l),
                          "expert", "part of speech"},
              labels, expert_labels, shares);
      const double mi = layer["mutual_information"].get<double>(), h = layer["tag_entropy"].get<double>();
      sections += fmt::format(
          "<p>Layer {}: mutual information between part of speech and expert <b>{:.3f} nats</b> "
          "({:.0f}% of the tag entropy, {:.3f} nats).</p>\n<img src=\"{}\" alt=\"part of speech x "
          "expert, layer {}\">\n",
          l, mi, h > 0 ? 100 * mi / h : 0.0, h, file, l);
    }
  }
  table += "</table>\n";
  line_plot(png("loss.png"), {"Training (solid) and validation (dashed) loss, nats per token", "step", "loss"},
            losses, /*log_y=*/false);
  bool brown = false;
  if (!study["runs"].empty()) {
    const YAML::Node config = YAML::LoadFile(
        (fs::path(study_dir) / study["runs"][0]["name"].get<std::string>() / train::kRunConfigFile).string());
    brown = config["data"]["name"].as<std::string>() == "brown";
  }
  const std::string published = brown ? std::string(
      "<p>Bengio et al. 2003 (JMLR 3:1137-1155, Table 1) on this corpus and protocol: test "
      "perplexity <b>252</b> for their best neural model (an MLP), above 300 for their best n-gram "
      "models (interpolated and Kneser-Ney back-off trigrams, class-based models). Their corpus "
      "copy had 1,181,041 words and a vocabulary of 16,383; this one has 1,161,192 words and, "
      "with the word tokenizer (min_count 4), 14,115 tokens.</p>\n") : std::string();
  return fmt::format(
      "<h2>Results</h2>\n{}\n{}"
      "<h2>Loss</h2>\n<img src=\"loss.png\" "
      "alt=\"loss curves\">\n<h2>Which words each expert takes</h2>\n{}\n<h2>Sample generations</h2>\n"
      "<p>Temperature 0.8, top-k 40, seeded; up to 30 tokens or the end of the document.</p>\n{}",
      table, published, sections.empty() ? "<p>No MoE runs.</p>" : sections, samples);
}

}  // namespace moelab::analysis
