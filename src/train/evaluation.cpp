#include "moelab/train/evaluation.h"

#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "moelab/config/config.h"
#include "moelab/config/run_config.h"
#include "moelab/io/safetensors.h"
#include "moelab/train/checkpoint.h"
#include "moelab/train/trainer.h"
#include "moelab/util/errors.h"

namespace fs = std::filesystem;

namespace moelab::train {

Evaluation evaluate(models::Model& model, const data::LabelledSet& set, int64_t batch_size,
                    Precision precision, int64_t num_classes) {
  Evaluation result;
  if (set.size() == 0) return result;
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  double loss_sum = 0, correct = 0;
  for (int64_t start = 0; start < set.size(); start += batch_size) {
    const int64_t n = std::min(batch_size, set.size() - start);
    models::ModelOutput out;
    {
      AutocastScope autocast(precision);
      out = model.forward(set.inputs.narrow(0, start, n));
    }
    const at::Tensor logits = out.logits.to(at::kFloat);
    const at::Tensor labels = set.labels.narrow(0, start, n);
    const at::Tensor sample_loss = at::cross_entropy_loss(logits, labels, {}, at::Reduction::None);
    loss_sum += sample_loss.sum().item<double>();
    if (num_classes > 0) {
      result.class_expert.resize(out.moe_layers.size());
      result.expert_loss.resize(out.moe_layers.size());
      for (size_t l = 0; l < out.moe_layers.size(); ++l) {
        const at::Tensor counts =
            analysis::class_expert_counts(out.moe_layers[l].stats, labels, num_classes);
        result.class_expert[l] =
            result.class_expert[l].defined() ? result.class_expert[l] + counts : counts;
        result.expert_loss[l].add(out.moe_layers[l].stats, sample_loss);
      }
    }
    correct += logits.argmax(-1).eq(labels).sum().item<double>();
  }
  model.train(was_training);
  result.samples = set.size();
  result.loss = loss_sum / static_cast<double>(result.samples);
  result.accuracy = correct / static_cast<double>(result.samples);
  return result;
}

std::string resolve_checkpoint(const std::string& path, bool prefer_latest) {
  if (!fs::exists(path)) throw CheckpointError(path + ": no such run or checkpoint directory");
  if (fs::exists(fs::path(path) / kManifestName)) {
    verify_checkpoint(path);
    return path;
  }
  const std::string best = prefer_latest ? "" : best_checkpoint(path);
  if (!best.empty()) return best;
  const std::string latest = latest_checkpoint(path);
  if (latest.empty()) {
    throw CheckpointError(path + ": neither a checkpoint nor a run directory with a complete "
                          "checkpoint");
  }
  return latest;
}

namespace {

struct LoadedCheckpoint {
  std::string directory;
  int64_t step = 0;
  YAML::Node config;
  std::shared_ptr<models::Model> model;
};

LoadedCheckpoint load_checkpoint_model(const std::string& path, bool prefer_latest,
                                       const std::vector<std::string>& files = {},
                                       const std::vector<std::string>& overrides = {}) {
  LoadedCheckpoint loaded;
  loaded.directory = resolve_checkpoint(path, prefer_latest);
  // resolve_checkpoint has verified it; the manifest alone gives the step.
  loaded.step = read_manifest(loaded.directory)["metadata"].value("step", int64_t{0});
  YAML::Node config = config::load_file(loaded.directory + "/config.yaml");
  const YAML::Node overlay = config::resolve(YAML::Node(YAML::NodeType::Map), files, overrides);
  // Another data set brings its own options: the saved ones belong to the old one.
  if (overlay["data"] && overlay["data"]["name"] &&
      overlay["data"]["name"].as<std::string>() != config["data"]["name"].as<std::string>()) {
    config.remove("data");
  }
  config::merge(config, overlay);
  loaded.config = config::resolve_run_config(config);
  loaded.model = config::build_model(loaded.config);
  load_module_weights(*loaded.model, loaded.directory + "/model.safetensors");
  return loaded;
}

}  // namespace

CheckpointEvaluation evaluate_checkpoint(const std::string& path,
                                         const std::vector<std::string>& files,
                                         const std::vector<std::string>& overrides,
                                         bool prefer_latest) {
  LoadedCheckpoint loaded = load_checkpoint_model(path, prefer_latest, files, overrides);
  const data::Splits splits = config::load_data(loaded.config);
  const TrainOptions options = config::train_options(loaded.config);
  CheckpointEvaluation out;
  out.checkpoint = loaded.directory;
  out.step = loaded.step;
  out.split = splits.test.size() > 0 ? "test" : "val";
  const data::LabelledSet& set = splits.test.size() > 0 ? splits.test : splits.val;
  if (set.size() == 0) {
    throw ConfigError("eval: the data set has no test split and train.val_fraction is 0; "
                      "nothing to evaluate on");
  }
  out.result = evaluate(*loaded.model, set, std::max<int64_t>(options.batch_size(), 256),
                        parse_precision(options.precision(), "train.precision"));
  return out;
}

nlohmann::json export_checkpoint(const std::string& path, const std::string& out_dir,
                                 bool prefer_latest) {
  LoadedCheckpoint loaded = load_checkpoint_model(path, prefer_latest);
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) throw ConfigError(out_dir + ": cannot create export directory: " + ec.message());
  nlohmann::json tensors = nlohmann::json::array();
  auto describe = [&](const std::string& name, const at::Tensor& t) {
    tensors.push_back({{"name", name},
                       {"dtype", io::safetensors_dtype(t.scalar_type())},
                       {"shape", t.sizes().vec()}});
  };
  for (const auto& item : loaded.model->named_parameters()) describe(item.key(), item.value());
  for (const auto& item : loaded.model->named_buffers()) describe(item.key(), item.value());
  const std::string model_name = loaded.config["model"]["name"].as<std::string>();
  save_module_weights(*loaded.model, (fs::path(out_dir) / "model.safetensors").string(),
                      {{"format", kExportFormat}, {"model", model_name}});
  nlohmann::json config{{"format", kExportFormat},
                        {"format_version", kExportFormatVersion},
                        {"moelab_version", MOELAB_VERSION},
                        {"model", config::to_json(loaded.config["model"])},
                        {"data", config::to_json(loaded.config["data"])},
                        {"step", loaded.step},
                        {"source_checkpoint", fs::absolute(loaded.directory).string()},
                        {"tensors", tensors}};
  const fs::path config_path = fs::path(out_dir) / "config.json";
  const fs::path temporary = fs::path(out_dir) / ".config.json.tmp";
  {
    std::ofstream out(temporary);
    if (!out) throw ConfigError(out_dir + ": export directory is not writable");
    out << config.dump(2) << "\n";
    if (!out.flush()) throw std::runtime_error(temporary.string() + ": write failed");
  }
  fs::rename(temporary, config_path);
  return config;
}

}  // namespace moelab::train
