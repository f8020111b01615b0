#include "moelab/train/task.h"

#include <fmt/format.h>

#include <cmath>

#include "moelab/config/config.h"
#include "moelab/train/data_parallel.h"
#include "moelab/train/language_model_task.h"
#include "moelab/train/perturbation_task.h"
#include "moelab/util/errors.h"

namespace moelab::train {

nlohmann::json MetricAccumulator::add_states(const nlohmann::json& a, const nlohmann::json& b) const {
  return add_json_sums(a, b);
}

namespace {

class ClassificationAccumulator : public MetricAccumulator {
 public:
  void add(const models::ModelOutput& output, const data::Batch& batch,
           const at::Tensor& sample_loss) override {
    loss_sum_ += sample_loss.sum().item<double>();
    correct_ += output.outputs.argmax(-1).eq(batch.at(data::kTargets)).sum().item<double>();
    samples_ += batch.size();
  }
  Metrics result() const override {
    Metrics m;
    m.samples = samples_;
    const double n = std::max<double>(static_cast<double>(samples_), 1.0);
    m.values = {{"loss", loss_sum_ / n}, {"accuracy", correct_ / n}};
    return m;
  }
  nlohmann::json state() const override {
    return {{"loss_sum", loss_sum_}, {"correct", correct_}, {"samples", samples_}};
  }
  void load_state(const nlohmann::json& state) override {
    loss_sum_ = state.at("loss_sum").get<double>();
    correct_ = state.at("correct").get<double>();
    samples_ = state.at("samples").get<int64_t>();
  }

 private:
  double loss_sum_ = 0, correct_ = 0;
  int64_t samples_ = 0;
};

class ClassificationTask : public Task {
 public:
  std::string name() const override { return "classification"; }
  std::vector<MetricInfo> metrics() const override {
    return {{"loss", false}, {"accuracy", true}};
  }
  at::Tensor sample_loss(const models::ModelOutput& output,
                         const data::Batch& batch) const override {
    return at::cross_entropy_loss(output.outputs.to(at::kFloat), batch.at(data::kTargets), {},
                                  at::Reduction::None);
  }
  std::unique_ptr<MetricAccumulator> accumulator() const override {
    return std::make_unique<ClassificationAccumulator>();
  }
  void check_batch(const data::Batch& batch) const override {
    const at::Tensor& targets = batch.at(data::kTargets);
    if (targets.dim() != 1 || targets.scalar_type() != at::kLong) {
      throw DataError("task classification: targets must be (B) int64 class indices, got " +
                      std::string(c10::toString(targets.scalar_type())) + " of " +
                      std::to_string(targets.dim()) +
                      " dimensions (HINT: task.name: regression for real-valued targets)");
    }
  }
};

// Sums in float64 per output, so Pearson r and R^2 come out of one pass over the data.
class RegressionAccumulator : public MetricAccumulator {
 public:
  void add(const models::ModelOutput& output, const data::Batch& batch,
           const at::Tensor& sample_loss) override {
    const at::Tensor p = output.outputs.detach().to(at::kDouble).reshape({batch.size(), -1});
    const at::Tensor y = batch.at(data::kTargets).to(at::kDouble).reshape({batch.size(), -1});
    const at::Tensor e = p - y;
    at::Tensor sums = at::stack({y.sum(0), (y * y).sum(0), p.sum(0), (p * p).sum(0),
                                 (p * y).sum(0), (e * e).sum(0), e.abs().sum(0)});  // (7, O)
    sums_ = sums_.defined() ? sums_ + sums : sums;
    loss_sum_ += sample_loss.sum().item<double>();
    samples_ += batch.size();
  }
  Metrics result() const override {
    Metrics m;
    m.samples = samples_;
    if (!sums_.defined() || samples_ == 0) {
      m.values = {{"loss", 0}, {"mse", 0}, {"mae", 0}, {"pearson", 0}, {"r2", 0}};
      return m;
    }
    const double n = static_cast<double>(samples_);
    const at::Tensor s = sums_.contiguous();
    const int64_t outputs = s.size(1);
    auto at_ = [&](int row, int64_t o) { return s[row][o].item<double>(); };
    std::vector<double> mse, mae, pearson, r2;
    for (int64_t o = 0; o < outputs; ++o) {
      const double sy = at_(0, o), syy = at_(1, o), sp = at_(2, o), spp = at_(3, o),
                   spy = at_(4, o), see = at_(5, o), sae = at_(6, o);
      mse.push_back(see / n);
      mae.push_back(sae / n);
      const double var_y = syy - sy * sy / n, var_p = spp - sp * sp / n;
      const double cov = spy - sp * sy / n;
      pearson.push_back(var_y > 0 && var_p > 0 ? cov / std::sqrt(var_y * var_p) : 0.0);
      r2.push_back(var_y > 0 ? 1.0 - see / var_y : 0.0);
    }
    auto mean = [](const std::vector<double>& v) {
      double total = 0;
      for (double x : v) total += x;
      return total / static_cast<double>(v.size());
    };
    m.values = {{"loss", loss_sum_ / n},
                {"mse", mean(mse)},
                {"mae", mean(mae)},
                {"pearson", mean(pearson)},
                {"r2", mean(r2)}};
    m.details = {{"per_output", {{"mse", mse}, {"mae", mae}, {"pearson", pearson}, {"r2", r2}}}};
    return m;
  }
  nlohmann::json state() const override {
    nlohmann::json sums = nullptr;
    if (sums_.defined()) {
      const at::Tensor s = sums_.contiguous();
      sums = {{"outputs", s.size(1)},
              {"values", std::vector<double>(s.data_ptr<double>(), s.data_ptr<double>() + s.numel())}};
    }
    return {{"sums", sums}, {"loss_sum", loss_sum_}, {"samples", samples_}};
  }
  void load_state(const nlohmann::json& state) override {
    const auto& sums = state.at("sums");
    sums_ = at::Tensor();
    if (!sums.is_null()) {
      const auto values = sums.at("values").get<std::vector<double>>();
      sums_ = at::tensor(values, at::kDouble).reshape({7, sums.at("outputs").get<int64_t>()});
    }
    loss_sum_ = state.at("loss_sum").get<double>();
    samples_ = state.at("samples").get<int64_t>();
  }
  nlohmann::json add_states(const nlohmann::json& a, const nlohmann::json& b) const override {
    nlohmann::json out = a;  // "outputs" is a width, not a sum
    out["loss_sum"] = a.at("loss_sum").get<double>() + b.at("loss_sum").get<double>();
    out["samples"] = a.at("samples").get<int64_t>() + b.at("samples").get<int64_t>();
    if (out["sums"].is_null()) {
      out["sums"] = b.at("sums");
    } else if (!b.at("sums").is_null()) {
      out["sums"]["values"] = add_json_sums(a["sums"]["values"], b["sums"]["values"]);
    }
    return out;
  }

