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

namespace moelab::train {

inline constexpr const char* kCheckpointFormat = "moelab-checkpoint";
inline constexpr int kCheckpointFormatVersion = 1;
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

/// CRC-32 (zlib) of a whole file.
uint32_t file_crc32(const std::string& path);

/// A module's parameters and buffers, by their stable names, as safetensors.
void save_module_weights(const torch::nn::Module& module, const std::string& path,
                         const std::map<std::string, std::string>& metadata = {});

/// Loads weights saved by save_module_weights into `module` (same names, shapes, dtypes; values
/// are copied to the module's device). Throws CheckpointError listing every missing, unexpected
/// or mismatched tensor.
void load_module_weights(torch::nn::Module& module, const std::string& path);

}  // namespace moelab::train
