// A comparative study: several runs on one data set and one training budget, trained one after
// the other into STUDY_DIR/<run name>/, then compared in STUDY_DIR/report/index.html.
//
// Study file (YAML; files stack and key=value overrides apply as for runs):
//   study:  {name: fashion_mnist, reference: moe_top1_e4}
//   base:   a run config (model, data, train) every run starts from
//   runs:   - {name: moe_top1_e4, model: {num_experts: 4}, train: {...}}   # stacked on base
//           - {name: dense_iso_flops, match: flops}        # dense CNN baseline whose width
//           - {name: dense_iso_params, match: parameters}  # matches the reference MoE's active
//                                                          # FLOPs / total parameters
// A run whose directory already holds a finished run is kept; one with a checkpoint is resumed,
// so an interrupted study continues where it stopped.
#pragma once

#include <nlohmann/json.hpp>

#include <ostream>
#include <string>
#include <vector>

#include "moelab/train/progress.h"

namespace moelab::analysis {

/// The resolved run configs of a study, in order, as {name, config} (config: YAML as text).
struct StudyPlan {
  std::string name, reference;
  std::vector<std::pair<std::string, std::string>> runs;
};
StudyPlan plan_study(const std::vector<std::string>& files, const std::vector<std::string>& overrides);

/// Trains every run of the plan into `study_dir` and writes study_dir/study.json: per run its
/// name, model, parameters (total, active), FLOPs per sample, test accuracy and loss, train
/// seconds and steps. Returns that JSON.
nlohmann::json run_study(const StudyPlan& plan, const std::string& study_dir,
                         train::ConsoleMode console, std::ostream& out);

/// Text for HTML: <, >, & and " escaped.
std::string html_escape(const std::string& text);

/// Builds study_dir/report/index.html (and its PNG plots) from study.json and the runs' metrics.
/// Returns the path of index.html.
std::string write_report(const std::string& study_dir);

}  // namespace moelab::analysis