 private:
  at::Tensor sums_;  // (7, O) float64
  double loss_sum_ = 0;
  int64_t samples_ = 0;
};

class RegressionTask : public Task {
 public:
  std::string name() const override { return "regression"; }
  std::vector<MetricInfo> metrics() const override {
    return {{"loss", false}, {"mse", false}, {"mae", false}, {"pearson", true}, {"r2", true}};
  }
  at::Tensor sample_loss(const models::ModelOutput& output,
                         const data::Batch& batch) const override {
    const at::Tensor& targets = batch.at(data::kTargets);
    const at::Tensor predictions = output.outputs.to(at::kFloat);
    TORCH_CHECK(predictions.sizes() == targets.sizes(), "task regression: the model outputs ",
                predictions.sizes(), " for targets ", targets.sizes(),
                " (HINT: set the model's output count to the data's num_outputs)");
    return (predictions - targets).pow(2).reshape({targets.size(0), -1}).mean(1);
  }
  std::unique_ptr<MetricAccumulator> accumulator() const override {
    return std::make_unique<RegressionAccumulator>();
  }
  void check_batch(const data::Batch& batch) const override {
    const at::Tensor& targets = batch.at(data::kTargets);
    if (!at::isFloatingType(targets.scalar_type())) {
      throw DataError("task regression: targets must be real numbers, got " +
                      std::string(c10::toString(targets.scalar_type())) +
                      " (HINT: task.name: classification for class labels)");
    }
  }
};

}  // namespace

std::string format_metrics(const Task& task, const Metrics& metrics, const std::string& prefix) {
  std::string out;
  for (const auto& info : task.metrics()) {
    auto it = metrics.values.find(info.name);
    if (it == metrics.values.end()) continue;
    out += (out.empty() ? "" : ", ") + prefix + info.name + " " + fmt::format("{:.4f}", it->second);
  }
  return out;
}

MetricInfo Task::metric(const std::string& name) const {
  const std::vector<MetricInfo> declared = metrics();
  for (const auto& m : declared) {
    if (m.name == name) return m;
  }
  std::string list;
  for (const auto& m : declared) list += (list.empty() ? "" : ", ") + m.name;
  throw ConfigError("task " + this->name() + ": no metric '" + name + "' (it reports: " + list + ")");
}

const std::vector<TaskEntry>& task_registry() {
  static const std::vector<TaskEntry> entries{
      {"classification", "cross-entropy over class logits; accuracy",
       [] { return std::make_shared<ClassificationTask>(); }},
      {"regression", "mean squared error over real-valued outputs; MSE, MAE, Pearson r, R^2",
       [] { return std::make_shared<RegressionTask>(); }},
      {"language_model", "next-token cross-entropy; perplexity per token and per word",
       make_language_model_task},
      {"perturbation", "gene-expression response: MSE; R^2 of the top-20/40/80 DE genes, Pearson DE",
       make_perturbation_task},
  };
  return entries;
}

std::shared_ptr<Task> make_task(const std::string& name) {
  return config::find_by_name(task_registry(), name, "task.name", "task").make();
}

}  // namespace moelab::train
