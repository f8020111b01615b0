#include "moelab/train/federated.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <numeric>

#include "moelab/config/config.h"
#include "moelab/config/fields.h"
#include "moelab/io/file.h"
#include "moelab/io/safetensors.h"
#include "moelab/nn/moe_layer.h"
#include "moelab/train/checkpoint.h"
#include "moelab/train/evaluation.h"
#include "moelab/train/run_directory.h"
#include "moelab/train/step.h"
#include "moelab/util/errors.h"

namespace fs = std::filesystem;

namespace moelab::train {

template <typename V>
void visit(V& v, FederatedOptions& o) {
  v.field("clients", o.clients());
  v.field("participation", o.participation());
  v.field("rounds", o.rounds());
  v.field("local_epochs", o.local_epochs());
  v.field("local_steps", o.local_steps());
  v.field("aggregation", o.aggregation());
  v.field("mu", o.mu());
  v.field("partition", o.partition());
  v.field("alpha", o.alpha());
  v.field("classes_per_client", o.classes_per_client());
  v.field("dp_clip", o.dp_clip());
  v.field("dp_noise_multiplier", o.dp_noise_multiplier());
}
MOELAB_DEFINE_OPTIONS_YAML(FederatedOptions)

void validate(const FederatedOptions& o, const std::string& where) {
  auto require = [&](bool ok, const std::string& key, const std::string& rule) {
    if (!ok) throw ConfigError(where + "." + key + ": must be " + rule);
  };
  require(o.clients() >= 0, "clients", ">= 0");
  require(o.participation() > 0 && o.participation() <= 1, "participation", "in (0, 1]");
  require(o.rounds() >= 1, "rounds", ">= 1");
  require(o.local_epochs() >= 1, "local_epochs", ">= 1");
  require(o.local_steps() >= 0, "local_steps", ">= 0");
  if (o.aggregation() != "fedavg" && o.aggregation() != "fedprox" && o.aggregation() != "expert_aware") {
    throw ConfigError(where + ".aggregation: unknown '" + o.aggregation() +
                      "'; expected fedavg, fedprox or expert_aware");
  }
  require(o.mu() >= 0 && std::isfinite(o.mu()), "mu", "finite and >= 0");
  if (o.partition() != "iid" && o.partition() != "dirichlet" && o.partition() != "by_class") {
    throw ConfigError(where + ".partition: unknown '" + o.partition() +
                      "'; expected iid, dirichlet or by_class");
  }
  require(o.alpha() > 0 && std::isfinite(o.alpha()), "alpha", "finite and > 0");
  require(o.classes_per_client() >= 1, "classes_per_client", ">= 1");
  require(o.dp_clip() >= 0 && std::isfinite(o.dp_clip()), "dp_clip", "finite and >= 0");
  require(o.dp_noise_multiplier() >= 0 && std::isfinite(o.dp_noise_multiplier()),
          "dp_noise_multiplier", "finite and >= 0");
  if (o.dp_noise_multiplier() > 0 && o.dp_clip() == 0) {
    throw ConfigError(where + ".dp_noise_multiplier: needs dp_clip > 0 (the noise is in its units)");
  }
}

namespace {

at::Generator generator_for(uint64_t seed, uint64_t stream) {
  return at::detail::createCPUGenerator(seed * 0x9E3779B97F4A7C15ULL + stream);
}

std::vector<int64_t> to_vector(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

bool floating(const at::Tensor& t) { return at::isFloatingType(t.scalar_type()); }

}  // namespace

std::vector<std::vector<int64_t>> partition_samples(const FederatedOptions& o, const at::Tensor& labels,
                                                    int64_t num_samples, uint64_t seed) {
  const int64_t clients = o.clients();
  TORCH_CHECK(clients >= 1, "partition_samples: clients must be >= 1");
  std::vector<std::vector<int64_t>> parts(static_cast<size_t>(clients));
  at::Generator gen = generator_for(seed, 1);
  if (o.partition() == "iid") {
    if (clients == 1) {  // the data set's own order: one client is centralised training
      parts[0].resize(static_cast<size_t>(num_samples));
      std::iota(parts[0].begin(), parts[0].end(), 0);
      return parts;
    }
    const std::vector<int64_t> order = to_vector(at::randperm(num_samples, gen, at::kLong));
    for (int64_t c = 0; c < clients; ++c) {
      const int64_t begin = num_samples * c / clients, end = num_samples * (c + 1) / clients;
      parts[c].assign(order.begin() + begin, order.begin() + end);
      std::sort(parts[c].begin(), parts[c].end());
    }
    return parts;
  }
  if (!labels.defined() || labels.numel() != num_samples || at::isFloatingType(labels.scalar_type())) {
    throw ConfigError("federated.partition: " + o.partition() +
                      " splits by class and needs a data set with class labels; use iid");
  }
  const std::vector<int64_t> label = to_vector(labels);
  const int64_t num_classes = *std::max_element(label.begin(), label.end()) + 1;
  std::vector<std::vector<int64_t>> by_class(static_cast<size_t>(num_classes));
  for (int64_t i = 0; i < num_samples; ++i) by_class[label[i]].push_back(i);
  for (int64_t k = 0; k < num_classes; ++k) {
    std::vector<int64_t>& members = by_class[k];
    if (members.empty()) continue;
    const std::vector<int64_t> shuffle = to_vector(at::randperm(static_cast<int64_t>(members.size()), gen, at::kLong));
    std::vector<int64_t> shuffled;
    for (int64_t i : shuffle) shuffled.push_back(members[i]);
    // Each client's share of the class: Dirichlet proportions, or equal among its holders.
    std::vector<double> share(static_cast<size_t>(clients), 0.0);
    if (o.partition() == "dirichlet") {
      const at::Tensor gamma = at::_standard_gamma(at::full({clients}, o.alpha(), at::kDouble), gen);
      const at::Tensor p = gamma / gamma.sum();
      for (int64_t c = 0; c < clients; ++c) share[c] = p[c].item<double>();
    } else {
      for (int64_t c = 0; c < clients; ++c) {
        for (int64_t j = 0; j < o.classes_per_client(); ++j) {
          if ((c * o.classes_per_client() + j) % num_classes == k) share[c] = 1.0;
        }
      }
      const double total = std::accumulate(share.begin(), share.end(), 0.0);
      if (total == 0) continue;  // no client holds this class
      for (double& s : share) s /= total;
    }
    // Cut points from the cumulative shares: every sample of the class goes to one client.
    const int64_t n = static_cast<int64_t>(shuffled.size());
    double cumulative = 0;
    int64_t begin = 0;
    for (int64_t c = 0; c < clients; ++c) {
      cumulative += share[c];
      const int64_t end = c == clients - 1 ? n : std::min<int64_t>(n, std::llround(cumulative * n));
      parts[c].insert(parts[c].end(), shuffled.begin() + begin, shuffled.begin() + std::max(begin, end));
      begin = std::max(begin, end);
    }
  }
  for (auto& part : parts) std::sort(part.begin(), part.end());
  return parts;
}

std::vector<int64_t> sample_clients(const FederatedOptions& o, int64_t round, uint64_t seed) {
  const int64_t m = std::max<int64_t>(1, std::llround(o.participation() * o.clients()));
  if (m >= o.clients()) {
    std::vector<int64_t> all(static_cast<size_t>(o.clients()));
    std::iota(all.begin(), all.end(), 0);
    return all;
  }
  at::Generator gen = generator_for(seed, 1000 + static_cast<uint64_t>(round));
  std::vector<int64_t> chosen = to_vector(at::randperm(o.clients(), gen, at::kLong).slice(0, 0, m));
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

AggregationSums aggregation_sums(const std::map<std::string, at::Tensor>& global,
                                 const std::vector<ClientUpdate>& clients,
                                 const std::map<std::string, std::vector<std::string>>& experts) {
  AggregationSums sums;
  for (const auto& [name, value] : global) {
    if (!floating(value)) continue;
    sums.weighted[name] = at::zeros(value.sizes(), value.options().dtype(at::kDouble));
  }
  for (const auto& [layer, names] : experts) {
    sums.tokens[layer] = at::zeros({global.at(names.front()).size(0)}, at::kDouble);
    for (const auto& name : names) {
      sums.token_weighted[name] = at::zeros(global.at(name).sizes(), at::kDouble);
    }
  }
  for (const auto& c : clients) {
    sums.samples += c.samples;
    for (auto& [name, sum] : sums.weighted) sum += c.weights.at(name).to(at::kDouble) * c.samples;
    for (const auto& [layer, names] : experts) {
      const auto found = c.expert_tokens.find(layer);
      TORCH_CHECK(found != c.expert_tokens.end(), "aggregate: a client has no token counts for ", layer);
      const at::Tensor tokens = found->second.to(at::kDouble);  // (E)
      sums.tokens[layer] += tokens;
      for (const auto& name : names) {
        std::vector<int64_t> shape(static_cast<size_t>(global.at(name).dim()), 1);
        shape[0] = tokens.size(0);
        sums.token_weighted[name] += c.weights.at(name).to(at::kDouble) * tokens.view(shape);
      }
    }
  }
  return sums;
}

std::map<std::string, at::Tensor> finish_aggregation(const std::string& aggregation,
                                                     const std::map<std::string, at::Tensor>& global,
                                                     const AggregationSums& sums,
                                                     const std::map<std::string, std::vector<std::string>>& experts) {
  TORCH_CHECK(sums.samples > 0, "aggregate: the clients hold no samples");
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, value] : global) {
    // Non-floating tensors (counters, generator states) keep their global values.
    out[name] = floating(value) ? (sums.weighted.at(name) / sums.samples).to(value.scalar_type()) : value.clone();
  }
  if (aggregation != "expert_aware") return out;
  for (const auto& [layer, names] : experts) {
    const at::Tensor& total = sums.tokens.at(layer);  // (E)
    for (const auto& name : names) {
      const at::Tensor& value = global.at(name);
      std::vector<int64_t> shape(static_cast<size_t>(value.dim()), 1);
      shape[0] = value.size(0);
      // An expert no client routed a token to keeps its global weights.
      out[name] = at::where(total.gt(0).view(shape), sums.token_weighted.at(name) / total.clamp_min(1).view(shape),
                            value.to(at::kDouble))
                      .to(value.scalar_type());
    }
  }
  return out;
}

std::map<std::string, at::Tensor> aggregate(const std::string& aggregation,
                                            const std::map<std::string, at::Tensor>& global,
                                            const std::vector<ClientUpdate>& clients,
                                            const std::map<std::string, std::vector<std::string>>& experts) {
  TORCH_CHECK(!clients.empty(), "aggregate: no clients");
  return finish_aggregation(aggregation, global, aggregation_sums(global, clients, experts), experts);
}

namespace {

std::map<std::string, at::Tensor> weights_of(const torch::nn::Module& model) {
  std::map<std::string, at::Tensor> out;
  for (const auto& item : model.named_parameters()) out[item.key()] = item.value().detach().clone();
  for (const auto& item : model.named_buffers()) out[item.key()] = item.value().detach().clone();
  return out;
}

void load_weights(torch::nn::Module& model, const std::map<std::string, at::Tensor>& weights) {
  torch::NoGradGuard no_grad;
  for (auto& item : model.named_parameters()) item.value().copy_(weights.at(item.key()));
  for (auto& item : model.named_buffers()) item.value().copy_(weights.at(item.key()));
}

// FedProx: the proximal term's gradient mu (w - w_global), added after the backward pass.
class ProximalTerm : public GradientSync {
 public:
  ProximalTerm(double mu, const std::map<std::string, at::Tensor>& global, torch::nn::Module& model)
      : mu_(mu) {
    for (auto& item : model.named_parameters()) anchors_.emplace_back(item.value(), global.at(item.key()));
  }
  void synchronise(torch::nn::Module&, StepResult&) override {
    torch::NoGradGuard no_grad;
    for (auto& [param, anchor] : anchors_) {
      if (param.grad().defined()) param.mutable_grad().add_(param - anchor, mu_);
    }
  }
  void clip_gradients(torch::nn::Module& model, double max_norm) override {
    torch::nn::utils::clip_grad_norm_(model.parameters(), max_norm);
  }

