#include "moelab/train/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "moelab/config/config.h"
#include "moelab/config/options_io.h"
#include "moelab/config/run_config.h"
#include "moelab/io/safetensors.h"
#include "moelab/train/checkpoint.h"
#include "moelab/util/errors.h"

namespace fs = std::filesystem;

namespace moelab::train {

namespace {

constexpr const char* kCheckpointDir = "checkpoints";

std::string checkpoint_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%08lld", static_cast<long long>(step));
  return name;
}

std::vector<fs::path> checkpoint_dirs(const std::string& run_dir) {
  std::vector<fs::path> dirs;
  const fs::path root = fs::path(run_dir) / kCheckpointDir;
  if (!fs::is_directory(root)) return dirs;
  const std::regex pattern("step-[0-9]{8}");
  for (const auto& entry : fs::directory_iterator(root)) {
    if (entry.is_directory() && std::regex_match(entry.path().filename().string(), pattern)) {
      dirs.push_back(entry.path());
    }
  }
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(std::vector<at::Tensor> params,
                                                        const OptimizerOptions& o) {
  if (o.name() == "adamw") {
    return std::make_unique<torch::optim::AdamW>(
        params, torch::optim::AdamWOptions(o.lr())
                    .betas({o.beta1(), o.beta2()})
                    .eps(o.eps())
                    .weight_decay(o.weight_decay()));
  }
  if (o.name() == "sgd") {
    return std::make_unique<torch::optim::SGD>(
        params, torch::optim::SGDOptions(o.lr())
                    .momentum(o.momentum())
                    .nesterov(o.nesterov())
                    .weight_decay(o.weight_decay()));
  }
  throw ConfigError("train.optimizer.name: unknown optimizer '" + o.name() +
                    "'; expected adamw or sgd");
}

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

// The order of one epoch depends only on (seed, epoch): resume regenerates it.
at::Tensor epoch_permutation(uint64_t seed, int64_t epoch, int64_t size) {
  at::Generator generator = at::detail::createCPUGenerator(seed * 1000003ULL + epoch);
  return at::randperm(size, generator, at::kLong);
}

nlohmann::json routing_json(const std::vector<nn::MoEOutput>& layers) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& layer : layers) {
    const auto& s = layer.stats;
    at::Tensor usage = s.usage.to(at::kDouble).contiguous();
    out.push_back({{"usage", std::vector<double>(usage.data_ptr<double>(),
                                                 usage.data_ptr<double>() + usage.numel())},
                   {"token_entropy", s.token_entropy.item<double>()},
                   {"usage_entropy", s.usage_entropy.item<double>()},
                   {"dropped_fraction", s.dropped_fraction},
                   {"load_balance", layer.aux_terms.load_balance.item<double>()},
                   {"z_loss", layer.aux_terms.z_loss.item<double>()}});
  }
  return out;
}

bool gradients_are_finite(const torch::nn::Module& module) {
  for (const auto& p : module.parameters()) {
    if (p.grad().defined() && !at::isfinite(p.grad()).all().item<bool>()) return false;
  }
  return true;
}

}  // namespace

std::string latest_checkpoint(const std::string& run_dir) {
  auto dirs = checkpoint_dirs(run_dir);
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    try {
      verify_checkpoint(it->string());
      return it->string();
    } catch (const CheckpointError&) {
      // An incomplete or damaged checkpoint is skipped in favour of an older one.
    }
  }
  return "";
}

Trainer::Trainer(const YAML::Node& resolved_config, const std::string& run_dir)
    : Trainer(resolved_config, run_dir, Resumed{}) {
  if (fs::exists(fs::path(run_dir) / "metrics.jsonl") ||
      fs::exists(fs::path(run_dir) / kCheckpointDir)) {
    throw ConfigError(run_dir + ": already holds a run; use 'moelab resume " + run_dir +
                      "' or choose another directory");
  }
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  if (ec) throw ConfigError(run_dir + ": cannot create run directory: " + ec.message());
  std::ofstream out(fs::path(run_dir) / "config.yaml");
  if (!out) throw ConfigError(run_dir + ": run directory is not writable");
  out << YAML::Dump(config_) << "\n";
}

Trainer::Trainer(const YAML::Node& resolved_config, const std::string& run_dir, Resumed)
    : config_(config::clone(resolved_config)), run_dir_(run_dir) {
  options_ = config::train_options(config_);
  build();
}

Trainer::~Trainer() = default;

