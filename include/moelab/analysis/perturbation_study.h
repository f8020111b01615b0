// The perturbation side of a study (study.h): what a finished run of the perturbation task is
// scored on beyond its metrics lines, the baselines every such study compares with, and the
// report section.
//
// Per run: the test metrics overall and per cell line (by name); for MoE runs, expert usage by
// cell line and the histogram of the top expert's gate weight on the test split; on simulated
// data (a truth.json beside the data), how well the experts line up with the simulator's gene
// programs: for expert e and program p, the share of e's samples (gate-weighted) in which p is
// active, divided by p's share over all test samples (a lift; 1 = no preference).
// Baselines: no change (prediction = basal: predDE is constant, so every R^2 is skipped) and the
// cell line's mean response over the training split.
#pragma once

#include <yaml-cpp/yaml.h>

#include <nlohmann/json.hpp>

#include <string>

namespace moelab::analysis {

nlohmann::json analyse_perturbation_run(const std::string& run_dir, const YAML::Node& config);

/// {"no_change": metrics, "cell_line_mean": metrics} on the test split of `config`'s data, each
/// {"values": {...}, "details": {...}} as the task reports them.
nlohmann::json perturbation_baselines(const YAML::Node& config);

/// The report's body for a study of perturbation runs; writes its plots into report_dir.
std::string perturbation_report(const nlohmann::json& study, const std::string& study_dir,
                                const std::string& report_dir);

}  // namespace moelab::analysis
