#include "moelab/train/optimizer.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <fnmatch.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <cmath>

#include "moelab/config/fields.h"
#include "moelab/util/errors.h"
#include "nn/internal/row_kernels.h"

namespace moelab::train {

template <typename V>
void visit(V& v, ParamGroupOptions& o) {
  v.field("match", o.match());
  v.field("lr", o.lr());
  v.field("weight_decay", o.weight_decay());
  v.field("frozen", o.frozen());
}

template <typename V>
void visit(V& v, OptimizerOptions& o) {
  v.field("name", o.name());
  v.field("lr", o.lr());
  v.field("weight_decay", o.weight_decay());
  v.field("momentum", o.momentum());
  v.field("nesterov", o.nesterov());
  v.field("beta1", o.beta1());
  v.field("beta2", o.beta2());
  v.field("eps", o.eps());
  v.list("groups", o.groups());
}

MOELAB_DEFINE_OPTIONS_YAML(ParamGroupOptions)
MOELAB_DEFINE_OPTIONS_YAML(OptimizerOptions)

void validate(const OptimizerOptions& o, const std::string& where) {
  auto require = [&](bool ok, const std::string& key, const std::string& rule, double value) {
    if (!ok) throw ConfigError(fmt::format("{}.{}: must be {}, got {}", where, key, rule, value));
  };
  if (o.name() != "adamw" && o.name() != "sgd") {
    throw ConfigError(where + ".name: unknown optimizer '" + o.name() + "'; expected adamw or sgd");
  }
  require(std::isfinite(o.lr()) && o.lr() > 0, "lr", "finite and > 0", o.lr());
  require(std::isfinite(o.weight_decay()) && o.weight_decay() >= 0, "weight_decay",
          "finite and >= 0", o.weight_decay());
  require(std::isfinite(o.momentum()) && o.momentum() >= 0, "momentum", "finite and >= 0",
          o.momentum());
  require(o.beta1() >= 0 && o.beta1() < 1, "beta1", "in [0, 1)", o.beta1());
  require(o.beta2() >= 0 && o.beta2() < 1, "beta2", "in [0, 1)", o.beta2());
  require(std::isfinite(o.eps()) && o.eps() > 0, "eps", "finite and > 0", o.eps());
  for (size_t i = 0; i < o.groups().size(); ++i) {
    const ParamGroupOptions& g = o.groups()[i];
    const std::string key = "groups[" + std::to_string(i) + "]";
    if (g.match().empty()) throw ConfigError(where + "." + key + ".match: a pattern is required");
    require(std::isfinite(g.lr()) && g.lr() != 0, key + ".lr", "> 0 (or < 0: the optimizer's)",
            g.lr());
    require(std::isfinite(g.weight_decay()), key + ".weight_decay", "finite", g.weight_decay());
  }
}

namespace {

// torch::optim::AdamW with its per-parameter update fused: the same state (AdamWParamState,
// created as LibTorch creates it, so checkpoints load either way), options and formula (decoupled
// decay, then p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)) in one pass per
// float32 parameter. The float arithmetic follows LibTorch's op order; its last bits may differ
// where LibTorch's vector kernels fuse a multiply-add. Other parameters (not float32, not
// contiguous, amsgrad) take LibTorch's own step.
class FusedAdamW : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;

  at::Tensor step(LossClosure closure = nullptr) override {
    if (closure != nullptr || !fusable()) return torch::optim::AdamW::step(closure);
    torch::NoGradGuard no_grad;
    for (auto& group : param_groups()) {
      const auto& options = static_cast<const torch::optim::AdamWOptions&>(group.options());
      for (auto& p : group.params()) {
        if (!p.grad().defined()) continue;
        update(p, options);
      }
    }
    return {};
  }

 private:
  bool fusable() {
    for (auto& group : param_groups()) {
      if (static_cast<const torch::optim::AdamWOptions&>(group.options()).amsgrad()) return false;
      for (auto& p : group.params()) {
        if (!p.grad().defined()) continue;
        if (p.scalar_type() != at::kFloat || !p.device().is_cpu() || !p.is_contiguous() ||
            p.grad().scalar_type() != at::kFloat || !p.grad().is_contiguous() || p.grad().is_sparse()) {
          return false;
        }
      }
    }
    return true;
  }

