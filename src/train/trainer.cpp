#include "moelab/train/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
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
#include "moelab/train/evaluation.h"
#include "moelab/util/errors.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

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

nlohmann::json routing_json(const std::vector<nn::MoEOutput>& layers,
                            const std::vector<analysis::ExpertTally>& tallies) {
  nlohmann::json out = nlohmann::json::array();
  for (size_t l = 0; l < layers.size(); ++l) {
    const auto& layer = layers[l];
    const auto& s = layer.stats;
    out.push_back({{"usage", analysis::to_doubles(s.usage)},
                   {"token_entropy", s.token_entropy.item<double>()},
                   {"usage_entropy", s.usage_entropy.item<double>()},
                   {"dropped_fraction", s.dropped_fraction},
                   {"load_balance", layer.aux_terms.load_balance.item<double>()},
                   {"z_loss", layer.aux_terms.z_loss.item<double>()}});
    if (l < tallies.size() && !tallies[l].empty()) {
      out.back()["expert_loss"] = analysis::to_json_numbers(tallies[l].mean_loss());
    }
  }
  return out;
}

nlohmann::json tally_json(const std::vector<analysis::ExpertTally>& tallies) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& tally : tallies) {
    out.push_back({{"usage", analysis::to_json_numbers(tally.usage())},
                   {"samples", analysis::to_json_numbers(tally.counts())},
                   {"expert_loss", analysis::to_json_numbers(tally.mean_loss())}});
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

void validate(const TrainOptions& o) {
  auto require = [](bool ok, const std::string& key, const std::string& rule) {
    if (!ok) throw ConfigError("train." + key + ": must be " + rule);
  };
  require(o.max_steps() >= 1, "max_steps", ">= 1");
  require(o.epochs() >= 0, "epochs", ">= 0");
  require(o.batch_size() >= 1, "batch_size", ">= 1");
  require(o.grad_accumulation() >= 1, "grad_accumulation", ">= 1");
  require(o.clip_grad_norm() >= 0, "clip_grad_norm", ">= 0");
  require(o.val_fraction() >= 0 && o.val_fraction() < 1, "val_fraction", "in [0, 1)");
  require(o.log_every() >= 1, "log_every", ">= 1");
  require(o.eval_every() >= 0, "eval_every", ">= 0");
  require(o.checkpoint_every() >= 0, "checkpoint_every", ">= 0");
  require(o.checkpoint_every_minutes() >= 0, "checkpoint_every_minutes", ">= 0");
  require(o.keep_last() >= 1, "keep_last", ">= 1");
  require(o.max_nonfinite_steps() >= 1, "max_nonfinite_steps", ">= 1");
  require(o.optimizer().lr() > 0, "optimizer.lr", "> 0");
  parse_duration(o.max_time(), "train.max_time");
  parse_precision(o.precision(), "train.precision");
  validate(o.monitor(), "train.monitor");
  if (o.monitor().patience() > 0 && o.val_fraction() == 0) {
    throw ConfigError("train.monitor.patience: early stopping needs a validation set; set "
                      "train.val_fraction > 0");
  }
}

std::string to_string(StopReason reason) {
  switch (reason) {
    case StopReason::kCompleted: return "completed";
    case StopReason::kEarlyStopping: return "early_stopping";
    case StopReason::kTimeLimit: return "time_limit";
    case StopReason::kSignal: return "signal";
  }
  return "?";
}

const std::vector<std::string>& resume_overridable_keys() {
  static const std::vector<std::string> keys{
      "train.max_steps",        "train.epochs",   "train.max_time",
      "train.checkpoint_every", "train.checkpoint_every_minutes",
      "train.keep_last",        "train.monitor.patience"};
  return keys;
}

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

std::string best_checkpoint(const std::string& run_dir) {
  const std::string latest = latest_checkpoint(run_dir);
  if (latest.empty()) return "";
  const auto state = read_manifest(latest)["metadata"].value("early_stopping", nlohmann::json{});
  const int64_t best_step = state.value("best_step", int64_t{-1});
  if (best_step < 0) return "";
  const std::string best = (fs::path(run_dir) / kCheckpointDir / checkpoint_name(best_step)).string();
  try {
    verify_checkpoint(best);
    return best;
  } catch (const CheckpointError&) {
    return "";
  }
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
  precision_ = parse_precision(options_.precision(), "train.precision");
  check_precision_supported(precision_, "train.precision");
  early_stopping_ = EarlyStopping(options_.monitor());
  build();
}

Trainer::~Trainer() = default;

void Trainer::build() {
  torch::manual_seed(options_.seed());
  model_ = config::build_model(config_);
  data_ = config::load_data(config_);
  const int64_t train_size = data_.train.size();
  if (train_size < options_.batch_size()) {
    throw ConfigError("train.batch_size (" + std::to_string(options_.batch_size()) +
                      ") exceeds the " + std::to_string(train_size) + " training samples");
  }
  if (options_.epochs() > 0) {
    const int64_t micro_batches_per_epoch = train_size / options_.batch_size();
    total_steps_ = (options_.epochs() * micro_batches_per_epoch + options_.grad_accumulation() - 1) /
                   options_.grad_accumulation();
  } else {
    total_steps_ = options_.max_steps();
  }
  std::vector<at::Tensor> params = model_->parameters();
  optimizer_ = make_optimizer(params, options_.optimizer());
  epoch_order_ = epoch_permutation(options_.seed(), epoch_, train_size);
}

void Trainer::set_console(ConsoleMode mode, std::ostream& out) {
  console_mode_ = mode;
  console_ = &out;
}

bool Trainer::epoch_exhausted() const {
  return cursor_ + options_.batch_size() > data_.train.size();
}

void Trainer::write_epoch_line() {
  bool any = false;
  for (const auto& tally : epoch_tally_) any = any || !tally.empty();
  if (!any) return;
  append_metrics(nlohmann::json{{"kind", "epoch"},
                                {"epoch", epoch_},
                                {"step", step_},
                                {"moe_layers", tally_json(epoch_tally_)}}
                     .dump());
  for (auto& tally : epoch_tally_) tally.clear();
}

at::Tensor Trainer::next_batch() {
  if (epoch_exhausted()) {  // drop the last partial batch, start the next epoch
    write_epoch_line();
    ++epoch_;
    cursor_ = 0;
    epoch_order_ = epoch_permutation(options_.seed(), epoch_, data_.train.size());
  }
  at::Tensor rows = epoch_order_.narrow(0, cursor_, options_.batch_size());
  cursor_ += options_.batch_size();
  return rows;
}

double Trainer::seconds_trained() const {
  return seconds_before_ + std::chrono::duration<double>(Clock::now() - process_start_).count();
}

void Trainer::append_metrics(const std::string& line) {
  std::ofstream out(fs::path(run_dir_) / "metrics.jsonl", std::ios::app);
  if (!out) throw std::runtime_error(run_dir_ + "/metrics.jsonl: cannot append");
  out << line << "\n";
}

TrainSummary Trainer::run(int64_t stop_at_step) {
  const int64_t last = stop_at_step > 0 ? std::min(stop_at_step, total_steps_) : total_steps_;
  const double max_seconds = parse_duration(options_.max_time(), "train.max_time");
  const double checkpoint_seconds = options_.checkpoint_every_minutes() * 60.0;
  const int64_t eval_batch = std::max<int64_t>(options_.batch_size(), 256);
  TrainSummary summary;
  summary.total_steps = total_steps_;
  model_->train();
  double interval_loss = 0, interval_task = 0, interval_aux = 0, interval_correct = 0;
  double running_loss = std::nan("");
  int64_t interval_samples = 0, interval_steps = 0;
  process_start_ = Clock::now();
  const int64_t first_step = step_;
  auto interval_start = Clock::now(), last_checkpoint_time = Clock::now(), last_draw = Clock::now();

  auto say = [&](const std::string& line) {
    if (console_mode_ == ConsoleMode::kSilent) return;
    if (console_mode_ == ConsoleMode::kProgressBar) *console_ << "\r\033[K";
    *console_ << line << std::endl;
  };
  auto draw_bar = [&](bool force) {
    if (console_mode_ != ConsoleMode::kProgressBar) return;
    if (!force && Clock::now() - last_draw < std::chrono::milliseconds(100)) return;
    last_draw = Clock::now();
    *console_ << "\r\033[K"
              << format_progress_bar(step_, total_steps_, running_loss, seconds_trained())
              << std::flush;
  };

  // A run that stopped early or ran out of time stays stopped until a resume raises the limit.
  StopReason stop = StopReason::kCompleted;
  if (early_stopping_.should_stop()) {
    stop = StopReason::kEarlyStopping;
  } else if (max_seconds > 0 && seconds_before_ >= max_seconds) {
    stop = StopReason::kTimeLimit;
  }
  while (step_ < last && stop == StopReason::kCompleted) {
    const double lr = learning_rate_at(step_, total_steps_, options_.optimizer().lr(),
                                       options_.schedule());
    set_learning_rate(*optimizer_, lr);
    optimizer_->zero_grad();
    std::vector<nn::MoEOutput> routing;
    bool finite = true;
    for (int64_t micro = 0; micro < options_.grad_accumulation(); ++micro) {
      data::LabelledSet batch = data_.train.rows(next_batch());
      if (data_.augment) batch.inputs = data_.augment(batch.inputs);
      at::Tensor sample_loss, task, loss;
      models::ModelOutput out;
      {
        AutocastScope autocast(precision_);
        out = model_->forward(batch.inputs);
        sample_loss = at::cross_entropy_loss(out.logits.to(at::kFloat), batch.labels, {},
                                             at::Reduction::None);
        task = sample_loss.mean();
        loss = task + out.aux_loss.to(at::kFloat);
      }
      (loss / static_cast<double>(options_.grad_accumulation())).backward();
      interval_tally_.resize(out.moe_layers.size());
      epoch_tally_.resize(out.moe_layers.size());
      for (size_t l = 0; l < out.moe_layers.size(); ++l) {
        interval_tally_[l].add(out.moe_layers[l].stats, sample_loss);
        epoch_tally_[l].add(out.moe_layers[l].stats, sample_loss);
      }
      const double loss_value = loss.item<double>();
      interval_loss += loss_value;
      interval_task += task.item<double>();
      interval_aux += out.aux_loss.item<double>();
      interval_correct += out.logits.argmax(-1).eq(batch.labels).sum().item<double>();
      interval_samples += batch.size();
      finite = finite && std::isfinite(loss_value);
      if (std::isfinite(loss_value)) {
        running_loss = std::isnan(running_loss) ? loss_value : 0.95 * running_loss + 0.05 * loss_value;
      }
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
            std::to_string(step_) + "); the state is saved in " + last_checkpoint_ +
            ". HINT: lower train.optimizer.lr, set train.clip_grad_norm, or check the data");
      }
      if (stop_requested()) {
        stop = StopReason::kSignal;
        save_checkpoint();
        break;
      }
      continue;
    }
    nonfinite_in_a_row_ = 0;
    if (options_.clip_grad_norm() > 0) {
      torch::nn::utils::clip_grad_norm_(model_->parameters(), options_.clip_grad_norm());
    }
    optimizer_->step();
    for (auto& child : model_->modules(/*include_self=*/false)) {
      if (auto* moe = dynamic_cast<nn::MoELayerImpl*>(child.get())) {
        moe->update_routing_bias(lr / options_.optimizer().lr());
      }
    }
    ++step_;
    ++interval_steps;
    // Before any checkpoint of this step, so a resumed run does not write the line again.
    if (epoch_exhausted()) write_epoch_line();

    if (step_ % options_.log_every() == 0 || step_ == last) {
      const double seconds = std::chrono::duration<double>(Clock::now() - interval_start).count();
      const double micro_batches = static_cast<double>(interval_steps * options_.grad_accumulation());
      summary.final_train_loss = interval_loss / micro_batches;
      const double accuracy = interval_correct / interval_samples;
      const double samples_per_s = interval_samples / std::max(seconds, 1e-9);
      append_metrics(nlohmann::json{{"kind", "train"},
                                    {"step", step_},
                                    {"epoch", epoch_},
                                    {"loss", summary.final_train_loss},
                                    {"task_loss", interval_task / micro_batches},
                                    {"aux_loss", interval_aux / micro_batches},
                                    {"accuracy", accuracy},
                                    {"lr", lr},
                                    {"skipped_steps", nonfinite_total_},
                                    {"samples_per_s", samples_per_s},
                                    {"moe_layers", routing_json(routing, interval_tally_)}}
                         .dump());
      for (auto& tally : interval_tally_) tally.clear();
      if (console_mode_ == ConsoleMode::kLines) {
        say(fmt::format("step {}/{}  loss {:.4f}  accuracy {:.4f}  lr {:.3g}  {:.0f} samples/s  "
                        "elapsed {}",
                        step_, total_steps_, summary.final_train_loss, accuracy, lr,
                        samples_per_s, format_clock(seconds_trained())));
      }
      interval_loss = interval_task = interval_aux = interval_correct = 0;
      interval_samples = interval_steps = 0;
      interval_start = Clock::now();
    }

    const bool evaluate_now = data_.val.size() > 0 &&
                              ((options_.eval_every() > 0 && step_ % options_.eval_every() == 0) ||
                               step_ == total_steps_ ||
                               (options_.eval_each_epoch() && epoch_exhausted()));
    if (evaluate_now) {
      const Evaluation result = evaluate(*model_, data_.val, eval_batch, precision_);
      model_->train();
      summary.evaluated = true;
      summary.val_loss = result.loss;
      summary.val_accuracy = result.accuracy;
      const double monitored =
          options_.monitor().metric() == "val_accuracy" ? result.accuracy : result.loss;
      const bool improved = early_stopping_.update(monitored, step_);
      append_metrics(nlohmann::json{{"kind", "eval"},
                                    {"step", step_},
                                    {"epoch", epoch_},
                                    {"val_loss", result.loss},
                                    {"val_accuracy", result.accuracy},
                                    {"best_step", early_stopping_.best_step()}}
                         .dump());
      say(fmt::format("eval step {}: val loss {:.4f}, val accuracy {:.4f}{}", step_, result.loss,
                      result.accuracy, improved ? " (best)" : ""));
      if (improved && options_.monitor().keep_best()) save_checkpoint();
    }

    if (early_stopping_.should_stop()) {
      stop = StopReason::kEarlyStopping;
    } else if (max_seconds > 0 && seconds_trained() >= max_seconds) {
      stop = StopReason::kTimeLimit;
    } else if (stop_requested()) {
      stop = StopReason::kSignal;
    }
    const bool checkpoint_now =
        (options_.checkpoint_every() > 0 && step_ % options_.checkpoint_every() == 0) ||
        step_ == last || stop != StopReason::kCompleted ||
        (checkpoint_seconds > 0 &&
         std::chrono::duration<double>(Clock::now() - last_checkpoint_time).count() >=
             checkpoint_seconds);
    if (checkpoint_now) {
      save_checkpoint();
      last_checkpoint_time = Clock::now();
    }
    draw_bar(step_ == last);
    if (stop != StopReason::kCompleted) break;
  }
  if (console_mode_ == ConsoleMode::kProgressBar) *console_ << "\n";
  const bool finished = step_ == total_steps_ || stop == StopReason::kEarlyStopping;
  if (step_ > first_step && finished) {
    const data::LabelledSet& set = data_.test.size() > 0 ? data_.test : data_.val;
    if (set.size() > 0) {
      const Evaluation test = evaluate(*model_, set, eval_batch, precision_,
                                       static_cast<int64_t>(data_.class_names.size()));
      model_->train();
      nlohmann::json layers = nlohmann::json::array();
      for (size_t l = 0; l < test.class_expert.size(); ++l) {
        const at::Tensor counts = test.class_expert[l].contiguous();
        std::vector<std::vector<int64_t>> rows;
        for (int64_t c = 0; c < counts.size(0); ++c) {
          const at::Tensor row = counts[c].contiguous();
          rows.emplace_back(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel());
        }
        layers.push_back({{"class_expert", rows},
                          {"mutual_information", analysis::mutual_information(counts)},
                          {"expert_loss", analysis::to_json_numbers(test.expert_loss[l].mean_loss())},
                          {"samples", analysis::to_json_numbers(test.expert_loss[l].counts())}});
      }
      append_metrics(nlohmann::json{{"kind", "test"},
                                    {"step", step_},
                                    {"split", data_.test.size() > 0 ? "test" : "val"},
                                    {"loss", test.loss},
                                    {"accuracy", test.accuracy},
                                    {"samples", test.samples},
                                    {"class_names", data_.class_names},
                                    {"moe_layers", layers}}
                         .dump());
      say(fmt::format("{} split: loss {:.4f}, accuracy {:.4f}", data_.test.size() > 0 ? "test" : "val",
                      test.loss, test.accuracy));
      summary.tested = true;
      summary.test_loss = test.loss;
      summary.test_accuracy = test.accuracy;
    }
  }
  summary.steps = step_;
  summary.skipped_steps = nonfinite_total_;
  summary.stop_reason = stop;
  summary.checkpoint = last_checkpoint_;
  summary.best_step = early_stopping_.best_step();
  summary.best_value = early_stopping_.best_value();
  return summary;
}

