#include "moelab/train/routing_stats.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace moelab::train {

std::vector<double> to_doubles(const at::Tensor& t) {
  const at::Tensor d = t.to(at::kDouble).contiguous();
  return {d.data_ptr<double>(), d.data_ptr<double>() + d.numel()};
}

void ExpertTally::add(const nn::RoutingStats& stats, const at::Tensor& sample_loss) {
  if (!stats.indices.defined() || stats.indices.size(0) != sample_loss.size(0)) return;
  const int64_t experts = stats.tokens_per_expert.size(0);
  at::Tensor kept = stats.kept.defined() ? stats.kept.to(at::kBool) : stats.indices.ge(0);
  at::Tensor index = stats.indices.masked_select(kept);
  at::Tensor loss = sample_loss.detach().to(at::kDouble).unsqueeze(1).expand_as(stats.indices)
                        .masked_select(kept);
  if (empty()) {
    loss_sum_ = at::zeros({experts}, at::kDouble);
    count_ = at::zeros({experts}, at::kDouble);
  }
  loss_sum_.index_add_(0, index, loss);
  count_.index_add_(0, index, at::ones_like(loss));
}

std::vector<double> ExpertTally::mean_loss() const {
  if (empty()) return {};
  std::vector<double> sums = to_doubles(loss_sum_), counts = to_doubles(count_), out;
  for (size_t e = 0; e < sums.size(); ++e) {
    out.push_back(counts[e] > 0 ? sums[e] / counts[e] : std::numeric_limits<double>::quiet_NaN());
  }
  return out;
}

std::vector<double> ExpertTally::usage() const {
  if (empty()) return {};
  const double total = count_.sum().item<double>();
  return to_doubles(total > 0 ? count_ / total : count_);
}

std::vector<double> ExpertTally::counts() const { return empty() ? std::vector<double>{} : to_doubles(count_); }

nlohmann::json ExpertTally::state() const {
  if (empty()) return nullptr;
  return {{"loss_sum", to_doubles(loss_sum_)}, {"count", to_doubles(count_)}};
}

void ExpertTally::load_state(const nlohmann::json& state) {
  clear();
  if (state.is_null()) return;
  const auto sums = state.at("loss_sum").get<std::vector<double>>();
  const auto counts = state.at("count").get<std::vector<double>>();
  loss_sum_ = at::tensor(sums, at::kDouble);
  count_ = at::tensor(counts, at::kDouble);
}

at::Tensor class_expert_counts(const nn::RoutingStats& stats, const at::Tensor& labels,
                               int64_t num_classes) {
  const int64_t experts = stats.tokens_per_expert.size(0);
  at::Tensor counts = at::zeros({num_classes * experts}, at::kLong);
  if (!stats.indices.defined() || stats.indices.size(0) != labels.size(0)) {
    return counts.view({num_classes, experts});
  }
  at::Tensor kept = stats.kept.defined() ? stats.kept.to(at::kBool) : stats.indices.ge(0);
  at::Tensor cell = labels.unsqueeze(1).expand_as(stats.indices) * experts + stats.indices;
  counts.index_add_(0, cell.masked_select(kept), at::ones({kept.sum().item<int64_t>()}, at::kLong));
  return counts.view({num_classes, experts});
}

double mutual_information(const at::Tensor& counts) {
  at::Tensor p = counts.to(at::kDouble);
  const double total = p.sum().item<double>();
  if (total <= 0) return 0.0;
  p = p / total;
  at::Tensor outer = p.sum(1, true) * p.sum(0, true);
  at::Tensor terms = at::where(p > 0, p * (p / outer).log(), at::zeros_like(p));
  return terms.sum().item<double>();
}

std::vector<std::pair<int64_t, double>> top_classes(const at::Tensor& counts, int64_t expert,
                                                    int64_t n) {
  std::vector<double> column = to_doubles(counts.select(1, expert));
  double total = 0;
  for (double c : column) total += c;
  std::vector<int64_t> order(column.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return column[a] > column[b]; });
  std::vector<std::pair<int64_t, double>> out;
  for (int64_t i = 0; i < std::min<int64_t>(n, static_cast<int64_t>(order.size())); ++i) {
    if (column[order[i]] <= 0) break;
    out.emplace_back(order[i], column[order[i]] / total);
  }
  return out;
}

nlohmann::json tally_states(const std::vector<ExpertTally>& tallies) {
  nlohmann::json states = nlohmann::json::array();
  for (const auto& tally : tallies) states.push_back(tally.state());
  return states;
}

void load_tally_states(std::vector<ExpertTally>& tallies, const nlohmann::json& states) {
  tallies.resize(std::max(tallies.size(), states.size()));
  for (size_t l = 0; l < states.size(); ++l) tallies[l].load_state(states[l]);
}

nlohmann::json count_rows(const at::Tensor& counts) {
  nlohmann::json rows = nlohmann::json::array();
  const at::Tensor c = counts.to(at::kLong).contiguous();
  for (int64_t i = 0; i < c.size(0); ++i) {
    const int64_t* row = c[i].data_ptr<int64_t>();
    rows.push_back(std::vector<int64_t>(row, row + c.size(1)));
  }
  return rows;
}

at::Tensor counts_from_rows(const nlohmann::json& rows) {
  std::vector<at::Tensor> out;
  for (const auto& row : rows) out.push_back(at::tensor(row.get<std::vector<int64_t>>(), at::kLong));
  return at::stack(out);
}

nlohmann::json to_json_numbers(const std::vector<double>& values) {
  nlohmann::json out = nlohmann::json::array();
  for (double v : values) out.push_back(std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr));
  return out;
}

}  // namespace moelab::train
