#include "moelab/io/safetensors.h"

#include "moelab/io/file.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <set>

#include "moelab/util/errors.h"

namespace moelab::io {

namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O assumes a little-endian host");

// The header of a file we did not write can claim anything; no real one comes close to this.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DtypeName {
  at::ScalarType type;
  const char* name;
};
constexpr DtypeName kDtypes[] = {
    {at::kDouble, "F64"}, {at::kFloat, "F32"},  {at::kHalf, "F16"}, {at::kBFloat16, "BF16"},
    {at::kLong, "I64"},   {at::kInt, "I32"},    {at::kShort, "I16"}, {at::kChar, "I8"},
    {at::kByte, "U8"},    {at::kBool, "BOOL"},
};

at::ScalarType scalar_type_of(const std::string& name, const std::string& path,
                              const std::string& tensor) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return d.type;
  }
  throw DataError(path + ": tensor '" + tensor + "' has unsupported dtype '" + name + "'");
}

[[noreturn]] void fail(const std::string& path, const std::string& problem) {
  throw DataError(path + ": " + problem);
}

}  // namespace

std::string safetensors_dtype(at::ScalarType type) {
  for (const auto& d : kDtypes) {
    if (type == d.type) return d.name;
  }
  TORCH_CHECK(false, "safetensors: no dtype for ", type);
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> cpu;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    TORCH_CHECK(!name.empty() && name != "__metadata__", "save_safetensors: invalid tensor name '",
                name, "'");
    TORCH_CHECK(names.insert(name).second, "save_safetensors: tensor name '", name,
                "' appears twice");
    TORCH_CHECK(tensor.defined(), "save_safetensors: tensor '", name, "' is undefined");
    at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
    const uint64_t bytes = t.numel() * t.element_size();
    header[name] = {{"dtype", safetensors_dtype(t.scalar_type())},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    cpu.push_back(std::move(t));
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data then starts 8-byte aligned
  const uint64_t header_size = text.size();

  write_file_atomic(path, [&](CheckedFile& file) {
    file.write(&header_size, sizeof(header_size));
    file.write(text);
    for (const auto& t : cpu) file.write(t.data_ptr(), t.numel() * t.element_size());
  });
}

SafetensorsFile load_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) fail(path, "cannot open (missing or unreadable)");
  const auto file_size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  uint64_t header_size = 0;
  if (file_size < sizeof(header_size)) {
    fail(path, "file is " + std::to_string(file_size) +
                   " bytes, too short for the 8-byte header length (truncated?)");
  }
  in.read(reinterpret_cast<char*>(&header_size), sizeof(header_size));
  if (header_size > kMaxHeaderBytes || header_size > file_size - sizeof(header_size)) {
    fail(path, "header length " + std::to_string(header_size) + " does not fit in the " +
                   std::to_string(file_size) + "-byte file (truncated or not safetensors)");
  }
  std::string text(header_size, '\0');
  in.read(text.data(), static_cast<std::streamsize>(header_size));
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) fail(path, "header must be a JSON object");

  const uint64_t data_size = file_size - sizeof(header_size) - header_size;
  std::vector<char> data(data_size);
  in.read(data.data(), static_cast<std::streamsize>(data_size));
  if (!in) fail(path, "could not read the " + std::to_string(data_size) + " data bytes");

  SafetensorsFile file;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail(path, "__metadata__ must be an object of strings");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) fail(path, "__metadata__." + key + " must be a string");
        file.metadata[key] = value.get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
        !entry.contains("data_offsets")) {
      fail(path, where + " needs dtype, shape and data_offsets");
    }
    if (!entry["dtype"].is_string()) fail(path, where + ": dtype must be a string");
    const at::ScalarType type = scalar_type_of(entry["dtype"].get<std::string>(), path, name);
    std::vector<int64_t> shape;
    for (const auto& dim : entry["shape"]) {
      if (!dim.is_number_unsigned()) fail(path, where + ": shape must hold non-negative integers");
      shape.push_back(dim.get<int64_t>());
    }
    const auto& offsets = entry["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned()) {
      fail(path, where + ": data_offsets must be [begin, end]");
    }
    const uint64_t begin = offsets[0].get<uint64_t>(), end = offsets[1].get<uint64_t>();
    uint64_t numel = 1;
    for (int64_t d : shape) numel *= static_cast<uint64_t>(d);
    const uint64_t expected = numel * c10::elementSize(type);
    if (begin > end || end > data_size) {
      fail(path, where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                     ") lie outside the " + std::to_string(data_size) + " data bytes (truncated?)");
    }
    if (end - begin != expected) {
      fail(path, where + ": data_offsets span " + std::to_string(end - begin) +
                     " bytes but dtype and shape need " + std::to_string(expected));
    }
    ranges.emplace_back(begin, end);
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(type));
    if (expected > 0) std::memcpy(t.data_ptr(), data.data() + begin, expected);
    file.tensors.emplace(name, std::move(t));
  }
  // The spec forbids holes and overlaps: the ranges must tile the data exactly.
  std::sort(ranges.begin(), ranges.end());
  uint64_t covered = 0;
  for (const auto& [begin, end] : ranges) {
    if (begin != covered) {
      fail(path, begin < covered ? "tensors overlap at byte " + std::to_string(begin)
                                 : "data bytes [" + std::to_string(covered) + ", " +
                                       std::to_string(begin) + ") belong to no tensor");
    }
    covered = end;
  }
  if (covered != data_size) {
    fail(path, "data bytes [" + std::to_string(covered) + ", " + std::to_string(data_size) +
                   ") belong to no tensor");
  }
  return file;
}

}  // namespace moelab::io
