#include "moelab/train/run_directory.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>

#include "moelab/train/checkpoint.h"
#include "moelab/util/errors.h"

namespace fs = std::filesystem;

namespace moelab::train {

std::string checkpoint_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%08lld", static_cast<long long>(step));
  return name;
}

std::string checkpoint_path(const std::string& run_dir, int64_t step) {
  return (fs::path(run_dir) / kCheckpointDir / checkpoint_name(step)).string();
}

std::vector<std::string> checkpoint_dirs(const std::string& run_dir) {
  std::vector<std::string> dirs;
  const fs::path root = fs::path(run_dir) / kCheckpointDir;
  if (!fs::is_directory(root)) return dirs;
  const std::regex pattern("step-[0-9]{8}");
  for (const auto& entry : fs::directory_iterator(root)) {
    if (entry.is_directory() && std::regex_match(entry.path().filename().string(), pattern)) {
      dirs.push_back(entry.path().string());
    }
  }
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

std::string latest_checkpoint(const std::string& run_dir) {
  const auto dirs = checkpoint_dirs(run_dir);
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    try {
      verify_checkpoint(*it);
      return *it;
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
  const std::string best = checkpoint_path(run_dir, best_step);
  try {
    verify_checkpoint(best);
    return best;
  } catch (const CheckpointError&) {
    return "";
  }
}

bool holds_run(const std::string& run_dir) {
  return fs::exists(fs::path(run_dir) / kMetricsFile) ||
         fs::exists(fs::path(run_dir) / kCheckpointDir);
}

void prune_checkpoints(const std::string& run_dir, int64_t keep_last, const std::string& keep) {
  const auto dirs = checkpoint_dirs(run_dir);
  int64_t newer = 0;  // checkpoints newer than the one looked at, the kept one excluded
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    if (fs::path(*it).filename() == keep) continue;
    if (++newer > keep_last) fs::remove_all(*it);
  }
}

void append_metrics(const std::string& run_dir, const nlohmann::json& line) {
  const fs::path path = fs::path(run_dir) / kMetricsFile;
  std::ofstream out(path, std::ios::app);
  if (!out) throw std::runtime_error(path.string() + ": cannot append");
  out << line.dump() << "\n";
}

std::vector<nlohmann::json> read_metrics(const std::string& run_dir) {
  std::vector<nlohmann::json> lines;
  const fs::path path = fs::path(run_dir) / kMetricsFile;
  std::ifstream in(path);
  int64_t number = 0;
  for (std::string line; std::getline(in, line);) {
    ++number;
    if (line.empty()) continue;
    try {
      lines.push_back(nlohmann::json::parse(line));
    } catch (const nlohmann::json::parse_error&) {
      throw DataError(path.string() + ":" + std::to_string(number) + ": not a JSON object");
    }
  }
  return lines;
}

void truncate_metrics(const std::string& run_dir, int64_t step) {
  const fs::path path = fs::path(run_dir) / kMetricsFile;
  if (!fs::exists(path)) return;
  std::vector<std::string> kept;
  for (const auto& line : read_metrics(run_dir)) {
    if (line.value("step", int64_t{0}) <= step) kept.push_back(line.dump());
  }
  std::ofstream out(path, std::ios::trunc);
  for (const auto& line : kept) out << line << "\n";
}

}  // namespace moelab::train