void Trainer::build() {
  torch::manual_seed(options_.seed());
  model_ = config::build_model(config_);
  data::LabelledVectors all = data::make_synthetic_mixture(config::data_options(config_));
  const int64_t n = all.features.size(0);
  const auto n_val = static_cast<int64_t>(std::floor(options_.val_fraction() * n));
  at::Tensor split = epoch_permutation(options_.seed(), /*epoch=*/-1, n);
  auto take = [&](const at::Tensor& rows) {
    return data::LabelledVectors{all.features.index_select(0, rows),
                                 all.labels.index_select(0, rows),
                                 all.clusters.index_select(0, rows)};
  };
  val_set_ = take(split.narrow(0, 0, n_val));
  train_set_ = take(split.narrow(0, n_val, n - n_val));
  if (train_set_.features.size(0) < options_.batch_size()) {
    throw ConfigError("train.batch_size (" + std::to_string(options_.batch_size()) +
                      ") exceeds the " + std::to_string(train_set_.features.size(0)) +
                      " training samples");
  }
  std::vector<at::Tensor> params = model_->parameters();
  optimizer_ = make_optimizer(params, options_.optimizer());
  epoch_order_ = epoch_permutation(options_.seed(), epoch_, train_set_.features.size(0));
}

at::Tensor Trainer::next_batch() {
  const int64_t size = train_set_.features.size(0), batch = options_.batch_size();
  if (cursor_ + batch > size) {  // drop the last partial batch, start the next epoch
    ++epoch_;
    cursor_ = 0;
    epoch_order_ = epoch_permutation(options_.seed(), epoch_, size);
  }
  at::Tensor rows = epoch_order_.narrow(0, cursor_, batch);
  cursor_ += batch;
  return rows;
}

std::pair<double, double> Trainer::evaluate() {
  if (val_set_.features.size(0) == 0) return {0.0, 0.0};
  torch::NoGradGuard no_grad;
  model_->eval();
  auto out = model_->forward(val_set_.features);
  model_->train();
  const double loss = at::cross_entropy_loss(out.logits, val_set_.labels).item<double>();
  const double accuracy = out.logits.argmax(-1).eq(val_set_.labels).to(at::kDouble).mean().item<double>();
  return {loss, accuracy};
}

void Trainer::append_metrics(const std::string& line) {
  std::ofstream out(fs::path(run_dir_) / "metrics.jsonl", std::ios::app);
  if (!out) throw std::runtime_error(run_dir_ + "/metrics.jsonl: cannot append");
  out << line << "\n";
}

TrainSummary Trainer::run(int64_t stop_at_step) {
  const int64_t last = stop_at_step > 0 ? std::min(stop_at_step, options_.max_steps())
                                        : options_.max_steps();
  TrainSummary summary;
  model_->train();
  double interval_loss = 0, interval_task = 0, interval_aux = 0, interval_correct = 0;
  int64_t interval_samples = 0, interval_steps = 0;
  auto interval_start = std::chrono::steady_clock::now();
  while (step_ < last) {
    const double lr = learning_rate_at(step_, options_.max_steps(), options_.optimizer().lr(),
                                       options_.schedule());
    set_learning_rate(*optimizer_, lr);
    optimizer_->zero_grad();
    std::vector<nn::MoEOutput> routing;
    bool finite = true;
    for (int64_t micro = 0; micro < options_.grad_accumulation(); ++micro) {
      at::Tensor rows = next_batch();
      at::Tensor x = train_set_.features.index_select(0, rows);
      at::Tensor y = train_set_.labels.index_select(0, rows);
      auto out = model_->forward(x);
      at::Tensor task = at::cross_entropy_loss(out.logits, y);
      at::Tensor loss = task + out.aux_loss;
      (loss / static_cast<double>(options_.grad_accumulation())).backward();
      interval_loss += loss.item<double>();
      interval_task += task.item<double>();
      interval_aux += out.aux_loss.item<double>();
      interval_correct += out.logits.argmax(-1).eq(y).sum().item<double>();
      interval_samples += y.size(0);
      finite = finite && std::isfinite(loss.item<double>());
      routing = std::move(out.moe_layers);
    }
    finite = finite && gradients_are_finite(*model_);
    if (!finite) {
      optimizer_->zero_grad();
      ++nonfinite_total_;
      append_metrics(nlohmann::json{{"kind", "skip"},
                                    {"step", step_},
                                    {"nonfinite_in_a_row", ++nonfinite_in_a_row_}}
                         .dump());
      if (nonfinite_in_a_row_ >= options_.max_nonfinite_steps()) {
        save_checkpoint();
        throw TrainingError(
            "train: " + std::to_string(nonfinite_in_a_row_) +
            " steps in a row had a non-finite loss or gradient (at step " +
            std::to_string(step_) + "); the state is saved in " + run_dir_ + "/" +
            kCheckpointDir + "/" + checkpoint_name(step_) +
            ". HINT: lower train.optimizer.lr, set train.clip_grad_norm, or check the data");
      }
      continue;
    }
    nonfinite_in_a_row_ = 0;
    if (options_.clip_grad_norm() > 0) {
      torch::nn::utils::clip_grad_norm_(model_->parameters(), options_.clip_grad_norm());
    }
    optimizer_->step();
    for (auto& child : model_->modules(/*include_self=*/false)) {
      if (auto* moe = dynamic_cast<nn::MoELayerImpl*>(child.get())) moe->update_routing_bias();
    }
    ++step_;
    ++interval_steps;

    if (step_ % options_.log_every() == 0 || step_ == last) {
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                                           interval_start).count();
      const double micro_batches = static_cast<double>(interval_steps * options_.grad_accumulation());
      summary.final_train_loss = interval_loss / micro_batches;
      append_metrics(nlohmann::json{{"kind", "train"},
                                    {"step", step_},
                                    {"epoch", epoch_},
                                    {"loss", summary.final_train_loss},
                                    {"task_loss", interval_task / micro_batches},
                                    {"aux_loss", interval_aux / micro_batches},
                                    {"accuracy", interval_correct / interval_samples},
                                    {"lr", lr},
                                    {"skipped_steps", nonfinite_total_},
                                    {"samples_per_s", interval_samples / std::max(seconds, 1e-9)},
                                    {"moe_layers", routing_json(routing)}}
                         .dump());
      interval_loss = interval_task = interval_aux = interval_correct = 0;
      interval_samples = interval_steps = 0;
      interval_start = std::chrono::steady_clock::now();
    }
    const bool evaluate_now = (options_.eval_every() > 0 && step_ % options_.eval_every() == 0) ||
                              step_ == options_.max_steps();
    if (evaluate_now) {
      std::tie(summary.val_loss, summary.val_accuracy) = evaluate();
      append_metrics(nlohmann::json{{"kind", "eval"},
                                    {"step", step_},
                                    {"val_loss", summary.val_loss},
                                    {"val_accuracy", summary.val_accuracy}}
                         .dump());
    }
    if ((options_.checkpoint_every() > 0 && step_ % options_.checkpoint_every() == 0) ||
        step_ == last) {
      save_checkpoint();
    }
  }
  summary.steps = step_;
  summary.skipped_steps = nonfinite_total_;
  return summary;
}

