#include "moelab/run/run.h"

#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>

#include "moelab/config/config.h"
#include "moelab/io/file.h"
#include "moelab/io/safetensors.h"
#include "moelab/models/hugging_face.h"
#include "moelab/run/run_config.h"
#include "moelab/train/checkpoint.h"
#include "moelab/train/run_directory.h"
#include "moelab/util/errors.h"

namespace fs = std::filesystem;

namespace moelab::run {

namespace {

// parallel.expert against the processes there are.
bool expert_parallel(const YAML::Node& config, const std::shared_ptr<Collective>& collective) {
  const int64_t expert = parallel_options(config).expert();
  const int world = collective ? collective->world_size() : 1;
  if (expert > 1 && expert != world) {
    throw ConfigError("parallel.expert (" + std::to_string(expert) + ") must equal the number of "
                      "processes (" + std::to_string(world) + "), or be 1; e.g. --nproc " +
                      std::to_string(expert) + ", or parallel.expert=" + std::to_string(world) +
                      " (also on resume)");
  }
  return expert > 1;
}

int64_t gradient_bucket_bytes(const YAML::Node& config) {
  return static_cast<int64_t>(parallel_options(config).bucket_mb() * (1 << 20));
}

}  // namespace

std::unique_ptr<train::Trainer> start_run(const YAML::Node& resolved, const std::string& run_dir,
                                          std::shared_ptr<Collective> collective) {
  // Before the data is loaded: fail fast (rank 0 alone: the others would see its new run).
  if ((!collective || collective->rank() == 0) && train::holds_run(run_dir)) {
    throw ConfigError(run_dir + ": already holds a run; use 'moelab resume " + run_dir +
                      "' or choose another directory");
  }
  const bool split_experts = expert_parallel(resolved, collective);
  train::RunParts parts = assemble_run(resolved);
  parts.collective = std::move(collective);
  parts.expert_parallel = split_experts;
  parts.gradient_bucket_bytes = gradient_bucket_bytes(resolved);
  return std::make_unique<train::Trainer>(std::move(parts), run_dir);
}

namespace {

// One warning line per checkpoint passed over.
void warn_skipped(const train::CheckpointScan& scan) {
  for (const auto& line : scan.skipped) spdlog::warn("skipping checkpoint {}", line);
}

// "no checkpoint" with each candidate and why it failed.
[[noreturn]] void throw_no_checkpoint(const std::string& run_dir, const std::string& doing,
                                      const train::CheckpointScan& scan) {
  std::string message = run_dir + ": no complete checkpoint " + doing;
  if (scan.skipped.empty()) {
    message += " (" + std::string(train::kCheckpointDir) + "/ holds none)";
  } else {
    for (const auto& line : scan.skipped) message += "\n  " + line;
  }
  throw CheckpointError(message);
}

// The checkpoint a resume starts from: rank 0 (or the only process) removes leftovers of
// killed writes, moves damaged checkpoints aside and picks the newest; the other ranks take its
// choice.
std::string newest_checkpoint_to_resume(const std::string& run_dir, Collective* collective) {
  if (!fs::is_directory(run_dir)) throw CheckpointError(run_dir + ": no such run directory");
  if (collective && collective->rank() != 0) {
    const std::string directory = collective->all_gather_text("")[0];
    if (directory.empty()) throw CheckpointError(run_dir + ": no complete checkpoint to resume from (see rank 0)");
    return directory;
  }
  train::remove_temporary_checkpoints(run_dir);
  const train::CheckpointScan scan = train::scan_checkpoints(run_dir, /*move_damaged=*/true);
  warn_skipped(scan);
  std::string directory = scan.latest;
  if (collective) directory = collective->all_gather_text(directory)[0];
  if (directory.empty()) throw_no_checkpoint(run_dir, "to resume from", scan);
  return directory;
}

}  // namespace

std::unique_ptr<train::Trainer> resume_run(const std::string& run_dir,
                                           const std::vector<std::string>& overrides,
                                           std::shared_ptr<Collective> collective) {
  const std::string directory = newest_checkpoint_to_resume(run_dir, collective.get());
  YAML::Node config = config::load_file(directory + "/" + train::kRunConfigFile);
  const auto& allowed = train::resume_overridable_keys();
  for (const auto& assignment : overrides) {
    const std::string key = assignment.substr(0, assignment.find('='));
    if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
      std::string list;
      for (const auto& k : allowed) list += (list.empty() ? "" : ", ") + k;
      throw ConfigError(key + ": cannot change on resume (the continued run would differ from "
                        "its checkpoint); a resume may change " + list);
    }
    config::apply_override(config, assignment);
  }
  check_overrides_take_effect(config, overrides);
  const bool split_experts = expert_parallel(config, collective);
  train::RunParts parts = assemble_run(config);
  parts.collective = std::move(collective);
  parts.expert_parallel = split_experts;
  parts.gradient_bucket_bytes = gradient_bucket_bytes(config);
  return train::Trainer::resume(std::move(parts), run_dir, directory);
}