 private:
  double mu_;
  std::vector<std::pair<at::Tensor, at::Tensor>> anchors_;
};

}  // namespace

FederatedTrainer::FederatedTrainer(RunParts parts, FederatedOptions options, const std::string& run_dir,
                                   Resumed)
    : config_(config::clone(parts.config)),
      run_dir_(run_dir),
      train_(std::move(parts.options)),
      options_(std::move(options)),
      model_(std::move(parts.model)),
      task_(std::move(parts.task)),
      data_(std::move(parts.data)),
      collective_(parts.collective && parts.collective->world_size() > 1 ? std::move(parts.collective) : nullptr) {
  validate(train_);
  validate(options_, "federated");
  if (options_.clients() < 1) throw ConfigError("federated.clients: must be >= 1 for a federated run");
  precision_ = parse_precision(train_.precision(), "train.precision");
  const int64_t n = data_.train->size();
  at::Tensor labels;
  if (options_.partition() != "iid") {
    const data::Batch all = data_.train->range(0, n);
    if (all.has(data::kTargets)) labels = all.at(data::kTargets);
  }
  partition_ = partition_samples(options_, labels, n, train_.seed());
  for (int64_t c = 0; c < options_.clients(); ++c) {
    const int64_t size = static_cast<int64_t>(partition_[c].size());
    if (size == 0) continue;
    steps_per_round_ = std::max(steps_per_round_, client_steps(size));
  }
  if (steps_per_round_ == 0) throw ConfigError("federated: no client holds any training sample");
  for (const auto& item : model_->named_modules()) {
    auto* moe = dynamic_cast<nn::MoELayerImpl*>(item.value().get());
    if (!moe || !moe->experts) continue;
    const std::string prefix = item.key() + ".experts.";
    for (const auto& param : moe->experts->named_parameters()) {
      expert_parameters_[item.key()].push_back(prefix + param.key());
    }
    moe_layers_.push_back(item.key());
  }
}

FederatedTrainer::FederatedTrainer(RunParts parts, FederatedOptions options, const std::string& run_dir)
    : FederatedTrainer(std::move(parts), std::move(options), run_dir, Resumed{}) {
  if (!writes()) return;
  create_run_directory(run_dir, YAML::Dump(config_) + "\n");
  nlohmann::json sizes = nlohmann::json::array();
  for (const auto& part : partition_) sizes.push_back(part.size());
  append_metrics(run_dir_, {{"kind", "federated"},
                            {"clients", options_.clients()},
                            {"partition", options_.partition()},
                            {"client_samples", sizes},
                            {"aggregation", options_.aggregation()},
                            {"dp_clip", options_.dp_clip()},
                            {"dp_noise_multiplier", options_.dp_noise_multiplier()}});
}

FederatedTrainer::~FederatedTrainer() = default;

std::unique_ptr<FederatedTrainer> FederatedTrainer::resume(RunParts parts, FederatedOptions options,
                                                           const std::string& run_dir,
                                                           const std::string& checkpoint) {
  std::unique_ptr<FederatedTrainer> trainer(
      new FederatedTrainer(std::move(parts), std::move(options), run_dir, Resumed{}));
  const nlohmann::json meta = read_manifest(checkpoint)["metadata"];
  trainer->round_ = meta.at("round").get<int64_t>();
  trainer->seconds_before_ = meta.value("train_seconds", 0.0);
  load_module_weights(*trainer->model_, checkpoint + "/model.safetensors");
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  generator.set_state(io::load_safetensors(checkpoint + "/rng.safetensors").tensors.at("cpu"));
  if (trainer->writes()) truncate_metrics(run_dir, trainer->round_);
  return trainer;
}

int64_t FederatedTrainer::client_steps(int64_t samples) const {
  // Batches of min(batch_size, samples); local_epochs passes drop each pass's partial batch.
  const int64_t batch = std::min(train_.batch_size(), samples), micro = train_.grad_accumulation();
  return options_.local_steps() > 0 ? options_.local_steps()
                                    : (options_.local_epochs() * (samples / batch) + micro - 1) / micro;
}

ClientUpdate FederatedTrainer::train_client(int64_t client,
                                            const std::map<std::string, at::Tensor>& global,
                                            double& mean_loss) {
  load_weights(*model_, global);
  model_->train();

  const std::vector<int64_t>& samples = partition_[client];
  const int64_t size = static_cast<int64_t>(samples.size());
  const int64_t batch = std::min(train_.batch_size(), size);
  const int64_t micro = train_.grad_accumulation();
  const int64_t steps = client_steps(size);
  OptimizerSetup optimizer = build_optimizer(*model_, train_.optimizer());
  // The client's own order: epochs of its samples, seeded by (seed, client); client 0 of a
  // one-client run walks the data exactly as centralised training does.
  const uint64_t seed = train_.seed() + static_cast<uint64_t>(client) * 1000003ULL;
  const at::Tensor index = at::tensor(samples, at::kLong);
  int64_t epoch = round_ * options_.local_epochs(), cursor = 0;
  at::Tensor order = data::epoch_permutation(seed, epoch, size);
  auto next_batch = [&] {
    if (cursor + batch > size) {
      ++epoch;
      cursor = 0;
      order = data::epoch_permutation(seed, epoch, size);
    }
    const at::Tensor rows = index.index_select(0, order.narrow(0, cursor, batch));
    cursor += batch;
    data::Batch b = data_.train->rows(rows);
    return data_.augment ? data_.augment(std::move(b)) : b;
  };
  std::unique_ptr<ProximalTerm> proximal;
  if (options_.aggregation() == "fedprox") proximal = std::make_unique<ProximalTerm>(options_.mu(), global, *model_);
  ClientUpdate update;
  double loss_sum = 0;
  int64_t counted = 0;
  const int64_t total_steps = options_.rounds() * steps_per_round_;
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t step = round_ * steps_per_round_ + std::min(s, steps_per_round_ - 1);
    optimizer.set_learning_rate(step, total_steps, train_.schedule());
    StepOptions step_options;
    step_options.grad_accumulation = micro;
    step_options.clip_grad_norm = train_.clip_grad_norm();
    step_options.precision = precision_;
    step_options.routing_bias_scale =
        learning_rate_at(step, total_steps, train_.optimizer().lr(), train_.schedule()) / train_.optimizer().lr();
    step_options.sync = proximal.get();
    const StepResult result = train_step(
        *model_, *optimizer.optimizer, *task_, next_batch, step_options, [&](const MicroBatch& m) {
          // The model reports its MoE layers in forward order, which is their module order.
          for (size_t l = 0; l < moe_layers_.size() && l < m.output.moe_layers.size(); ++l) {
            const at::Tensor counts = m.output.moe_layers[l].stats.tokens_per_expert.to(at::kDouble);
            auto& tally = update.expert_tokens[moe_layers_[l]];
            tally = tally.defined() ? tally + counts : counts;
          }
        });
    if (result.finite) {
      loss_sum += result.loss_sum / static_cast<double>(micro);
      ++counted;
    }
  }
  mean_loss = counted > 0 ? loss_sum / static_cast<double>(counted) : std::nan("");
  update.weights = weights_of(*model_);
  update.samples = static_cast<double>(size);
  for (const auto& [layer, names] : expert_parameters_) {
    if (!update.expert_tokens.count(layer)) {
      update.expert_tokens[layer] = at::zeros({global.at(names.front()).size(0)}, at::kDouble);
    }
  }
  return update;
}

