// The language-model side of a study (study.h): what a finished moe_decoder run is scored on
// beyond its metrics lines, and the report section that compares such runs.
//
// Per run: test and validation perplexity per token and per word, training tokens/s, and, for
// MoE runs, which word classes each expert of each layer takes on the test split (an expert x
// part-of-speech table and the mutual information between tag and expert, from the corpus's tags)
// and sample generations from fixed prompts.
#pragma once

#include <yaml-cpp/yaml.h>

#include <nlohmann/json.hpp>

#include <string>

namespace moelab::analysis {

/// The language-model fields of a finished run's study entry (see the file comment).
nlohmann::json analyse_language_model_run(const std::string& run_dir, const YAML::Node& config);

/// The report's body for a study of language-model runs; writes its plots into report_dir.
std::string language_model_report(const nlohmann::json& study, const std::string& study_dir,
                                  const std::string& report_dir);

}  // namespace moelab::analysis
