#include "moelab/data/molecules.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include "internal/on_invalid_yaml.h"
#include "internal/rdkit_molecules.h"
#include "moelab/config/fields.h"
#include "moelab/io/cache.h"
#include "moelab/io/file.h"
#include "moelab/util/errors.h"

namespace moelab::data {

namespace fs = std::filesystem;

template <typename V>
void visit(V& v, MorganOptions& o) {
  v.field("radius", o.radius());
  v.field("bits", o.bits());
  v.field("counts", o.counts());
}
MOELAB_DEFINE_OPTIONS_YAML(MorganOptions)

template <typename V>
void visit(V& v, MoleculePropertyOptions& o) {
  v.field("path", o.path());
  v.nested("fingerprint", o.fingerprint());
  v.field("on_invalid", o.on_invalid());
  v.field("test_fraction", o.test_fraction());
  v.field("seed", o.seed());
  v.field("cache_dir", o.cache_dir());
}
MOELAB_DEFINE_OPTIONS_YAML(MoleculePropertyOptions)

void validate(const MorganOptions& o, const std::string& where) {
  if (o.radius() < 0 || o.radius() > 8) {
    throw ConfigError(where + ".radius: must be in [0, 8], got " + std::to_string(o.radius()));
  }
  if (o.bits() < 8 || o.bits() > 65536) {
    throw ConfigError(where + ".bits: must be in [8, 65536], got " + std::to_string(o.bits()));
  }
}

namespace {

using BitCache = std::unordered_map<std::string, std::vector<uint32_t>>;
constexpr const char* kInvalidMark = "-";

// CACHE/morgan-rR-bB.tsv: a header line, then "SMILES<TAB>bit,bit,..." (ascending, a bit repeated
// as often as it is counted) or "SMILES<TAB>-" (RDKit cannot parse it). A line that does not read back is ignored: it is recomputed and rewritten.
std::string cache_file(const MorganOptions& o, const std::string& cache_dir) {
  return io::cache_directory("fingerprints", cache_dir) +
         fmt::format("/morgan-r{}-b{}.tsv", o.radius(), o.bits());
}

std::string cache_header(const MorganOptions& o) {
  return fmt::format("# moelab morgan fingerprint cache v2 radius {} bits {} (bit counts)", o.radius(), o.bits());
}

BitCache read_cache(const std::string& path, const MorganOptions& o,
                    std::unordered_map<std::string, bool>* invalid) {
  BitCache cache;
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line) || line != cache_header(o)) return cache;
  while (std::getline(in, line)) {
    const size_t tab = line.find('\t');
    if (tab == std::string::npos || tab == 0) continue;
    const std::string smiles = line.substr(0, tab), bits = line.substr(tab + 1);
    if (bits == kInvalidMark) {
      (*invalid)[smiles] = true;
      continue;
    }
    std::vector<uint32_t> on;
    std::istringstream fields(bits);
    std::string field;
    bool ok = true;
    while (ok && std::getline(fields, field, ',')) {
      char* end = nullptr;
      const unsigned long bit = std::strtoul(field.c_str(), &end, 10);
      ok = !field.empty() && *end == '\0' && bit < static_cast<unsigned long>(o.bits());
      if (ok) on.push_back(static_cast<uint32_t>(bit));
    }
    if (ok) cache[smiles] = std::move(on);
  }
  return cache;
}

}  // namespace

Fingerprints morgan_fingerprints(const std::vector<SmilesRecord>& molecules, const MorganOptions& o,
                                 OnInvalid on_invalid, const std::string& cache_dir) {
  validate(o, "fingerprint");
  const std::string path = cache_file(o, cache_dir);
  std::unordered_map<std::string, bool> invalid;
  BitCache cache = read_cache(path, o, &invalid);
  bool added = false;
  Fingerprints result;
  result.bits = at::zeros({static_cast<int64_t>(molecules.size()), o.bits()}, at::kFloat);
  result.valid.assign(molecules.size(), true);
  float* rows = result.bits.data_ptr<float>();
  for (size_t i = 0; i < molecules.size(); ++i) {
    const std::string& smiles = molecules[i].smiles;
    auto hit = cache.find(smiles);
    if (hit == cache.end() && !invalid.count(smiles)) {
      std::optional<std::vector<uint32_t>> on;
      // RDKit reads "" as a molecule with no atoms; a missing structure is not a molecule here.
      if (!smiles.empty() && smiles.find_first_of("\t\n\r") == std::string::npos) {
        on = internal::morgan_bit_counts(smiles, static_cast<int>(o.radius()), static_cast<int>(o.bits()));
      }
      added = true;
      if (on) {
        hit = cache.emplace(smiles, std::move(*on)).first;
      } else {
        invalid[smiles] = true;
      }
    }
    if (hit == cache.end()) {
      if (on_invalid == OnInvalid::kStop) {
        throw DataError(molecules[i].where + ": invalid SMILES '" + smiles +
                        "' (RDKit cannot parse it; HINT: fix or remove the line, or set "
                        "on_invalid: skip to leave such molecules out and count them)");
      }
      result.valid[i] = false;
      ++result.invalid;
      continue;
    }
    float* row = rows + static_cast<int64_t>(i) * o.bits();
    for (uint32_t bit : hit->second) row[bit] = o.counts() ? row[bit] + 1.0f : 1.0f;
  }
  if (added) {
    std::error_code ec;
    fs::create_directories(fs::path(path).parent_path(), ec);
    if (!ec) {
      // Rewritten whole and renamed into place: another process reading it sees the old or the
      // new file. A cache that cannot be written costs only the recomputation next time.
      try {
        io::write_file_atomic(path, [&](io::CheckedFile& file) {
          std::string text = cache_header(o) + "\n";
          for (const auto& [smiles, on] : cache) {
            text += smiles;
            text += '\t';
            for (size_t b = 0; b < on.size(); ++b) text += (b ? "," : "") + std::to_string(on[b]);
            text += '\n';
          }
          for (const auto& [smiles, _] : invalid) text += smiles + "\t" + kInvalidMark + "\n";
          file.write(text);
        });
      } catch (const IoError&) {
      }
    }
  }
  return result;
}