void Trainer::save_checkpoint() {
  const fs::path directory = fs::path(run_dir_) / kCheckpointDir / checkpoint_name(step_);
  last_checkpoint_ = directory.string();
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
                    {"nonfinite_total", nonfinite_total_},
                    {"train_seconds", seconds_trained()},
                    {"early_stopping", early_stopping_.state()},
                    {"epoch_tally", [&] {
                       nlohmann::json states = nlohmann::json::array();
                       for (const auto& tally : epoch_tally_) states.push_back(tally.state());
                       return states;
                     }()}});
  const bool keep_best = options_.monitor().keep_best() && early_stopping_.has_best();
  const std::string best_name = keep_best ? checkpoint_name(early_stopping_.best_step()) : "";
  auto dirs = checkpoint_dirs(run_dir_);
  int64_t newer = 0;  // checkpoints newer than the one looked at, the kept best excluded
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    if (it->filename() == best_name) continue;
    if (++newer > options_.keep_last()) fs::remove_all(*it);
  }
}

// `directory` has just been verified (latest_checkpoint).
void Trainer::load_checkpoint(const std::string& directory) {
  const nlohmann::json manifest = read_manifest(directory);
  const auto& meta = manifest["metadata"];
  step_ = meta.at("step").get<int64_t>();
  epoch_ = meta.at("epoch").get<int64_t>();
  cursor_ = meta.at("cursor").get<int64_t>();
  nonfinite_in_a_row_ = meta.value("nonfinite_in_a_row", int64_t{0});
  nonfinite_total_ = meta.value("nonfinite_total", int64_t{0});
  seconds_before_ = meta.value("train_seconds", 0.0);
  early_stopping_.load_state(meta.value("early_stopping", nlohmann::json::object()));
  epoch_tally_.clear();
  for (const auto& state : meta.value("epoch_tally", nlohmann::json::array())) {
    epoch_tally_.emplace_back();
    epoch_tally_.back().load_state(state);
  }
  epoch_order_ = epoch_permutation(options_.seed(), epoch_, data_.train.size());
  load_module_weights(*model_, directory + "/model.safetensors");
  torch::serialize::InputArchive archive;
  archive.load_from(directory + "/optimizer.pt");
  optimizer_->load(archive);
  at::Tensor rng = io::load_safetensors(directory + "/rng.safetensors").tensors.at("cpu");
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  generator.set_state(rng);
  last_checkpoint_ = directory;
}

std::unique_ptr<Trainer> Trainer::resume(const std::string& run_dir,
                                         const std::vector<std::string>& overrides) {
  const std::string directory = latest_checkpoint(run_dir);
  if (directory.empty()) {
    throw CheckpointError(run_dir + ": no complete checkpoint to resume from");
  }
  YAML::Node config = config::load_file(directory + "/config.yaml");
  const auto& allowed = resume_overridable_keys();
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
  std::unique_ptr<Trainer> trainer(new Trainer(config, run_dir, Resumed{}));
  trainer->load_checkpoint(directory);
  if (!overrides.empty()) {
    std::ofstream(fs::path(run_dir) / "config.yaml") << YAML::Dump(trainer->config_) << "\n";
  }
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
