#include "moelab/train/run_directory.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>

#include "moelab/io/file.h"
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

namespace {

// The step a checkpoint directory's name says ("step-00000060" -> 60).
int64_t step_of(const std::string& directory) {
  return std::stoll(fs::path(directory).filename().string().substr(5));
}

// verify_checkpoint plus the metadata the trainer relies on.
void check_checkpoint(const std::string& directory) {
  const nlohmann::json manifest = verify_checkpoint(directory);
  const nlohmann::json& meta = manifest["metadata"];
  const std::string where = (fs::path(directory) / kManifestName).string();
  for (const char* key : {"step", "epoch", "cursor"}) {
    if (!meta.contains(key) || !meta[key].is_number_integer() || meta[key].get<int64_t>() < 0) {
      throw CheckpointError(where + ": metadata." + key + " must be an integer >= 0");
    }
  }
  if (meta["step"].get<int64_t>() != step_of(directory)) {
    throw CheckpointError(where + ": metadata.step " + std::to_string(meta["step"].get<int64_t>()) +
                          " is not the directory's step " + std::to_string(step_of(directory)));
  }
}

}  // namespace

CheckpointScan scan_checkpoints(const std::string& run_dir, bool move_damaged) {
  CheckpointScan scan;
  const auto dirs = checkpoint_dirs(run_dir);
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    try {
      check_checkpoint(*it);
      scan.latest = *it;
      break;
    } catch (const CheckpointError& e) {
      std::string line = e.what();
      if (move_damaged) {
        std::string aside = *it + ".damaged";
        for (int n = 2; fs::exists(aside); ++n) aside = *it + ".damaged" + std::to_string(n);
        std::error_code ec;
        fs::rename(*it, aside, ec);
        line += ec ? " (could not move it aside: " + ec.message() + ")"
                   : " (moved to " + fs::path(aside).filename().string() + ")";
      }
      scan.skipped.push_back(line);
    }
  }
  return scan;
}

std::string latest_checkpoint(const std::string& run_dir) { return scan_checkpoints(run_dir).latest; }

void remove_temporary_checkpoints(const std::string& run_dir) {
  const fs::path root = fs::path(run_dir) / kCheckpointDir;
  if (!fs::is_directory(root)) return;
  const std::regex pattern("\\.step-[0-9]{8}\\.tmp");
  for (const auto& entry : fs::directory_iterator(root)) {
    if (std::regex_match(entry.path().filename().string(), pattern)) fs::remove_all(entry.path());
  }
}

std::string best_checkpoint(const std::string& run_dir) {
  const std::string latest = latest_checkpoint(run_dir);
  if (latest.empty()) return "";
  const nlohmann::json meta = read_manifest(latest)["metadata"];
  const nlohmann::json state = meta.contains("early_stopping") && meta["early_stopping"].is_object()
                                   ? meta["early_stopping"]
                                   : nlohmann::json::object();
  const int64_t best_step = state.contains("best_step") && state["best_step"].is_number_integer()
                                ? state["best_step"].get<int64_t>()
                                : -1;
  if (best_step < 0) return "";
  const std::string best = checkpoint_path(run_dir, best_step);
  try {
    check_checkpoint(best);
    return best;
  } catch (const CheckpointError&) {
    return "";
  }
}

bool holds_run(const std::string& run_dir) {
  return fs::exists(fs::path(run_dir) / kMetricsFile) ||
         fs::exists(fs::path(run_dir) / kCheckpointDir);
}

void create_run_directory(const std::string& run_dir, const std::string& config_text) {
  if (holds_run(run_dir)) {
    throw ConfigError(run_dir + ": already holds a run; use 'moelab resume " + run_dir +
                      "' or choose another directory");
  }
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  if (ec) throw ConfigError(run_dir + ": cannot create run directory: " + ec.message());
  io::write_file_atomic((fs::path(run_dir) / kRunConfigFile).string(), config_text);
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
  // Appended without fsync: a kill loses nothing the kernel has; a line cut short by a power
  // cut is dropped by read_metrics and the resume rewrites the file from the checkpoint's step.
  io::CheckedFile file(path.string(), io::CheckedFile::Mode::kAppend);
  file.write(line.dump() + "\n");
  file.finish();
}

std::vector<nlohmann::json> read_metrics(const std::string& run_dir) {
  std::vector<nlohmann::json> lines;
  const fs::path path = fs::path(run_dir) / kMetricsFile;
  std::ifstream in(path, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  int64_t number = 0;
  for (size_t start = 0; start < text.size();) {
    const size_t end = text.find('\n', start);
    const bool complete = end != std::string::npos;
    const std::string line = text.substr(start, complete ? end - start : std::string::npos);
    start = complete ? end + 1 : text.size();
    ++number;
    if (line.empty()) continue;
    nlohmann::json value = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!value.is_object()) {
      if (!complete) break;  // an append cut short by a kill: the line never was
      throw DataError(path.string() + ":" + std::to_string(number) + ": not a JSON object");
    }
    lines.push_back(std::move(value));
  }
  return lines;
}

void truncate_metrics(const std::string& run_dir, int64_t step) {
  const fs::path path = fs::path(run_dir) / kMetricsFile;
  if (!fs::exists(path)) return;
  std::string kept;
  for (const auto& line : read_metrics(run_dir)) {
    const bool has_step = line.contains("step") && line["step"].is_number_integer();
    if (!has_step || line["step"].get<int64_t>() <= step) kept += line.dump() + "\n";
  }
  io::write_file_atomic(path.string(), kept);
}

}  // namespace moelab::train
