#include "moelab/train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "moelab/io/file.h"
#include "moelab/io/safetensors.h"
#include "moelab/util/errors.h"

namespace fs = std::filesystem;

namespace moelab::train {


uint32_t manifest_checksum(const nlohmann::json& manifest) {
  nlohmann::json content = manifest;
  content.erase("checksum");
  const std::string text = content.dump();
  return static_cast<uint32_t>(
      crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(text.data()),
            static_cast<uInt>(text.size())));
}

uint32_t file_crc32(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CheckpointError(path + ": cannot open");
  uLong crc = crc32(0L, Z_NULL, 0);
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const auto n = in.gcount();
    if (n > 0) crc = crc32(crc, reinterpret_cast<const Bytef*>(buffer.data()), static_cast<uInt>(n));
  }
  return static_cast<uint32_t>(crc);
}

void write_checkpoint(const std::string& directory, const FileWriters& files,
                      const nlohmann::json& metadata) {
  const fs::path final_dir(directory);
  if (fs::exists(final_dir)) throw CheckpointError(directory + ": already exists");
  const fs::path parent = final_dir.has_parent_path() ? final_dir.parent_path() : fs::path(".");
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (ec) throw CheckpointError(parent.string() + ": cannot create directory: " + ec.message());
  const fs::path temporary = parent / ("." + final_dir.filename().string() + ".tmp");
  fs::remove_all(temporary, ec);  // a leftover of an interrupted write
  if (!fs::create_directory(temporary, ec) || ec) {
    throw CheckpointError(temporary.string() + ": cannot create directory (is " + parent.string() +
                          " writable?)");
  }
  try {
    nlohmann::json manifest{{"format", kCheckpointFormat},
                            {"format_version", kCheckpointFormatVersion},
                            {"metadata", metadata.is_null() ? nlohmann::json::object() : metadata},
                            {"files", nlohmann::json::object()}};
    for (const auto& [name, writer] : files) {
      if (name.empty() || name == kManifestName || name.find('/') != std::string::npos) {
        throw CheckpointError(directory + ": invalid checkpoint file name '" + name + "'");
      }
      const std::string path = (temporary / name).string();
      writer(path);
      if (!fs::exists(path)) throw CheckpointError(path + ": the writer did not create it");
      io::sync_file(path);
      manifest["files"][name] = {{"bytes", fs::file_size(path)}, {"crc32", file_crc32(path)}};
    }
    manifest["checksum"] = manifest_checksum(manifest);
    io::CheckedFile manifest_file((temporary / kManifestName).string());
    manifest_file.write(manifest.dump(2) + "\n");
    manifest_file.finish();
    io::sync_directory(temporary.string());
    io::rename_path(temporary.string(), final_dir.string());
    io::sync_directory(parent.string());
  } catch (const fs::filesystem_error& e) {
    fs::remove_all(temporary, ec);
    throw CheckpointError(directory + ": " + e.what());
  } catch (...) {
    fs::remove_all(temporary, ec);
    throw;
  }
}

nlohmann::json read_manifest(const std::string& directory) {
  const fs::path dir(directory);
  if (!fs::is_directory(dir)) throw CheckpointError(directory + ": not a checkpoint directory");
  const fs::path manifest_path = dir / kManifestName;
  std::ifstream in(manifest_path);
  if (!in) {
    throw CheckpointError(directory + ": no " + std::string(kManifestName) +
                          " (incomplete or not a moelab checkpoint)");
  }
  nlohmann::json manifest;
  try {
    manifest = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError(manifest_path.string() + ": not valid JSON: " + e.what());
  }
  if (!manifest.is_object() || !manifest.contains("format") || !manifest["format"].is_string() ||
      manifest["format"].get<std::string>() != kCheckpointFormat) {
    throw CheckpointError(manifest_path.string() + ": format is not " + kCheckpointFormat);
  }
  const int version = manifest["format_version"].is_number_integer()
                          ? manifest["format_version"].get<int>()
                          : -1;
  if (version != kCheckpointFormatVersion && version != 1) {
    throw CheckpointError(manifest_path.string() + ": format_version " + std::to_string(version) +
                          " is not supported (this moelab reads version " +
                          std::to_string(kCheckpointFormatVersion) + ")");
  }
  if (!manifest.contains("files") || !manifest["files"].is_object()) {
    throw CheckpointError(manifest_path.string() + ": no file list");
  }
  // Version 1 manifests (before the checksum) are read as they are.
  if (version >= 2 && (!manifest.contains("checksum") || !manifest["checksum"].is_number_unsigned() ||
                       manifest["checksum"].get<uint32_t>() != manifest_checksum(manifest))) {
    throw CheckpointError(manifest_path.string() + ": checksum mismatch (edited or damaged)");
  }
  if (!manifest.contains("metadata") || !manifest["metadata"].is_object()) {
    throw CheckpointError(manifest_path.string() + ": no metadata section");
  }
  return manifest;
}