void Trainer::save_checkpoint() {
  const fs::path directory = fs::path(run_dir_) / kCheckpointDir / checkpoint_name(step_);
  if (fs::exists(directory)) return;  // this step is saved already
  FileWriters files{
      {"model.safetensors", [&](const std::string& p) { save_module_weights(*model_, p); }},
      {"optimizer.pt",
       [&](const std::string& p) {
         torch::serialize::OutputArchive archive;
         optimizer_->save(archive);
         archive.save_to(p);
       }},
      {"rng.safetensors",
       [&](const std::string& p) {
         io::save_safetensors(p, {{"cpu", at::detail::getDefaultCPUGenerator().get_state()}});
       }},
      {"config.yaml", [&](const std::string& p) { std::ofstream(p) << YAML::Dump(config_) << "\n"; }},
  };
  write_checkpoint(directory.string(), files,
                   {{"step", step_},
                    {"epoch", epoch_},
                    {"cursor", cursor_},
                    {"nonfinite_in_a_row", nonfinite_in_a_row_},
                    {"nonfinite_total", nonfinite_total_}});
  auto dirs = checkpoint_dirs(run_dir_);
  for (size_t i = 0; i + options_.keep_last() < dirs.size(); ++i) fs::remove_all(dirs[i]);
}

void Trainer::load_checkpoint(const std::string& directory) {
  const nlohmann::json manifest = verify_checkpoint(directory);
  const auto& meta = manifest["metadata"];
  step_ = meta.at("step").get<int64_t>();
  epoch_ = meta.at("epoch").get<int64_t>();
  cursor_ = meta.at("cursor").get<int64_t>();
  nonfinite_in_a_row_ = meta.value("nonfinite_in_a_row", int64_t{0});
  nonfinite_total_ = meta.value("nonfinite_total", int64_t{0});
  epoch_order_ = epoch_permutation(options_.seed(), epoch_, train_set_.features.size(0));
  load_module_weights(*model_, directory + "/model.safetensors");
  torch::serialize::InputArchive archive;
  archive.load_from(directory + "/optimizer.pt");
  optimizer_->load(archive);
  at::Tensor rng = io::load_safetensors(directory + "/rng.safetensors").tensors.at("cpu");
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  generator.set_state(rng);
}

std::unique_ptr<Trainer> Trainer::resume(const std::string& run_dir) {
  const std::string directory = latest_checkpoint(run_dir);
  if (directory.empty()) {
    throw CheckpointError(run_dir + ": no complete checkpoint to resume from");
  }
  const YAML::Node config = config::load_file(directory + "/config.yaml");
  std::unique_ptr<Trainer> trainer(new Trainer(config, run_dir, Resumed{}));
  trainer->load_checkpoint(directory);
  // Metric lines written after the checkpoint belong to a future that is now rewritten.
  const fs::path metrics = fs::path(run_dir) / "metrics.jsonl";
  if (fs::exists(metrics)) {
    std::ifstream in(metrics);
    std::vector<std::string> kept;
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      if (nlohmann::json::parse(line).value("step", int64_t{0}) <= trainer->step_) kept.push_back(line);
    }
    in.close();
    std::ofstream out(metrics, std::ios::trunc);
    for (const auto& line : kept) out << line << "\n";
  }
  return trainer;
}

}  // namespace moelab::train