std::unique_ptr<train::FederatedTrainer> start_federated_run(const YAML::Node& resolved,
                                                             const std::string& run_dir,
                                                             std::shared_ptr<Collective> collective) {
  if ((!collective || collective->rank() == 0) && train::holds_run(run_dir)) {
    throw ConfigError(run_dir + ": already holds a run; use 'moelab resume " + run_dir +
                      "' or choose another directory");
  }
  const train::FederatedOptions options = federated_options(resolved);
  if (parallel_options(resolved).expert() > 1) {
    throw ConfigError("parallel.expert: federated clients keep whole models; set parallel.expert=1 "
                      "(clients spread over processes with --nproc)");
  }
  train::RunParts parts = assemble_run(resolved);
  parts.collective = std::move(collective);
  return std::make_unique<train::FederatedTrainer>(std::move(parts), options, run_dir);
}

bool is_federated_run(const std::string& run_dir) {
  const fs::path saved = fs::path(run_dir) / train::kRunConfigFile;
  if (!fs::exists(saved)) return false;
  const YAML::Node config = config::load_file(saved.string());
  return config["federated"] && config["federated"]["clients"] &&
         config["federated"]["clients"].as<int64_t>() > 0;
}

std::unique_ptr<train::FederatedTrainer> resume_federated_run(const std::string& run_dir,
                                                              std::shared_ptr<Collective> collective) {
  const std::string latest = newest_checkpoint_to_resume(run_dir, collective.get());
  const YAML::Node config = config::load_file(latest + "/" + train::kRunConfigFile);
  train::RunParts parts = assemble_run(config);
  parts.collective = std::move(collective);
  return train::FederatedTrainer::resume(std::move(parts), federated_options(config), run_dir, latest);
}

std::string resolve_checkpoint(const std::string& path, bool prefer_latest) {
  if (!fs::exists(path)) throw CheckpointError(path + ": no such run or checkpoint directory");
  if (fs::exists(fs::path(path) / train::kManifestName)) {
    train::verify_checkpoint(path);
    return path;
  }
  const train::CheckpointScan scan = train::scan_checkpoints(path);
  warn_skipped(scan);
  const std::string best = prefer_latest ? "" : train::best_checkpoint(path);
  if (!best.empty()) return best;
  if (scan.latest.empty()) throw_no_checkpoint(path, "(neither a checkpoint nor a run with one)", scan);
  return scan.latest;
}

LoadedCheckpoint load_checkpoint_model(const std::string& path, bool prefer_latest,
                                       const std::vector<std::string>& files,
                                       const std::vector<std::string>& overrides) {
  LoadedCheckpoint loaded;
  loaded.directory = resolve_checkpoint(path, prefer_latest);
  // resolve_checkpoint has verified it; the manifest alone gives the step.
  loaded.step = train::read_manifest(loaded.directory)["metadata"].value("step", int64_t{0});
  YAML::Node config = config::load_file(loaded.directory + "/" + train::kRunConfigFile);
  const YAML::Node overlay = config::resolve(YAML::Node(YAML::NodeType::Map), files, overrides);
  // Another data set brings its own options: the saved ones belong to the old one.
  if (overlay["data"] && overlay["data"]["name"] &&
      overlay["data"]["name"].as<std::string>() != config["data"]["name"].as<std::string>()) {
    config.remove("data");
  }
  config::merge(config, overlay);
  loaded.config = resolve_run_config(config);
  loaded.model = build_model(loaded.config);
  train::load_module_weights(*loaded.model, loaded.directory + "/model.safetensors");
  return loaded;
}

