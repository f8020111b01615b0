#include "moelab/train/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "moelab/config/config.h"
#include "moelab/config/fields.h"
#include "moelab/io/file.h"
#include "moelab/io/safetensors.h"
#include "moelab/train/checkpoint.h"
#include "moelab/train/evaluation.h"
#include "moelab/train/step.h"
#include "moelab/util/errors.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace moelab::train {

template <typename V>
void visit(V& v, TrainOptions& o) {
  v.field("max_steps", o.max_steps());
  v.field("epochs", o.epochs());
  v.field("batch_size", o.batch_size());
  v.field("grad_accumulation", o.grad_accumulation());
  v.field("clip_grad_norm", o.clip_grad_norm());
  v.field("val_fraction", o.val_fraction());
  v.field("log_every", o.log_every());
  v.field("eval_every", o.eval_every());
  v.field("eval_each_epoch", o.eval_each_epoch());
  v.field("checkpoint_every", o.checkpoint_every());
  v.field("checkpoint_every_minutes", o.checkpoint_every_minutes());
  v.field("keep_last", o.keep_last());
  v.field("max_time", o.max_time());
  v.field("precision", o.precision());
  v.field("seed", o.seed());
  v.field("max_nonfinite_steps", o.max_nonfinite_steps());
  v.nested("optimizer", o.optimizer());
  v.nested("schedule", o.schedule());
  v.nested("monitor", o.monitor());
}
MOELAB_DEFINE_OPTIONS_YAML(TrainOptions)

namespace {

nlohmann::json routing_json(const std::vector<nn::MoEOutput>& layers,
                            const std::vector<ExpertTally>& tallies) {
  nlohmann::json out = nlohmann::json::array();
  for (size_t l = 0; l < layers.size(); ++l) {
    const auto& layer = layers[l];
    const auto& s = layer.stats;
    out.push_back({{"usage", to_doubles(s.usage)},
                   {"token_entropy", s.token_entropy.item<double>()},
                   {"usage_entropy", s.usage_entropy.item<double>()},
                   {"dropped_fraction", s.dropped_fraction}});
    for (const auto& [name, value] : layer.aux_terms) out.back()[name] = value.item<double>();
    if (l < tallies.size() && !tallies[l].empty()) {
      out.back()["expert_loss"] = to_json_numbers(tallies[l].mean_loss());
    }
  }
  return out;
}

nlohmann::json tally_json(const std::vector<ExpertTally>& tallies) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& tally : tallies) {
    out.push_back({{"usage", to_json_numbers(tally.usage())},
                   {"samples", to_json_numbers(tally.counts())},
                   {"expert_loss", to_json_numbers(tally.mean_loss())}});
  }
  return out;
}

// The metrics of an evaluation as "PREFIX_NAME" keys of a metrics line.
void add_metrics(nlohmann::json& line, const std::string& prefix, const Metrics& metrics) {
  for (const auto& [name, value] : metrics.values) line[prefix + name] = value;
  for (const auto& [name, value] : metrics.details.items()) line[prefix + name] = value;
}


}  // namespace

void validate(const TrainOptions& o) {
  auto require = [](bool ok, const std::string& key, const std::string& rule) {
    if (!ok) throw ConfigError("train." + key + ": must be " + rule);
  };
  // NaN fails every comparison below, so "must be >= 0" also refuses .nan.
  require(o.max_steps() >= 1, "max_steps", ">= 1");
  require(o.epochs() >= 0, "epochs", ">= 0");
  require(o.batch_size() >= 1, "batch_size", ">= 1");
  require(o.grad_accumulation() >= 1, "grad_accumulation", ">= 1");
  require(o.clip_grad_norm() >= 0 && std::isfinite(o.clip_grad_norm()), "clip_grad_norm",
          "finite and >= 0");
  require(o.val_fraction() >= 0 && o.val_fraction() < 1, "val_fraction", "in [0, 1)");
  require(o.log_every() >= 1, "log_every", ">= 1");
  require(o.eval_every() >= 0, "eval_every", ">= 0");
  require(o.checkpoint_every() >= 0, "checkpoint_every", ">= 0");
  require(o.checkpoint_every_minutes() >= 0, "checkpoint_every_minutes", ">= 0");
  require(o.keep_last() >= 1, "keep_last", ">= 1");
  require(o.max_nonfinite_steps() >= 1, "max_nonfinite_steps", ">= 1");
  validate(o.optimizer(), "train.optimizer");
  validate(o.schedule(), "train.schedule");
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
      "train.keep_last",        "train.monitor.patience", "parallel.timeout",
      "parallel.expert",        "parallel.bucket_mb"};
  return keys;
}