int64_t FederatedTrainer::run(int64_t stop_after_round) {
  const int64_t last = stop_after_round > 0 ? std::min(stop_after_round, options_.rounds()) : options_.rounds();
  const int64_t first = round_;
  auto say = [&](const std::string& line) {
    if (console_) *console_ << line << std::endl;
  };
  while (round_ < last) {
    const std::map<std::string, at::Tensor> global = weights_of(*model_);
    const std::vector<int64_t> chosen = sample_clients(options_, round_, train_.seed());
    std::vector<ClientUpdate> updates;
    nlohmann::json client_loss = nlohmann::json::object(), usage = nlohmann::json::object();
    int64_t participants = 0;  // sampled clients that hold data, over all processes
    // The default generator (dropout) as each client starts, whichever process trains it and after
    // whichever other clients: the round's state for the first sampled client (so one client is
    // centralised training), a seed of (seed, round, client) for the others; each round after
    // the first starts from a seed of (seed, round).
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    if (round_ > 0) generator.set_current_seed(train_.seed() * 1000003ULL + static_cast<uint64_t>(round_) * 7919ULL);
    const at::Tensor round_state = generator.get_state();
    for (int64_t client : chosen) {
      if (partition_[client].empty()) continue;
      ++participants;
      // Real clients as processes: client c trains in process c mod the process count.
      if (collective_ && client % collective_->world_size() != collective_->rank()) continue;
      if (client == chosen.front()) {
        generator.set_state(round_state);
      } else {
        generator.set_current_seed(train_.seed() * 1000003ULL + static_cast<uint64_t>(round_) * 7919ULL +
                                   static_cast<uint64_t>(client) + 1);
      }
      double loss = 0;
      updates.push_back(train_client(client, global, loss));
      client_loss[std::to_string(client)] = std::isfinite(loss) ? nlohmann::json(loss) : nlohmann::json(nullptr);
      nlohmann::json layers = nlohmann::json::array();
      for (const auto& layer : moe_layers_) {
        const at::Tensor& tokens = updates.back().expert_tokens.at(layer);
        const double total = tokens.sum().item<double>();
        const at::Tensor share = total > 0 ? tokens / total : tokens;
        layers.push_back(std::vector<double>(share.data_ptr<double>(), share.data_ptr<double>() + share.numel()));
      }
      usage[std::to_string(client)] = layers;
    }
    if (options_.dp_clip() > 0) {  // clip each update to dp_clip (L2 over every floating tensor)
      for (auto& update : updates) {
        double norm_sq = 0;
        for (const auto& [name, value] : global) {
          if (floating(value)) norm_sq += (update.weights.at(name).to(at::kDouble) - value.to(at::kDouble)).pow(2).sum().item<double>();
        }
        const double scale = std::min(1.0, options_.dp_clip() / std::max(std::sqrt(norm_sq), 1e-12));
        for (const auto& [name, value] : global) {
          if (floating(value)) update.weights[name] = value + (update.weights.at(name) - value) * scale;
        }
      }
    }
    AggregationSums sums = aggregation_sums(global, updates, expert_parameters_);
    if (collective_) {  // every process's clients: the sums and the clients' lines
      std::vector<at::Tensor> tensors{at::tensor({sums.samples}, at::kDouble)};
      for (auto& [name, t] : sums.weighted) tensors.push_back(t);
      for (auto& [name, t] : sums.token_weighted) tensors.push_back(t);
      for (auto& [layer, t] : sums.tokens) tensors.push_back(t);
      collective_->all_reduce_sum(tensors);
      sums.samples = tensors[0].item<double>();
      const nlohmann::json mine{{"loss", client_loss}, {"usage", usage}};
      for (const auto& text : collective_->all_gather_text(mine.dump())) {
        const nlohmann::json theirs = nlohmann::json::parse(text);
        client_loss.update(theirs["loss"]);
        usage.update(theirs["usage"]);
      }
    }
    std::map<std::string, at::Tensor> next = finish_aggregation(options_.aggregation(), global, sums, expert_parameters_);
    if (options_.dp_noise_multiplier() > 0) {
      at::Generator gen = generator_for(train_.seed(), 1000000 + static_cast<uint64_t>(round_));
      const double sigma = options_.dp_noise_multiplier() * options_.dp_clip() / static_cast<double>(participants);
      const auto parameters = model_->named_parameters();  // noise on weights, not buffers
      for (auto& [name, value] : next) {
        if (floating(value) && parameters.contains(name)) {
          value = value + at::normal(0.0, sigma, value.sizes(), gen, value.options().dtype(at::kDouble)).to(value.scalar_type());
        }
      }
    }
    load_weights(*model_, next);
    ++round_;
    nlohmann::json line{{"kind", "round"}, {"round", round_}, {"step", round_},
                        {"clients", chosen}, {"client_loss", client_loss},
                        {"participation", static_cast<double>(chosen.size()) / static_cast<double>(options_.clients())},
                        {"expert_usage", usage}};
    if (!writes()) continue;  // rank 0 scores, reports and checkpoints the global model
    if (data_.val && data_.val->size() > 0) {
      const Evaluation result = evaluate(*model_, *data_.val, *task_, eval_batch_size(train_.batch_size()), precision_);
      for (const auto& [name, value] : result.metrics.values) line["val_" + name] = value;
      say(fmt::format("round {}/{}: {} clients, {}", round_, options_.rounds(), chosen.size(),
                      format_metrics(*task_, result.metrics, "val ")));
    } else {
      say(fmt::format("round {}/{}: {} clients", round_, options_.rounds(), chosen.size()));
    }
    if (options_.dp_clip() > 0) {
      line["dp"] = {{"clip", options_.dp_clip()}, {"noise_multiplier", options_.dp_noise_multiplier()}};
    }
    append_metrics(run_dir_, line);
    save_checkpoint();
  }
  if (writes() && round_ == options_.rounds() && round_ > first) {
    const bool has_test = data_.test && data_.test->size() > 0;
    const std::shared_ptr<data::DataSource>& set = has_test ? data_.test : data_.val;
    if (set && set->size() > 0) {
      const Evaluation result = evaluate(*model_, *set, *task_, eval_batch_size(train_.batch_size()), precision_);
      nlohmann::json line{{"kind", "test"}, {"step", round_}, {"split", has_test ? "test" : "val"},
                          {"samples", result.samples()}};
      for (const auto& [name, value] : result.metrics.values) line[name] = value;
      append_metrics(run_dir_, line);
      say(fmt::format("{} split: {}", has_test ? "test" : "val", format_metrics(*task_, result.metrics, "")));
    }
  }
  return round_;
}

void FederatedTrainer::save_checkpoint() {
  const std::string directory = checkpoint_path(run_dir_, round_);
  if (fs::exists(directory)) return;
  FileWriters files{
      {"model.safetensors", [&](const std::string& p) { save_module_weights(*model_, p); }},
      {"rng.safetensors",
       [&](const std::string& p) {
         io::save_safetensors(p, {{"cpu", at::detail::getDefaultCPUGenerator().get_state()}});
       }},
      {"config.yaml", [&](const std::string& p) { io::write_file(p, YAML::Dump(config_) + "\n"); }},
  };
  // The trainer's checkpoint fields (epoch, cursor) hold the round and 0: every round starts afresh.
  write_checkpoint(directory, files,
                   {{"step", round_}, {"epoch", round_}, {"cursor", 0}, {"round", round_}, {"federated", true},
                    {"train_seconds", seconds_before_ + std::chrono::duration<double>(
                                                            std::chrono::steady_clock::now() - process_start_).count()}});
  verify_checkpoint(directory);
  prune_checkpoints(run_dir_, train_.keep_last(), "");
}

}  // namespace moelab::train