CheckpointEvaluation evaluate_checkpoint(const std::string& path,
                                         const std::vector<std::string>& files,
                                         const std::vector<std::string>& overrides,
                                         bool prefer_latest) {
  LoadedCheckpoint loaded = load_checkpoint_model(path, prefer_latest, files, overrides);
  const data::Splits splits = load_data(loaded.config);
  const train::TrainOptions options = train_options(loaded.config);
  CheckpointEvaluation out;
  out.checkpoint = loaded.directory;
  out.step = loaded.step;
  out.task = make_task(loaded.config);
  const bool has_test = data::size_of(splits.test) > 0;
  out.split = has_test ? "test" : "val";
  const std::shared_ptr<data::DataSource>& set = has_test ? splits.test : splits.val;
  if (data::size_of(set) == 0) {
    throw ConfigError("eval: the data set has no test split and train.val_fraction is 0; "
                      "nothing to evaluate on");
  }
  out.result = train::evaluate(*loaded.model, *set, *out.task,
                               train::eval_batch_size(options.batch_size()),
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
  train::save_module_weights(*loaded.model, (fs::path(out_dir) / "model.safetensors").string(),
                             {{"format", kExportFormat}, {"model", model_name}});
  // What a user needs to feed the model as it was trained: the loader's normalisation and the
  // class names (loading the data set once; its files are on this machine).
  const data::Splits splits = load_data(loaded.config);
  nlohmann::json data = config::to_json(loaded.config["data"]);
  if (data.contains("root")) data.erase("root");  // a path of the machine that trained
  nlohmann::json config{{"format", kExportFormat},
                        {"format_version", kExportFormatVersion},
                        {"moelab_version", MOELAB_VERSION},
                        {"model", config::to_json(loaded.config["model"])},
                        {"data", data},
                        {"task", loaded.config["task"]["name"].as<std::string>()},
                        {"step", loaded.step},
                        {"source_checkpoint", (fs::path(train::kCheckpointDir) /
                                               fs::path(loaded.directory).filename())
                                                  .string()},
                        {"class_names", splits.class_names},
                        {"resolved_sizes", loaded.model->resolved_sizes()},
                        {"tensors", tensors}};
  if (splits.tokenizer) {
    splits.tokenizer->save((fs::path(out_dir) / train::kTokenizerDir).string());
    config["tokenizer"] = {{"kind", splits.tokenizer->kind()},
                           {"vocab_size", splits.tokenizer->vocab_size()},
                           {"directory", train::kTokenizerDir}};
  }
  if (!splits.input_mean.empty()) {
    config["input_normalization"] = {{"mean", splits.input_mean}, {"std", splits.input_std}};
  }
  io::write_file_atomic((fs::path(out_dir) / "config.json").string(), config.dump(2) + "\n");
  return config;
}

LoadedLanguageModel load_language_model(const std::string& path, bool prefer_latest) {
  LoadedCheckpoint loaded = load_checkpoint_model(path, prefer_latest);
  if (loaded.config["model"]["name"].as<std::string>() != "moe_decoder") {
    throw ConfigError(path + ": the model is " + loaded.config["model"]["name"].as<std::string>() +
                      ", not a language model (moe_decoder)");
  }
  // checkpoints/step-N -> the run directory, where the tokenizer is kept.
  const fs::path run_dir = fs::path(loaded.directory).parent_path().parent_path();
  const fs::path tokenizer_dir = run_dir / train::kTokenizerDir;
  if (!fs::exists(tokenizer_dir / "tokenizer.json")) {
    throw CheckpointError(tokenizer_dir.string() + ": no tokenizer (a language model's run keeps "
                          "its tokenizer there)");
  }
  LoadedLanguageModel out;
  out.checkpoint = loaded.directory;
  out.step = loaded.step;
  out.model = loaded.model;
  out.tokenizer = data::load_tokenizer(tokenizer_dir.string());
  return out;
}

nlohmann::json export_hugging_face(const std::string& path, const std::string& out_dir,
                                   bool prefer_latest) {
  const LoadedLanguageModel loaded = load_language_model(path, prefer_latest);
  const auto& decoder = dynamic_cast<const models::MoEDecoderImpl&>(*loaded.model);
  const models::HuggingFaceModel hf = models::to_hugging_face(decoder, loaded.tokenizer->end_of_document());
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) throw ConfigError(out_dir + ": cannot create export directory: " + ec.message());
  // transformers reads only safetensors files whose metadata says format "pt".
  io::save_safetensors((fs::path(out_dir) / "model.safetensors").string(), hf.tensors, {{"format", "pt"}});
  nlohmann::json config = hf.config;
  config["moelab"] = {{"source_checkpoint", loaded.checkpoint}, {"step", loaded.step},
                      {"tokenizer", {{"kind", loaded.tokenizer->kind()}, {"directory", train::kTokenizerDir}}}};
  io::write_file_atomic((fs::path(out_dir) / "config.json").string(), config.dump(2) + "\n");
  const nlohmann::json generation{{"eos_token_id", loaded.tokenizer->end_of_document()},
                                  {"max_length", decoder.options.max_length()}};
  io::write_file_atomic((fs::path(out_dir) / "generation_config.json").string(), generation.dump(2) + "\n");
  loaded.tokenizer->save((fs::path(out_dir) / train::kTokenizerDir).string());
  return config;
}

}  // namespace moelab::run