Trainer::Trainer(RunParts parts, const std::string& run_dir)
    : Trainer(std::move(parts), run_dir, Resumed{}) {
  if (!writes()) return;
  create_run_directory(run_dir, YAML::Dump(config_) + "\n");
  // A language model's tokenizer lives with its run: generation and exports read it there.
  if (data_.tokenizer) data_.tokenizer->save((fs::path(run_dir) / kTokenizerDir).string());
}

Trainer::Trainer(RunParts parts, const std::string& run_dir, Resumed)
    : config_(config::clone(parts.config)),
      run_dir_(run_dir),
      options_(std::move(parts.options)),
      model_(std::move(parts.model)),
      task_(std::move(parts.task)),
      data_(std::move(parts.data)),
      collective_(std::move(parts.collective)) {
  TORCH_INTERNAL_ASSERT(model_ && task_ && data_.train, "Trainer: incomplete RunParts");
  validate(options_);
  precision_ = parse_precision(options_.precision(), "train.precision");
  check_precision_supported(precision_, "train.precision");
  monitor_ = options_.monitor();
  const std::string& metric = monitor_.metric();
  if (metric.rfind("val_", 0) != 0) {
    throw ConfigError("train.monitor.metric: '" + metric + "' is not an evaluation metric; " +
                      "write val_ + one of the task's metrics");
  }
  try {
    const MetricInfo info = task_->metric(metric.substr(4));
    if (monitor_.mode() == "auto") monitor_.mode(info.higher_is_better ? "max" : "min");
  } catch (const ConfigError& e) {
    throw ConfigError(std::string("train.monitor.metric: ") + e.what());
  }
  early_stopping_ = EarlyStopping(monitor_);
  const int64_t train_size = data_.train->size();
  if (train_size < options_.batch_size()) {
    throw ConfigError("train.batch_size (" + std::to_string(options_.batch_size()) +
                      ") exceeds the " + std::to_string(train_size) + " training samples");
  }
  task_->check_batch(data_.train->range(0, 1));
  if (options_.epochs() > 0) {
    const int64_t micro_batches_per_epoch = train_size / options_.batch_size();
    total_steps_ = (options_.epochs() * micro_batches_per_epoch + options_.grad_accumulation() - 1) /
                   options_.grad_accumulation();
  } else {
    total_steps_ = options_.max_steps();
  }
  if (collective_ && collective_->world_size() > 1) {
    if (options_.batch_size() < collective_->world_size()) {
      throw ConfigError("train.batch_size (" + std::to_string(options_.batch_size()) +
                        ") must be at least the number of processes (" +
                        std::to_string(collective_->world_size()) + "): each computes a shard of every batch");
    }
    if (parts.expert_parallel) expert_shards_ = ExpertShards(*collective_, *model_);
    sync_ = std::make_unique<DataParallelSync>(*collective_, *model_, options_.batch_size(), &expert_shards_,
                                               parts.gradient_bucket_bytes);
  } else {
    collective_ = nullptr;  // one process: nothing to exchange
  }
  optimizer_ = build_optimizer(*model_, options_.optimizer());
  epoch_order_ = data::epoch_permutation(options_.seed(), epoch_, train_size);
}

Trainer::~Trainer() = default;

void Trainer::set_console(ConsoleMode mode, std::ostream& out) {
  console_mode_ = mode;
  console_ = &out;
}

bool Trainer::epoch_exhausted() const {
  return cursor_ + options_.batch_size() > data_.train->size();
}

void Trainer::gather_sums() {
  if (!collective_) return;
  const nlohmann::json mine{{"metrics", interval_.metrics->state()},
                            {"interval", tally_states(interval_tally_)},
                            {"epoch", tally_states(epoch_tally_)}};
  const std::vector<std::string> texts = collective_->all_gather_text(mine.dump());
  if (collective_->rank() != 0) {
    interval_.metrics = task_->accumulator();
    for (auto& tally : interval_tally_) tally.clear();
    for (auto& tally : epoch_tally_) tally.clear();
    return;
  }
  nlohmann::json metrics = nullptr, interval = nlohmann::json::array(), epoch = nlohmann::json::array();
  for (const auto& text : texts) {
    const nlohmann::json theirs = nlohmann::json::parse(text);
    metrics = metrics.is_null() ? theirs["metrics"] : interval_.metrics->add_states(metrics, theirs["metrics"]);
    interval = add_json_sums(interval, theirs["interval"]);
    epoch = add_json_sums(epoch, theirs["epoch"]);
  }
  interval_.metrics->load_state(metrics);
  load_tally_states(interval_tally_, interval);
  load_tally_states(epoch_tally_, epoch);
}