namespace {

std::vector<std::string> lines_of(const std::string& path, const char* what) {
  if (!fs::is_regular_file(path)) {
    throw DataError(path + ": no such file (" + what + ")");
  }
  std::ifstream in(path);
  if (!in) throw DataError(path + ": cannot open (" + what + ")");
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
  }
  return lines;
}

bool skipped(const std::string& line) {
  const size_t first = line.find_first_not_of(" \t");
  return first == std::string::npos || line[first] == '#';
}

std::optional<double> parse_number(const std::string& text) {
  const size_t first = text.find_first_not_of(" \t"), last = text.find_last_not_of(" \t");
  if (first == std::string::npos) return std::nullopt;
  const std::string trimmed = text.substr(first, last - first + 1);
  char* end = nullptr;
  const double value = std::strtod(trimmed.c_str(), &end);
  if (end != trimmed.c_str() + trimmed.size()) return std::nullopt;
  return value;
}

}  // namespace

MoleculeValues read_molecule_values(const std::string& path) {
  MoleculeValues out;
  const auto lines = lines_of(path, "SMILES,value lines");
  bool first = true;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& line = lines[i];
    if (skipped(line)) continue;
    const std::string where = path + ":" + std::to_string(i + 1);
    const char separator = line.find('\t') != std::string::npos ? '\t' : ',';
    const size_t at = line.rfind(separator);
    if (at == std::string::npos) {
      throw DataError(where + ": expected 'SMILES,value', got '" + line + "'");
    }
    const std::string smiles = line.substr(0, line.find(separator));
    const std::optional<double> value = parse_number(line.substr(at + 1));
    const bool was_first = first;
    first = false;
    if (!value) {
      if (was_first) continue;  // a header line
      throw DataError(where + ": expected a number after the SMILES, got '" + line.substr(at + 1) + "'");
    }
    if (!std::isfinite(*value)) {
      throw DataError(where + ": the value must be finite, got '" + line.substr(at + 1) + "'");
    }
    out.molecules.push_back({smiles, where});
    out.values.push_back(*value);
  }
  if (out.molecules.empty()) throw DataError(path + ": no 'SMILES,value' lines");
  return out;
}

NamedMolecules read_smiles_file(const std::string& path) {
  NamedMolecules out;
  const auto lines = lines_of(path, "a SMILES file");
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& line = lines[i];
    if (skipped(line)) continue;
    const size_t start = line.find_first_not_of(" \t");
    const size_t end = line.find_first_of(" \t", start);
    std::string name;
    if (end != std::string::npos) {
      const size_t name_start = line.find_first_not_of(" \t", end);
      if (name_start != std::string::npos) name = line.substr(name_start);
    }
    out.molecules.push_back({line.substr(start, end == std::string::npos ? end : end - start),
                             path + ":" + std::to_string(i + 1)});
    out.names.push_back(name);
  }
  if (out.molecules.empty()) throw DataError(path + ": no SMILES lines");
  return out;
}

Splits load_molecule_property(const MoleculePropertyOptions& o) {
  validate(o.fingerprint(), "data.fingerprint");
  if (!(o.test_fraction() > 0 && o.test_fraction() < 1)) {
    throw ConfigError("data.test_fraction: must be in (0, 1), got " + config::shortest_text(o.test_fraction()));
  }
  const MoleculeValues read = read_molecule_values(o.path());
  const Fingerprints fingerprints =
      morgan_fingerprints(read.molecules, o.fingerprint(), o.on_invalid(), o.cache_dir());
  std::vector<int64_t> kept;
  for (size_t i = 0; i < read.values.size(); ++i) {
    if (fingerprints.valid[i]) kept.push_back(static_cast<int64_t>(i));
  }
  if (kept.size() < 2) throw DataError(o.path() + ": fewer than 2 valid molecules");
  const at::Tensor rows = at::tensor(kept, at::kLong);
  const at::Tensor inputs = fingerprints.bits.index_select(0, rows);
  const at::Tensor targets =
      at::tensor(read.values, at::kDouble).index_select(0, rows).to(at::kFloat).unsqueeze(1);
  // The test rows: the first test_fraction of a seeded permutation (pure function of the seed).
  const int64_t n = rows.size(0);
  const int64_t test = std::max<int64_t>(1, std::llround(o.test_fraction() * static_cast<double>(n)));
  const at::Tensor order = epoch_permutation(o.seed(), /*epoch=*/0, n);
  const at::Tensor test_rows = order.slice(0, 0, test), train_rows = order.slice(0, test);
  Splits splits;
  Batch all({{kInputs, inputs}, {kTargets, targets}});
  splits.train = std::make_shared<TensorSet>(all.rows(train_rows));
  splits.test = std::make_shared<TensorSet>(all.rows(test_rows));
  if (fingerprints.invalid > 0) {
    splits.notes.push_back(fmt::format("{} of {} molecules in {} have an invalid SMILES and were skipped",
                                       fingerprints.invalid, read.values.size(), o.path()));
  }
  return splits;
}

}  // namespace moelab::data
