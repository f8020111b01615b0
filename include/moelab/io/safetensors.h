// Reading and writing the safetensors format (Hugging Face): an 8-byte little-endian header
// length, a JSON header mapping each tensor name to {dtype, shape, data_offsets} plus an optional
// "__metadata__" map of strings, then the raw little-endian bytes. moelab exchanges model weights
// in this format (export, checkpoints); see https://huggingface.co/docs/safetensors for the spec.
// Reading validates everything a truncated or hand-edited file can get wrong and throws DataError
// naming the file and the problem. Memory-mapping and lazy loading are left out: moelab's files
// are read whole.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace moelab::io {

/// Named tensors in the order they are written.
using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

struct SafetensorsFile {
  std::map<std::string, at::Tensor> tensors;  // CPU, contiguous
  std::map<std::string, std::string> metadata;
};

/// Writes `tensors` (any device; copied to CPU) to `path` through a temporary file and a rename,
/// so an existing file is never left half-written. Names must be unique and non-empty.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

/// Reads a whole file. Throws DataError naming `path` on any malformed content.
SafetensorsFile load_safetensors(const std::string& path);

/// The safetensors dtype string of a scalar type ("F32", "BF16", "I64", ...).
std::string safetensors_dtype(at::ScalarType type);

}  // namespace moelab::io