void Trainer::write_epoch_line() {
  gather_sums();
  bool any = false;
  for (const auto& tally : epoch_tally_) any = any || !tally.empty();
  if (!any) return;
  append_metrics(nlohmann::json{{"kind", "epoch"},
                                {"epoch", epoch_},
                                {"step", step_},
                                {"moe_layers", tally_json(epoch_tally_)}});
  for (auto& tally : epoch_tally_) tally.clear();
}

// The samples at (epoch, cursor) of the run's order, augmented; the order of an epoch depends
// only on (seed, epoch), so resume regenerates it.
data::Batch Trainer::next_batch() {
  if (epoch_exhausted()) {  // drop the last partial batch, start the next epoch
    write_epoch_line();
    ++epoch_;
    cursor_ = 0;
    epoch_order_ = data::epoch_permutation(options_.seed(), epoch_, data_.train->size());
  }
  at::Tensor rows = epoch_order_.narrow(0, cursor_, options_.batch_size());
  cursor_ += options_.batch_size();
  if (collective_) {  // this rank's shard of the global batch
    const Shard shard = shard_of(options_.batch_size(), collective_->rank(), collective_->world_size());
    rows = rows.narrow(0, shard.begin, shard.size());
  }
  data::Batch batch = data_.train->rows(rows);
  return data_.augment ? data_.augment(std::move(batch)) : batch;
}

double Trainer::seconds_trained() const {
  return seconds_before_ + std::chrono::duration<double>(Clock::now() - process_start_).count();
}

void Trainer::append_metrics(const nlohmann::json& line) {
  if (writes()) train::append_metrics(run_dir_, line);
}

