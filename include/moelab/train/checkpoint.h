// Checkpoint directories: a set of files plus manifest.json (format name and version, each file's
// size and CRC-32, and the caller's metadata). A checkpoint is written into a temporary sibling
// directory, every file and the directory are fsynced, and only then is it renamed into place, so
// a crash never leaves a directory that looks valid but is not. Reading verifies the manifest
// before anything is used.
//
// What goes into the files (weights, optimiser state, RNG, data cursor) is the trainer's business;
// this layer only guarantees that a checkpoint is complete and intact.
#pragma once

#include <torch/nn/module.h>

#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace moelab::train {

inline constexpr const char* kCheckpointFormat = "moelab-checkpoint";
inline constexpr int kCheckpointFormatVersion = 2;  // 2: the manifest carries its checksum
inline constexpr const char* kManifestName = "manifest.json";

/// Writes each file by calling its writer with the path to write to.
using FileWriters = std::map<std::string, std::function<void(const std::string& path)>>;

/// Creates `directory` atomically with the given files and a manifest holding `metadata` under
/// "metadata". Throws CheckpointError if `directory` exists or cannot be created.
void write_checkpoint(const std::string& directory, const FileWriters& files,
                      const nlohmann::json& metadata);

/// Verifies the manifest (format, version, every file's size and CRC-32) and returns it.
/// Throws CheckpointError naming the directory, the file and the problem.
nlohmann::json verify_checkpoint(const std::string& directory);

/// The manifest alone (format and version checked, files not read): for a checkpoint verified
/// just before, whose metadata is wanted without checksumming every file again.
nlohmann::json read_manifest(const std::string& directory);

/// CRC-32 of the manifest's JSON without its own "checksum" field: a manifest carries its
/// checksum, so an edited or damaged one is refused like a damaged file.
uint32_t manifest_checksum(const nlohmann::json& manifest);

/// CRC-32 (zlib) of a whole file.
uint32_t file_crc32(const std::string& path);

/// A module's parameters and buffers, by their stable names, as safetensors.
/// `replacements` are written instead of the module's tensors of the same names (expert
/// parallelism writes whole experts where the module holds this rank's).
void save_module_weights(const torch::nn::Module& module, const std::string& path,
                         const std::map<std::string, std::string>& metadata = {},
                         const std::map<std::string, at::Tensor>& replacements = {});

struct WeightLoading {
  /// Every tensor of the model must be in the file and every tensor of the file in the model.
  /// Off: the model keeps its values where the file has none, and the file's extra tensors are
  /// ignored; both are reported. Shape or dtype mismatches are errors either way.
  bool strict = true;
  /// (from, to): a file tensor whose name starts with `from` is loaded as `to` + the rest
  /// (the first matching pair applies), e.g. {"model.", ""} or {"mlp.", "moe0.experts."}.
  std::vector<std::pair<std::string, std::string>> rename_prefixes;
  /// Applied to each file tensor (by its model name) before it is checked and copied; e.g. expert
  /// parallelism takes this rank's rows of whole experts. Empty: none.
  std::function<at::Tensor(const std::string&, const at::Tensor&)> transform;
};

struct WeightLoadReport {
  std::vector<std::string> loaded;      // model names that received a value
  std::vector<std::string> missing;     // model names the file lacks (non-strict only)
  std::vector<std::string> unexpected;  // file names (after renaming) the model lacks
  std::string describe() const;
};

/// Loads weights saved by save_module_weights (or any safetensors file) into `module`; values
/// are copied to the module's device. Throws CheckpointError listing every mismatched tensor,
/// and, when strict, every missing and unexpected one.
WeightLoadReport load_module_weights(torch::nn::Module& module, const std::string& path,
                                     const WeightLoading& options = {});

}  // namespace moelab::train
