// The federated side of a study (study.h): runs with a `federated:` section next to a
// centralised one. Per federated run: validation accuracy after each round against the training
// samples processed so far, the last round's expert usage per client (layer 0), and how much
// expert choice depends on the client (mutual information, nats, from the usage weighted by the
// clients' sample counts). The report plots accuracy per round for every run (a centralised run
// by its evaluations) and a client x expert heatmap per federated run.
#pragma once

#include <yaml-cpp/yaml.h>

#include <nlohmann/json.hpp>

#include <string>

namespace moelab::analysis {

nlohmann::json analyse_federated_run(const std::string& run_dir, const YAML::Node& config);

/// The report's body for a study with federated runs; writes its plots into report_dir.
std::string federated_report(const nlohmann::json& study, const std::string& study_dir,
                             const std::string& report_dir);

}  // namespace moelab::analysis