TrainSummary Trainer::run(int64_t stop_at_step) {
  const int64_t last = stop_at_step > 0 ? std::min(stop_at_step, total_steps_) : total_steps_;
  const double max_seconds = parse_duration(options_.max_time(), "train.max_time");
  const double checkpoint_seconds = options_.checkpoint_every_minutes() * 60.0;
  const int64_t eval_batch = eval_batch_size(options_.batch_size());
  TrainSummary summary;
  summary.total_steps = total_steps_;
  model_->train();
  double running_loss = std::nan("");
  if (!interval_.metrics) interval_.metrics = task_->accumulator();
  process_start_ = Clock::now();
  const int64_t first_step = step_;
  auto interval_start = Clock::now(), last_checkpoint_time = Clock::now(), last_draw = Clock::now();
  double interval_sync_seconds = sync_ ? sync_->seconds() : 0.0;

  auto say = [&](const std::string& line) {
    if (console_mode_ == ConsoleMode::kSilent) return;
    if (console_mode_ == ConsoleMode::kProgressBar) *console_ << "\r\033[K";
    *console_ << line << std::endl;
  };
  if (first_step == 0 && !data_.notes.empty()) {
    for (const auto& note : data_.notes) say("data: " + note);
    append_metrics(nlohmann::json{{"kind", "data"}, {"notes", data_.notes}});
  }
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
  // Decisions taken by one process's clock or signals are taken by all ranks together, at the
  // same step: a signal, the time limit or a timed checkpoint seen by any rank holds for all.
  bool checkpoint_due = false;
  const auto agreed_stop = [&](bool signal, bool out_of_time) {
    checkpoint_due = checkpoint_seconds > 0 &&
                     std::chrono::duration<double>(Clock::now() - last_checkpoint_time).count() >=
                         checkpoint_seconds;
    if (collective_) {
      std::vector<at::Tensor> flags{at::tensor(
          {signal ? 1.0 : 0.0, out_of_time ? 1.0 : 0.0, checkpoint_due ? 1.0 : 0.0}, at::kDouble)};
      collective_->all_reduce_sum(flags);
      signal = flags[0][0].item<double>() > 0;
      out_of_time = flags[0][1].item<double>() > 0;
      checkpoint_due = flags[0][2].item<double>() > 0;
    }
    return out_of_time ? StopReason::kTimeLimit : signal ? StopReason::kSignal : StopReason::kCompleted;
  };
  const auto seconds_since = [](Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
  };
  while (step_ < last && stop == StopReason::kCompleted) {
    const auto iteration_start = Clock::now();
    StepTimes step_times;
    double evaluation_seconds = 0, checkpoint_seconds_now = 0;
    const double lr = learning_rate_at(step_, total_steps_, options_.optimizer().lr(),
                                       options_.schedule());
    optimizer_.set_learning_rate(step_, total_steps_, options_.schedule());
    std::vector<nn::MoEOutput> routing;
    std::vector<models::ModelAuxTerm> last_model_terms;
    StepOptions step_options;
    step_options.grad_accumulation = options_.grad_accumulation();
    step_options.clip_grad_norm = options_.clip_grad_norm();
    step_options.precision = precision_;
    step_options.routing_bias_scale = lr / options_.optimizer().lr();
    step_options.times = profile_ ? &step_times : nullptr;
    step_options.sync = sync_.get();
    step_options.loss_scale = sync_ ? sync_->loss_scale() : 1.0;
    const StepResult step = train_step(
        *model_, *optimizer_.optimizer, *task_, [this] { return next_batch(); }, step_options,
        [&](const MicroBatch& micro) {
          interval_tally_.resize(micro.output.moe_layers.size());
          epoch_tally_.resize(micro.output.moe_layers.size());
          for (size_t l = 0; l < micro.output.moe_layers.size(); ++l) {
            interval_tally_[l].add(micro.output.moe_layers[l].stats, micro.sample_loss);
            epoch_tally_[l].add(micro.output.moe_layers[l].stats, micro.sample_loss);
          }
          interval_.metrics->add(micro.output, micro.batch, micro.sample_loss);
          const double loss_value = micro.loss.item<double>();
          if (std::isfinite(loss_value)) {
            running_loss =
                std::isnan(running_loss) ? loss_value : 0.95 * running_loss + 0.05 * loss_value;
          }
          routing = micro.output.moe_layers;
          last_model_terms = micro.output.model_terms;
        });
    interval_.loss += step.loss_sum;
    interval_.task_loss += step.task_loss_sum;
    interval_.aux_loss += step.aux_loss_sum;
    if (!step.finite) {
      ++nonfinite_total_;
      append_metrics(nlohmann::json{{"kind", "skip"},
                                    {"step", step_},
                                    {"nonfinite_in_a_row", ++nonfinite_in_a_row_}});
      if (nonfinite_in_a_row_ >= options_.max_nonfinite_steps()) {
        save_checkpoint();
        throw TrainingError(
            "train: " + std::to_string(nonfinite_in_a_row_) +
            " steps in a row had a non-finite loss or gradient (at step " +
            std::to_string(step_) + "); the state is saved in " + last_checkpoint_ +
            ". HINT: lower train.optimizer.lr, set train.clip_grad_norm, or check the data");
      }
      if (agreed_stop(stop_requested(), false) == StopReason::kSignal) {
        stop = StopReason::kSignal;
        save_checkpoint();
        break;
      }
      continue;
    }
    nonfinite_in_a_row_ = 0;
    ++step_;
    ++interval_.steps;
    // Before any checkpoint of this step, so a resumed run does not write the line again.
    if (epoch_exhausted()) write_epoch_line();

    if (step_ % options_.log_every() == 0 || step_ == last) {
      gather_sums();
      const double seconds = std::chrono::duration<double>(Clock::now() - interval_start).count();
      const double micro_batches = static_cast<double>(interval_.steps * options_.grad_accumulation());
      summary.final_train_loss = interval_.loss / micro_batches;
      const Metrics train_metrics = interval_.metrics->result();
      const double samples_per_s =
          static_cast<double>(train_metrics.samples) / std::max(seconds, 1e-9);
      nlohmann::json line{{"kind", "train"},
                          {"step", step_},
                          {"epoch", epoch_},
                          {"loss", summary.final_train_loss},
                          {"task_loss", interval_.task_loss / micro_batches},
                          {"aux_loss", interval_.aux_loss / micro_batches},
                          {"lr", lr},
                          {"skipped_steps", nonfinite_total_},
                          {"samples_per_s", samples_per_s},
                          {"moe_layers", routing_json(routing, interval_tally_)}};
      if (collective_) {
        // The last micro-batch's routing, averaged over the ranks' shards.
        nlohmann::json layers = routing_json(routing, {}), sum = nullptr;
        for (const auto& text : collective_->all_gather_text(layers.dump())) {
          sum = add_json_sums(sum, nlohmann::json::parse(text));
        }
        for (size_t l = 0; l < layers.size(); ++l) {
          for (auto& [name, value] : sum[l].items()) {
            line["moe_layers"][l][name] = scale_json(value, 1.0 / collective_->world_size());
          }
        }
        line["processes"] = collective_->world_size();
        line["sync_ms_per_step"] = 1e3 * (sync_->seconds() - interval_sync_seconds) / interval_.steps;
        line["sync_share"] = (sync_->seconds() - interval_sync_seconds) / std::max(seconds, 1e-9);
        interval_sync_seconds = sync_->seconds();
      }
      std::string shown;  // the task's metrics besides the loss, for the console
      for (const auto& [name, value] : train_metrics.values) {
        if (name == "loss") continue;
        line[name] = value;
        shown += fmt::format("  {} {:.4f}", name, value);
      }
      // Sequence tasks count tokens too (a language model's throughput is tokens/s).
      double tokens_per_s = 0;
      if (train_metrics.details.contains("tokens")) {
        tokens_per_s = train_metrics.details["tokens"].get<double>() / std::max(seconds, 1e-9);
        line["tokens_per_s"] = tokens_per_s;
      }
      for (const auto& term : last_model_terms) line["aux_terms"][term.name] = term.value.item<double>();
      append_metrics(line);
      for (auto& tally : interval_tally_) tally.clear();
      if (console_mode_ == ConsoleMode::kLines) {
        const std::string rate = tokens_per_s > 0 ? fmt::format("{:.0f} tokens/s", tokens_per_s)
                                                  : fmt::format("{:.0f} samples/s", samples_per_s);
        say(fmt::format("step {}/{}  loss {:.4f}{}  lr {:.3g}  {}  elapsed {}", step_,
                        total_steps_, summary.final_train_loss, shown, lr, rate,
                        format_clock(seconds_trained())));
      }
      interval_ = LogInterval{};
      interval_.metrics = task_->accumulator();
      interval_start = Clock::now();
    }

    const bool evaluate_now = data::size_of(data_.val) > 0 &&
                              ((options_.eval_every() > 0 && step_ % options_.eval_every() == 0) ||
                               step_ == total_steps_ ||
                               (options_.eval_each_epoch() && epoch_exhausted()));
    if (evaluate_now) {
      const auto evaluation_start = Clock::now();
      const Evaluation result = evaluate(*model_, *data_.val, *task_, eval_batch, precision_, 0, ranks());
      model_->train();
      summary.evaluated = true;
      summary.val = result.metrics;
      const double monitored = result.metric(monitor_.metric().substr(4));
      const bool improved = early_stopping_.update(monitored, step_);
      nlohmann::json line{{"kind", "eval"},
                          {"step", step_},
                          {"epoch", epoch_},
                          {"best_step", early_stopping_.best_step()}};
      add_metrics(line, "val_", result.metrics);
      append_metrics(line);
      say(fmt::format("eval step {}: {}{}", step_, format_metrics(*task_, result.metrics, "val "),
                      improved ? " (best)" : ""));
      evaluation_seconds = seconds_since(evaluation_start);
      if (improved && monitor_.keep_best()) {
        const auto checkpoint_start = Clock::now();
        save_checkpoint();
        checkpoint_seconds_now += seconds_since(checkpoint_start);
      }
    }

    stop = agreed_stop(stop_requested(), max_seconds > 0 && seconds_trained() >= max_seconds);
    if (early_stopping_.should_stop()) stop = StopReason::kEarlyStopping;  // alike on every rank
    const bool checkpoint_now =
        (options_.checkpoint_every() > 0 && step_ % options_.checkpoint_every() == 0) ||
        step_ == last || stop != StopReason::kCompleted || checkpoint_due;
    if (checkpoint_now) {
      const auto checkpoint_start = Clock::now();
      save_checkpoint();
      last_checkpoint_time = Clock::now();
      checkpoint_seconds_now += seconds_since(checkpoint_start);
    }
    draw_bar(step_ == last);
    if (profile_ && step_ > profile_->skip_steps) {
      ++profile_->steps;
      profile_->step += step_times;
      profile_->evaluation += evaluation_seconds;
      profile_->checkpoint += checkpoint_seconds_now;
      profile_->bookkeeping += seconds_since(iteration_start) - step_times.total() -
                               evaluation_seconds - checkpoint_seconds_now;
    }
    if (stop != StopReason::kCompleted) break;
  }
  if (console_mode_ == ConsoleMode::kProgressBar) *console_ << "\n";
  const bool finished = step_ == total_steps_ || stop == StopReason::kEarlyStopping;
  // A finished run whose final evaluation line was never written (the process ended between the
  // last checkpoint and that line) writes it on resume.
  const auto tested_already = [&] {
    for (const auto& line : read_metrics(run_dir_)) {
      if (line.value("kind", "") == "test" && line.value("step", int64_t{-1}) == step_) return true;
    }
    return false;
  };
  if (finished && (step_ > first_step || !tested_already())) {
    const bool has_test = data::size_of(data_.test) > 0;
    const std::shared_ptr<data::DataSource>& set = has_test ? data_.test : data_.val;
    if (data::size_of(set) > 0) {
      // The best evaluation's weights, read back from its checkpoint (kept by keep_best).
      int64_t weights_step = step_;
      if (monitor_.restore_best() && early_stopping_.has_best() &&
          early_stopping_.best_step() != step_) {
        weights_step = early_stopping_.best_step();
        load_weights(checkpoint_path(run_dir_, weights_step));
      }
      const Evaluation test = evaluate(*model_, *set, *task_, eval_batch, precision_,
                                       static_cast<int64_t>(data_.class_names.size()), ranks());
      model_->train();
      nlohmann::json layers = nlohmann::json::array();
      for (size_t l = 0; l < test.class_expert.size(); ++l) {
        const at::Tensor& counts = test.class_expert[l];
        layers.push_back({{"class_expert", count_rows(counts)},
                          {"mutual_information", mutual_information(counts)},
                          {"expert_loss", to_json_numbers(test.expert_loss[l].mean_loss())},
                          {"samples", to_json_numbers(test.expert_loss[l].counts())}});
      }
      nlohmann::json line{{"kind", "test"},
                          {"step", step_},
                          {"split", has_test ? "test" : "val"},
                          {"weights_step", weights_step},
                          {"samples", test.samples()},
                          {"class_names", data_.class_names},
                          {"moe_layers", layers}};
      add_metrics(line, "", test.metrics);
      append_metrics(line);
      say(fmt::format("{} split{}: {}", has_test ? "test" : "val",
                      weights_step != step_ ? fmt::format(" (best weights, step {})", weights_step) : "",
                      format_metrics(*task_, test.metrics, "")));
      summary.tested = true;
      summary.test = test.metrics;
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
  const fs::path directory = checkpoint_path(run_dir_, step_);
  gather_sums();  // the checkpoint holds every rank's sums
  last_checkpoint_ = directory.string();
  // Expert parallel: the checkpoint holds whole experts and their optimiser state.
  std::map<std::string, at::Tensor> whole_experts;
  if (!expert_shards_.empty()) {
    whole_experts = expert_shards_.whole_parameters();
    expert_shards_.convert_optimizer_state(*optimizer_.optimizer, /*whole=*/true);
  }
  struct ShardAgain {
    const ExpertShards& shards;
    torch::optim::Optimizer& optimizer;
    ~ShardAgain() {
      if (!shards.empty()) shards.convert_optimizer_state(optimizer, /*whole=*/false);
    }
  } shard_again{expert_shards_, *optimizer_.optimizer};
  if (!writes() || fs::exists(directory)) return;  // rank 0 writes; or this step is saved already
  FileWriters files{
      {"model.safetensors", [&](const std::string& p) { save_module_weights(*model_, p, {}, whole_experts); }},
      {"optimizer.pt",
       [&](const std::string& p) {
         // To memory first: LibTorch's file writer throws from its destructor on a full disk.
         torch::serialize::OutputArchive archive;
         optimizer_.optimizer->save(archive);
         std::ostringstream bytes;
         archive.save_to(bytes);
         io::write_file(p, bytes.str());
       }},
      {"rng.safetensors",
       [&](const std::string& p) {
         io::save_safetensors(p, {{"cpu", at::detail::getDefaultCPUGenerator().get_state()}});
       }},
      {"config.yaml", [&](const std::string& p) { io::write_file(p, YAML::Dump(config_) + "\n"); }},
  };
  write_checkpoint(directory.string(), files,
                   {{"step", step_},
                    {"epoch", epoch_},
                    {"cursor", cursor_},
                    {"nonfinite_in_a_row", nonfinite_in_a_row_},
                    {"nonfinite_total", nonfinite_total_},
                    {"train_seconds", seconds_trained()},
                    {"early_stopping", early_stopping_.state()},
                    {"epoch_tally", tally_states(epoch_tally_)},
                    {"log_interval",
                     nlohmann::json{{"loss", interval_.loss},
                                    {"task_loss", interval_.task_loss},
                                    {"aux_loss", interval_.aux_loss},
                                    {"steps", interval_.steps},
                                    {"metrics", interval_.metrics ? interval_.metrics->state()
                                                                  : nlohmann::json(nullptr)},
                                    {"tally", tally_states(interval_tally_)}}}});
  const bool keep_best = monitor_.keep_best() && early_stopping_.has_best();
  // Older checkpoints go only once the new one reads back whole.
  verify_checkpoint(directory.string());
  prune_checkpoints(run_dir_, options_.keep_last(),
                    keep_best ? checkpoint_name(early_stopping_.best_step()) : "");
}

void Trainer::load_weights(const std::string& checkpoint) {
  WeightLoading loading;
  if (!expert_shards_.empty()) {  // this rank's rows of the whole experts
    loading.transform = [this](const std::string& name, const at::Tensor& t) {
      return expert_shards_.holds_name(name) ? expert_shards_.slice(t) : t;
    };
  }
  load_module_weights(*model_, checkpoint + "/model.safetensors", loading);
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
  load_tally_states(epoch_tally_, meta.value("epoch_tally", nlohmann::json::array()));
  // Checkpoints before the log interval was saved resume with an empty one.
  interval_ = LogInterval{};
  interval_.metrics = task_->accumulator();
  interval_tally_.clear();
  if (meta.contains("log_interval")) {
    const auto& interval = meta["log_interval"];
    interval_.loss = interval.at("loss").get<double>();
    interval_.task_loss = interval.at("task_loss").get<double>();
    interval_.aux_loss = interval.at("aux_loss").get<double>();
    interval_.steps = interval.at("steps").get<int64_t>();
    if (!interval.at("metrics").is_null()) interval_.metrics->load_state(interval["metrics"]);
    load_tally_states(interval_tally_, interval.at("tally"));
  }
  if (!writes()) {  // the saved sums are every rank's: rank 0 carries them on
    interval_.metrics = task_->accumulator();
    for (auto& tally : interval_tally_) tally.clear();
    for (auto& tally : epoch_tally_) tally.clear();
  }
  epoch_order_ = data::epoch_permutation(options_.seed(), epoch_, data_.train->size());
  load_weights(directory);
  torch::serialize::InputArchive archive;
  archive.load_from(directory + "/optimizer.pt");
  optimizer_.optimizer->load(archive);
  if (!expert_shards_.empty()) expert_shards_.convert_optimizer_state(*optimizer_.optimizer, /*whole=*/false);
  at::Tensor rng = io::load_safetensors(directory + "/rng.safetensors").tensors.at("cpu");
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  generator.set_state(rng);
  last_checkpoint_ = directory;
}

std::unique_ptr<Trainer> Trainer::resume(RunParts parts, const std::string& run_dir,
                                         const std::string& checkpoint) {
  const bool config_changed = YAML::Dump(parts.config) !=
                              YAML::Dump(config::load_file(checkpoint + "/" + kRunConfigFile));
  std::unique_ptr<Trainer> trainer(new Trainer(std::move(parts), run_dir, Resumed{}));
  trainer->load_checkpoint(checkpoint);
  if (!trainer->writes()) return trainer;
  if (config_changed) {
    io::write_file_atomic((fs::path(run_dir) / kRunConfigFile).string(),
                          YAML::Dump(trainer->config_) + "\n");
  }
  // Metric lines written after the checkpoint belong to a future that is now rewritten.
  truncate_metrics(run_dir, trainer->step_);
  return trainer;
}

}  // namespace moelab::train