  void update(at::Tensor& p, const torch::optim::AdamWOptions& options) {
    auto& states = state();
    const auto key = optimizer_state_key(states, p);
    auto found = states.find(key);
    if (found == states.end()) {
      auto fresh = std::make_unique<torch::optim::AdamWParamState>();
      fresh->step(0);
      fresh->exp_avg(at::zeros_like(p, at::MemoryFormat::Preserve));
      fresh->exp_avg_sq(at::zeros_like(p, at::MemoryFormat::Preserve));
      found = states.emplace(key, std::move(fresh)).first;
    }
    auto& s = static_cast<torch::optim::AdamWParamState&>(*found->second);
    s.step(s.step() + 1);
    const auto [beta1, beta2] = options.betas();
    const double bias_correction1 = 1 - std::pow(beta1, s.step());
    const double bias_correction2 = 1 - std::pow(beta2, s.step());
    nn::internal::AdamWCoefficients c;
    c.beta1 = static_cast<float>(beta1);
    c.one_minus_beta1 = static_cast<float>(1 - beta1);
    c.beta2 = static_cast<float>(beta2);
    c.one_minus_beta2 = static_cast<float>(1 - beta2);
    c.sqrt_bias_correction2 = static_cast<float>(std::sqrt(bias_correction2));
    c.eps = static_cast<float>(options.eps());
    c.neg_step = static_cast<float>(-options.lr() / bias_correction1);
    c.decay = static_cast<float>(1 - options.lr() * options.weight_decay());
    c.decays = options.weight_decay() != 0;
    float* const param = p.data_ptr<float>();
    const float* const grad = p.grad().data_ptr<float>();
    float* const m = s.exp_avg().data_ptr<float>();
    float* const v = s.exp_avg_sq().data_ptr<float>();
    const auto adamw = nn::internal::row_kernels().adamw_f32;
    at::parallel_for(0, p.numel(), 32768, [&](int64_t begin, int64_t end) {
      adamw(param + begin, grad + begin, m + begin, v + begin, end - begin, c);
    });
  }
};

std::unique_ptr<torch::optim::OptimizerOptions> group_options(const OptimizerOptions& o, double lr,
                                                              double weight_decay) {
  if (o.name() == "sgd") {
    return std::make_unique<torch::optim::SGDOptions>(torch::optim::SGDOptions(lr)
                                                          .momentum(o.momentum())
                                                          .nesterov(o.nesterov())
                                                          .weight_decay(weight_decay));
  }
  return std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(lr)
                                                          .betas({o.beta1(), o.beta2()})
                                                          .eps(o.eps())
                                                          .weight_decay(weight_decay));
}

}  // namespace

OptimizerSetup build_optimizer(torch::nn::Module& model, const OptimizerOptions& o) {
  validate(o, "train.optimizer");
  OptimizerSetup setup;
  // Group 0 is the default; group i + 1 is o.groups()[i].
  std::vector<ParamGroupReport> reports(o.groups().size() + 1);
  std::vector<std::vector<at::Tensor>> members(reports.size());
  reports[0] = {"", o.lr(), o.weight_decay(), {}, 0};
  for (size_t i = 0; i < o.groups().size(); ++i) {
    const ParamGroupOptions& g = o.groups()[i];
    reports[i + 1] = {g.match(), g.lr() < 0 ? o.lr() : g.lr(),
                      g.weight_decay() < 0 ? o.weight_decay() : g.weight_decay(), {}, 0};
  }
  for (auto& item : model.named_parameters()) {
    const std::string& name = item.key();
    at::Tensor parameter = item.value();
    size_t group = 0;
    for (size_t i = 0; i < o.groups().size(); ++i) {
      if (fnmatch(o.groups()[i].match().c_str(), name.c_str(), 0) == 0) {
        group = i + 1;
        if (o.groups()[i].frozen()) parameter.set_requires_grad(false);
        break;
      }
    }
    if (!parameter.requires_grad()) {
      setup.frozen.push_back(name);
      setup.frozen_scalars += parameter.numel();
      continue;
    }
    members[group].push_back(parameter);
    reports[group].parameters.push_back(name);
    reports[group].scalars += parameter.numel();
  }
  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (size_t g = 0; g < reports.size(); ++g) {
    if (members[g].empty()) continue;
    groups.emplace_back(members[g],
                        group_options(o, reports[g].lr, reports[g].weight_decay));
    setup.groups.push_back(reports[g]);
  }
  if (groups.empty()) {
    throw ConfigError("train.optimizer: no trainable parameters (" +
                      std::to_string(setup.frozen.size()) + " frozen)");
  }
  auto defaults = group_options(o, o.lr(), o.weight_decay());
  if (o.name() == "sgd") {
    setup.optimizer = std::make_unique<torch::optim::SGD>(
        groups, static_cast<torch::optim::SGDOptions&>(*defaults));
  } else {
    setup.optimizer = std::make_unique<FusedAdamW>(
        groups, static_cast<torch::optim::AdamWOptions&>(*defaults));
  }
  return setup;
}

void OptimizerSetup::set_learning_rate(int64_t step, int64_t total_steps,
                                       const ScheduleOptions& schedule) {
  auto& param_groups = optimizer->param_groups();
  for (size_t g = 0; g < param_groups.size(); ++g) {
    param_groups[g].options().set_lr(learning_rate_at(step, total_steps, groups[g].lr, schedule));
  }
}

std::string OptimizerSetup::describe() const {
  std::string out;
  for (const auto& g : groups) {
    out += fmt::format("param group {}: {} tensors, {} scalars, lr {:g}, weight decay {:g}\n",
                       g.match.empty() ? "default" : "'" + g.match + "'", g.parameters.size(),
                       g.scalars, g.lr, g.weight_decay);
  }
  if (!frozen.empty()) {
    out += fmt::format("frozen: {} tensors, {} scalars\n", frozen.size(), frozen_scalars);
  }
  return out;
}

}  // namespace moelab::train