nlohmann::json verify_checkpoint(const std::string& directory) {
  const fs::path dir(directory);
  nlohmann::json manifest = read_manifest(directory);
  for (const auto& [name, entry] : manifest["files"].items()) {
    const fs::path path = dir / name;
    if (!fs::is_regular_file(path)) {
      throw CheckpointError(path.string() + ": listed in the manifest but missing");
    }
    if (!entry.is_object() || !entry.contains("bytes") || !entry["bytes"].is_number_unsigned() ||
        !entry.contains("crc32") || !entry["crc32"].is_number_unsigned()) {
      throw CheckpointError((dir / kManifestName).string() + ": entry '" + name +
                            "' needs unsigned bytes and crc32");
    }
    const uint64_t bytes = entry["bytes"].get<uint64_t>();
    if (fs::file_size(path) != bytes) {
      throw CheckpointError(path.string() + ": " + std::to_string(fs::file_size(path)) +
                            " bytes, the manifest says " + std::to_string(bytes) + " (truncated?)");
    }
    if (file_crc32(path.string()) != entry["crc32"].get<uint32_t>()) {
      throw CheckpointError(path.string() + ": checksum mismatch (corrupt)");
    }
  }
  return manifest;
}

void save_module_weights(const torch::nn::Module& module, const std::string& path,
                         const std::map<std::string, std::string>& metadata,
                         const std::map<std::string, at::Tensor>& replacements) {
  io::NamedTensors tensors;
  auto add = [&](const std::string& name, const at::Tensor& value) {
    const auto replaced = replacements.find(name);
    tensors.emplace_back(name, replaced == replacements.end() ? value : replaced->second);
  };
  for (const auto& item : module.named_parameters()) add(item.key(), item.value());
  for (const auto& item : module.named_buffers()) add(item.key(), item.value());
  io::save_safetensors(path, tensors, metadata);
}

std::string WeightLoadReport::describe() const {
  std::string out = std::to_string(loaded.size()) + " tensors loaded";
  auto list = [&](const char* what, const std::vector<std::string>& names) {
    if (names.empty()) return;
    out += std::string("; ") + std::to_string(names.size()) + " " + what + ":";
    for (const auto& n : names) out += " " + n;
  };
  list("missing", missing);
  list("unexpected", unexpected);
  return out;
}

WeightLoadReport load_module_weights(torch::nn::Module& module, const std::string& path,
                                     const WeightLoading& options) {
  io::SafetensorsFile file;
  try {
    file = io::load_safetensors(path);
  } catch (const DataError& e) {
    throw CheckpointError(e.what());
  }
  // The file's names as the model calls them: the first matching prefix is renamed.
  std::map<std::string, at::Tensor> tensors;
  for (auto& [name, tensor] : file.tensors) {
    std::string renamed = name;
    for (const auto& [from, to] : options.rename_prefixes) {
      if (renamed.compare(0, from.size(), from) == 0) {
        renamed = to + renamed.substr(from.size());
        break;
      }
    }
    if (!tensors.emplace(renamed, options.transform ? options.transform(renamed, tensor) : tensor).second) {
      throw CheckpointError(path + ": two tensors map to '" + renamed + "' after renaming");
    }
  }
  std::vector<std::pair<std::string, at::Tensor>> targets;
  for (const auto& item : module.named_parameters()) targets.emplace_back(item.key(), item.value());
  for (const auto& item : module.named_buffers()) targets.emplace_back(item.key(), item.value());
  WeightLoadReport report;
  std::ostringstream mismatches;
  std::set<std::string> expected;
  for (const auto& [name, target] : targets) {
    expected.insert(name);
    auto found = tensors.find(name);
    if (found == tensors.end()) {
      report.missing.push_back(name);
    } else if (found->second.sizes() != target.sizes() ||
               found->second.scalar_type() != target.scalar_type()) {
      mismatches << "\n  mismatch: " << name << " is " << found->second.scalar_type()
                 << found->second.sizes() << " in the file, " << target.scalar_type()
                 << target.sizes() << " in the model";
    }
  }
  for (const auto& [name, tensor] : tensors) {
    if (!expected.count(name)) report.unexpected.push_back(name);
  }
  std::string problems = mismatches.str();
  if (options.strict) {
    for (const auto& name : report.missing) problems += "\n  missing: " + name;
    for (const auto& name : report.unexpected) problems += "\n  unexpected: " + name;
  }
  if (!problems.empty()) throw CheckpointError(path + ": does not match the model:" + problems);
  torch::NoGradGuard no_grad;
  for (auto& [name, target] : targets) {
    auto found = tensors.find(name);
    if (found == tensors.end()) continue;
    target.copy_(found->second);
    report.loaded.push_back(name);
  }
  return report;
}

}  // namespace moelab::train
