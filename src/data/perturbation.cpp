#include "moelab/data/perturbation.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <unordered_map>

#include "internal/gctx.h"
#include "internal/on_invalid_yaml.h"
#include "moelab/config/fields.h"
#include "moelab/io/cache.h"
#include "moelab/io/file.h"
#include "moelab/util/errors.h"

namespace moelab::data {

namespace fs = std::filesystem;

template <typename V>
void visit(V& v, SimulationOptions& o) {
  v.field("molecules", o.molecules());
  v.field("cell_lines", o.cell_lines());
  v.field("genes", o.genes());
  v.field("samples", o.samples());
  v.field("programs", o.programs());
  v.field("genes_per_program", o.genes_per_program());
  v.field("noise", o.noise());
  v.field("seed", o.seed());
}
MOELAB_DEFINE_OPTIONS_YAML(SimulationOptions)

template <typename V>
void visit(V& v, PerturbationDataOptions& o) {
  v.field("path", o.path());
  v.field("simulate", o.simulate());
  v.nested("simulation", o.simulation());
  v.field("format", o.format());
  v.field("molecules", o.molecules());
  v.nested("fingerprint", o.fingerprint());
  v.field("embeddings", o.embeddings());
  v.field("on_invalid", o.on_invalid());
  v.field("split", o.split());
  v.field("folds", o.folds());
  v.field("fold", o.fold());
  v.field("val_fraction", o.val_fraction());
  v.field("split_file", o.split_file());
  v.field("cell_line", o.cell_line());
  v.field("seed", o.seed());
  v.field("cache_dir", o.cache_dir());
}
MOELAB_DEFINE_OPTIONS_YAML(PerturbationDataOptions)

void validate(const PerturbationDataOptions& o, const std::string& where) {
  auto one_of = [&](const std::string& key, const std::string& value, std::vector<std::string> allowed) {
    if (std::find(allowed.begin(), allowed.end(), value) != allowed.end()) return;
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    throw ConfigError(where + "." + key + ": expected one of " + list + ", got '" + value + "'");
  };
  if (o.path().empty() && !o.simulate()) {
    throw ConfigError(where + ".path: the data set's directory is required (or simulate: true)");
  }
  one_of("format", o.format(), {"auto", "csv", "gctx"});
  one_of("molecules", o.molecules(), {"fingerprint", "embeddings"});
  one_of("split", o.split(), {"cv", "file"});
  validate(o.fingerprint(), where + ".fingerprint");
  if (o.molecules() == "embeddings" && o.embeddings().empty()) {
    throw ConfigError(where + ".embeddings: molecules: embeddings needs the embeddings file");
  }
  if (o.folds() < 2) throw ConfigError(where + ".folds: must be >= 2, got " + std::to_string(o.folds()));
  if (o.fold() < 0 || o.fold() >= o.folds()) {
    throw ConfigError(where + ".fold: must be in [0, folds=" + std::to_string(o.folds()) + "), got " +
                      std::to_string(o.fold()));
  }
  if (!(o.val_fraction() >= 0 && o.val_fraction() < 1)) {
    throw ConfigError(where + ".val_fraction: must be in [0, 1), got " + config::shortest_text(o.val_fraction()));
  }
  if (o.split() == "file" && o.split_file().empty()) {
    throw ConfigError(where + ".split_file: split: file needs a split file");
  }
}

// ---- delimited text -------------------------------------------------------------------------

namespace {

const std::vector<std::string> kMetadataColumns{"sig_id",     "idx",       "pert_id", "pert_type", "cell_id",
                                                "pert_idose", "cell_type", "dose",    "smiles"};

// Fields of one line; a field in double quotes may hold the separator ("" is a quote).
std::vector<std::string> split_fields(const std::string& line, char separator) {
  std::vector<std::string> fields(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        fields.back() += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        fields.back() += c;
      }
    } else if (c == '"' && fields.back().empty()) {
      quoted = true;
    } else if (c == separator) {
      fields.emplace_back();
    } else {
      fields.back() += c;
    }
  }
  return fields;
}

struct TextTable {
  std::string path;
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  std::vector<int64_t> lines;  // 1-based line of each row
  int64_t column(const std::string& name, bool required) const {
    const auto it = std::find(header.begin(), header.end(), name);
    if (it != header.end()) return it - header.begin();
    if (required) throw DataError(path + ":1: no column '" + name + "' in the header");
    return -1;
  }
  std::string where(size_t row) const { return path + ":" + std::to_string(lines[row]); }
};

TextTable read_text_table(const std::string& path) {
  TextTable table;
  table.path = path;
  std::ifstream in(path);
  if (!in) throw DataError(path + ": cannot open");
  const char separator = fs::path(path).extension() == ".tsv" ? '\t' : ',';
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    std::vector<std::string> fields = split_fields(line, separator);
    if (table.header.empty()) {
      table.header = std::move(fields);
      continue;
    }
    if (fields.size() != table.header.size()) {
      throw DataError(path + ":" + std::to_string(number) + ": " + std::to_string(fields.size()) +
                      " fields, but the header has " + std::to_string(table.header.size()));
    }
    table.rows.push_back(std::move(fields));
    table.lines.push_back(number);
  }
  if (table.header.empty()) throw DataError(path + ": empty (expected a header line)");
  return table;
}

double parse_cell(const TextTable& table, size_t row, int64_t column) {
  const std::string& text = table.rows[row][column];
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(value)) {
    throw DataError(table.where(row) + ": column " + table.header[column] +
                    ": expected a finite number, got '" + text + "'");
  }
  return value;
}

std::string find_file(const std::string& dir, const std::string& stem, const char* layout) {
  for (const char* extension : {".csv", ".tsv"}) {
    const std::string path = (fs::path(dir) / (stem + extension)).string();
    if (fs::is_regular_file(path)) return path;
  }
  throw DataError(dir + ": no " + stem + ".csv or " + stem + ".tsv (" + layout + ")");
}

std::string text_of(double value) { return fmt::format("{:.9g}", value); }

std::string quoted(const std::string& field, char separator) {
  if (field.find(separator) == std::string::npos && field.find('"') == std::string::npos) return field;
  std::string out = "\"";
  for (char c : field) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

// Signature metadata of rows of a table (treated.csv or signatures.csv).
void read_metadata(const TextTable& table, PerturbationTable& out) {
  const int64_t sig = table.column("sig_id", true), cell = table.column("cell_id", true),
                smiles = table.column("smiles", true), pert = table.column("pert_id", false),
                dose = table.column("dose", false);
  for (size_t r = 0; r < table.rows.size(); ++r) {
    out.sig_ids.push_back(table.rows[r][sig]);
    out.cell_ids.push_back(table.rows[r][cell]);
    out.smiles.push_back(table.rows[r][smiles]);
    out.pert_ids.push_back(pert >= 0 ? table.rows[r][pert] : "");
    out.doses.push_back(dose >= 0 && !table.rows[r][dose].empty() ? parse_cell(table, r, dose) : 0.0);
    if (out.cell_ids.back().empty()) throw DataError(table.where(r) + ": column cell_id: empty");
  }
}

}  // namespace

PerturbationTable read_perturbation_csv(const std::string& dir) {
  const TextTable treated = read_text_table(find_file(dir, "treated", "the csv layout"));
  const TextTable basal = read_text_table(find_file(dir, "basal", "the csv layout"));
  PerturbationTable out;
  read_metadata(treated, out);
  std::vector<int64_t> gene_columns;
  for (size_t c = 0; c < treated.header.size(); ++c) {
    if (std::find(kMetadataColumns.begin(), kMetadataColumns.end(), treated.header[c]) == kMetadataColumns.end()) {
      gene_columns.push_back(static_cast<int64_t>(c));
      out.genes.push_back(treated.header[c]);
    }
  }
  if (gene_columns.empty()) throw DataError(treated.path + ":1: no gene columns after the metadata columns");
  if (basal.rows.size() != treated.rows.size()) {
    throw DataError(basal.path + ": " + std::to_string(basal.rows.size()) + " rows, but " + treated.path +
                    " has " + std::to_string(treated.rows.size()) + " (rows pair one to one)");
  }
  std::vector<int64_t> basal_columns;
  for (const auto& gene : out.genes) {
    const int64_t c = basal.column(gene, false);
    if (c < 0) throw DataError(basal.path + ":1: no column for gene '" + gene + "' (treated.csv has it)");
    basal_columns.push_back(c);
  }
  const int64_t basal_sig = basal.column("sig_id", false);
  const int64_t n = treated.rows.size(), g = gene_columns.size();
  out.treated = at::empty({n, g}, at::kFloat);
  out.basal = at::empty({n, g}, at::kFloat);
  float* t = out.treated.data_ptr<float>();
  float* b = out.basal.data_ptr<float>();
  for (int64_t r = 0; r < n; ++r) {
    if (basal_sig >= 0 && basal.rows[r][basal_sig] != out.sig_ids[r]) {
      throw DataError(basal.where(r) + ": sig_id '" + basal.rows[r][basal_sig] + "' does not pair with " +
                      treated.where(r) + "'s '" + out.sig_ids[r] + "'");
    }
    for (int64_t j = 0; j < g; ++j) {
      t[r * g + j] = static_cast<float>(parse_cell(treated, r, gene_columns[j]));
      b[r * g + j] = static_cast<float>(parse_cell(basal, r, basal_columns[j]));
    }
  }
  return out;
}

void write_perturbation_csv(const PerturbationTable& table, const std::string& dir) {
  fs::create_directories(dir);
  const int64_t g = static_cast<int64_t>(table.genes.size());
  auto write = [&](const std::string& name, const at::Tensor& values) {
    const at::Tensor v = values.contiguous();
    const float* x = v.data_ptr<float>();
    io::write_file_atomic((fs::path(dir) / name).string(), [&](io::CheckedFile& file) {
      std::string text;
      for (size_t c = 0; c < kMetadataColumns.size(); ++c) text += (c ? "," : "") + kMetadataColumns[c];
      for (const auto& gene : table.genes) text += "," + quoted(gene, ',');
      text += '\n';
      for (int64_t r = 0; r < table.size(); ++r) {
        const std::string dose = text_of(table.doses[r]);
        for (const std::string& field :
             {table.sig_ids[r], std::to_string(r), table.pert_ids[r], std::string("trt_cp"), table.cell_ids[r],
              dose + " uM", table.cell_ids[r], dose, table.smiles[r]}) {
          text += quoted(field, ',') + ",";
        }
        text.pop_back();
        for (int64_t j = 0; j < g; ++j) text += "," + text_of(x[r * g + j]);
        text += '\n';
        if (text.size() > (1 << 20)) {
          file.write(text);
          text.clear();
        }
      }
      file.write(text);
    });
  };
  write("treated.csv", table.treated);
  write("basal.csv", table.basal);
}

PerturbationTable read_perturbation_gctx(const std::string& dir) {
  const std::string treated_path = (fs::path(dir) / "treated.gctx").string();
  const std::string basal_path = (fs::path(dir) / "basal.gctx").string();
  const internal::GctxMatrix treated = internal::read_gctx(treated_path);
  const internal::GctxMatrix basal = internal::read_gctx(basal_path);
  if (basal.row_ids != treated.row_ids) {
    throw DataError(basal_path + ": its genes (/0/META/ROW/id) are not " + treated_path + "'s, in the same order");
  }
  if (basal.col_ids != treated.col_ids) {
    throw DataError(basal_path + ": its signatures (/0/META/COL/id) are not " + treated_path +
                    "'s, in the same order (basal and treated columns pair one to one)");
  }
  const TextTable signatures = read_text_table(find_file(dir, "signatures", "the gctx layout's signature table"));
  PerturbationTable rows;
  read_metadata(signatures, rows);
  std::unordered_map<std::string, size_t> row_of;
  for (size_t r = 0; r < rows.sig_ids.size(); ++r) row_of.emplace(rows.sig_ids[r], r);
  PerturbationTable out;
  out.genes = treated.row_ids;
  for (const auto& sig : treated.col_ids) {
    const auto it = row_of.find(sig);
    if (it == row_of.end()) {
      throw DataError(signatures.path + ": no row for signature '" + sig + "' of " + treated_path);
    }
    out.sig_ids.push_back(sig);
    out.pert_ids.push_back(rows.pert_ids[it->second]);
    out.cell_ids.push_back(rows.cell_ids[it->second]);
    out.smiles.push_back(rows.smiles[it->second]);
    out.doses.push_back(rows.doses[it->second]);
  }
  const int64_t n = treated.col_ids.size(), g = treated.row_ids.size();
  out.treated = at::tensor(treated.values, at::kFloat).view({n, g});
  out.basal = at::tensor(basal.values, at::kFloat).view({n, g});
  return out;
}

void write_perturbation_gctx(const PerturbationTable& table, const std::string& dir) {
  fs::create_directories(dir);
  auto matrix = [&](const at::Tensor& values) {
    const at::Tensor v = values.contiguous();
    return internal::GctxMatrix{table.genes, table.sig_ids,
                                std::vector<float>(v.data_ptr<float>(), v.data_ptr<float>() + v.numel())};
  };
  internal::write_gctx(matrix(table.treated), (fs::path(dir) / "treated.gctx").string());
  internal::write_gctx(matrix(table.basal), (fs::path(dir) / "basal.gctx").string());
  io::write_file_atomic((fs::path(dir) / "signatures.csv").string(), [&](io::CheckedFile& file) {
    std::string text = "sig_id,pert_id,cell_id,dose,smiles\n";
    for (int64_t r = 0; r < table.size(); ++r) {
      text += quoted(table.sig_ids[r], ',') + "," + quoted(table.pert_ids[r], ',') + "," +
              quoted(table.cell_ids[r], ',') + "," + text_of(table.doses[r]) + "," + quoted(table.smiles[r], ',') + "\n";
    }
    file.write(text);
  });
}

// ---- splits --------------------------------------------------------------------------------

RowSplit cross_validation_split(int64_t n, int64_t folds, int64_t fold, double val_fraction, uint64_t seed) {
  TORCH_CHECK(folds >= 2 && fold >= 0 && fold < folds, "cross_validation_split: fold ", fold, " of ", folds);
  const at::Tensor order = epoch_permutation(seed, /*epoch=*/0, n);
  const int64_t* o = order.data_ptr<int64_t>();
  // Fold f holds positions [f n / folds, (f + 1) n / folds) of the seeded order: sizes differ
  // by at most one.
  const int64_t begin = fold * n / folds, end = (fold + 1) * n / folds;
  RowSplit split;
  std::vector<int64_t> rest;
  for (int64_t i = 0; i < n; ++i) (i >= begin && i < end ? split.test : rest).push_back(o[i]);
  const at::Tensor rest_order = epoch_permutation(seed, /*epoch=*/1, static_cast<int64_t>(rest.size()));
  const int64_t* ro = rest_order.data_ptr<int64_t>();
  const int64_t val = std::llround(val_fraction * static_cast<double>(rest.size()));
  for (int64_t i = 0; i < static_cast<int64_t>(rest.size()); ++i) {
    (i < val ? split.val : split.train).push_back(rest[ro[i]]);
  }
  return split;
}

RowSplit read_split_file(const std::string& path, int64_t n) {
  RowSplit split;
  auto add = [&](const std::string& part, int64_t index, const std::string& where) {
    if (index < 0 || index >= n) {
      throw DataError(where + ": row index " + std::to_string(index) + " is outside [0, " + std::to_string(n) + ")");
    }
    if (part == "train") split.train.push_back(index);
    else if (part == "val") split.val.push_back(index);
    else if (part == "test") split.test.push_back(index);
    else throw DataError(where + ": split '" + part + "' is not train, val or test");
  };
  const std::string text = io::read_file(path);
  if (fs::path(path).extension() == ".json") {
    nlohmann::json json;
    try {
      json = nlohmann::json::parse(text);
    } catch (const std::exception& e) {
      throw DataError(path + ": not valid JSON: " + e.what());
    }
    if (!json.is_object()) throw DataError(path + ": expected {\"train\": [...], \"val\": [...], \"test\": [...]}");
    for (const auto& [part, indices] : json.items()) {
      if (!indices.is_array()) throw DataError(path + ": \"" + part + "\" must be a list of row indices");
      for (size_t i = 0; i < indices.size(); ++i) {
        const std::string where = path + ": " + part + "[" + std::to_string(i) + "]";
        if (!indices[i].is_number_integer()) throw DataError(where + ": expected a row index, got " + indices[i].dump());
        add(part, indices[i].get<int64_t>(), where);
      }
    }
  } else {
    std::istringstream in(text);
    std::string line;
    int64_t number = 0;
    while (std::getline(in, line)) {
      ++number;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty() || (number == 1 && line.rfind("index", 0) == 0)) continue;
      const std::string where = path + ":" + std::to_string(number);
      const auto fields = split_fields(line, ',');
      char* end = nullptr;
      const long long index = fields.size() == 2 ? std::strtoll(fields[0].c_str(), &end, 10) : 0;
      if (fields.size() != 2 || fields[0].empty() || *end != '\0') {
        throw DataError(where + ": expected 'index,split' (split train, val or test), got '" + line + "'");
      }
      add(fields[1], index, where);
    }
  }
  std::set<int64_t> seen;
  for (const auto* part : {&split.train, &split.val, &split.test}) {
    for (int64_t i : *part) {
      if (!seen.insert(i).second) throw DataError(path + ": row " + std::to_string(i) + " is in more than one split");
    }
  }
  if (split.train.empty()) throw DataError(path + ": no training rows");
  return split;
}

// ---- the data set --------------------------------------------------------------------------

namespace {

// Rows of an embeddings CSV, keyed by their first column (a SMILES or a pert_id).
std::unordered_map<std::string, std::vector<float>> read_embeddings(const std::string& path, int64_t& width) {
  const TextTable table = read_text_table(path);
  width = static_cast<int64_t>(table.header.size()) - 1;
  if (width < 1) throw DataError(path + ":1: expected a key column and at least one value column");
  std::unordered_map<std::string, std::vector<float>> out;
  for (size_t r = 0; r < table.rows.size(); ++r) {
    std::vector<float> values;
    for (int64_t c = 1; c <= width; ++c) values.push_back(static_cast<float>(parse_cell(table, r, c)));
    out.emplace(table.rows[r][0], std::move(values));
  }
  return out;
}

}  // namespace

std::string perturbation_data_directory(const PerturbationDataOptions& o) {
  if (!o.simulate()) return o.path();
  std::string out = o.path();
  if (out.empty()) {
    io::Fnv64 key;
    key.add("moelab-perturbation-simulation-v1");
    YAML::Emitter emitter;
    emitter << to_yaml(o.simulation());
    key.add(emitter.c_str());
    out = io::cache_directory("perturbation", o.cache_dir().empty() ? "" : o.cache_dir() + "/perturbation") +
          "/sim-" + key.hex();
  }
  // truth.json is written last: a set without it is incomplete and is simulated again.
  if (!fs::exists(fs::path(out) / "truth.json")) simulate_perturbation(o.simulation(), out);
  return out;
}

Splits load_perturbation_data(const PerturbationDataOptions& o) {
  validate(o, "data");
  const std::string dir = perturbation_data_directory(o);
  // A simulated set holds both layouts: csv/ and gctx/.
  const std::string read_from =
      o.simulate() ? (fs::path(dir) / (o.format() == "gctx" ? "gctx" : "csv")).string() : dir;
  if (!fs::is_directory(read_from)) throw DataError(read_from + ": no such directory (data.path)");
  const bool gctx = o.format() == "gctx" ||
                    (o.format() == "auto" && fs::exists(fs::path(read_from) / "treated.gctx"));
  const PerturbationTable table = gctx ? read_perturbation_gctx(read_from) : read_perturbation_csv(read_from);
  const int64_t n = table.size();
  if (n == 0) throw DataError(read_from + ": no signatures");
  Splits splits;

  // Molecule features, row by row.
  at::Tensor features;
  std::vector<bool> usable(n, true);
  if (o.molecules() == "fingerprint") {
    std::vector<SmilesRecord> records;
    for (int64_t r = 0; r < n; ++r) {
      records.push_back({table.smiles[r], read_from + ": signature " + table.sig_ids[r] + " (smiles)"});
    }
    Fingerprints fingerprints = morgan_fingerprints(records, o.fingerprint(), o.on_invalid(), o.cache_dir());
    features = fingerprints.bits;
    for (int64_t r = 0; r < n; ++r) usable[r] = fingerprints.valid[r];
    if (fingerprints.invalid > 0) {
      splits.notes.push_back(fmt::format("{} of {} signatures have an invalid SMILES and were skipped",
                                         fingerprints.invalid, n));
    }
  } else {
    int64_t width = 0;
    const auto embeddings = read_embeddings(o.embeddings(), width);
    features = at::zeros({n, width}, at::kFloat);
    int64_t missing = 0;
    for (int64_t r = 0; r < n; ++r) {
      auto it = embeddings.find(table.smiles[r]);
      if (it == embeddings.end()) it = embeddings.find(table.pert_ids[r]);
      if (it == embeddings.end()) {
        ++missing;  // zeros, as the published code gives a molecule without an embedding
        continue;
      }
      std::copy(it->second.begin(), it->second.end(), features[r].data_ptr<float>());
    }
    if (missing > 0) {
      splits.notes.push_back(fmt::format("{} of {} signatures have no entry in {} and get a zero embedding",
                                         missing, n, o.embeddings()));
    }
  }

  // Cell lines, in order of first appearance.
  std::vector<std::string> names;
  std::map<std::string, int64_t> index_of;
  std::vector<int64_t> cell(n);
  for (int64_t r = 0; r < n; ++r) {
    auto [it, added] = index_of.emplace(table.cell_ids[r], static_cast<int64_t>(names.size()));
    if (added) names.push_back(table.cell_ids[r]);
    cell[r] = it->second;
  }
  if (!o.cell_line().empty()) {
    const auto it = index_of.find(o.cell_line());
    if (it == index_of.end()) {
      std::string list;
      for (const auto& name : names) list += (list.empty() ? "" : ", ") + name;
      throw ConfigError("data.cell_line: no signatures of cell line '" + o.cell_line() + "' (the data has: " +
                        list + ")");
    }
    for (int64_t r = 0; r < n; ++r) {
      usable[r] = usable[r] && cell[r] == it->second;
      cell[r] = 0;
    }
    names = {o.cell_line()};
  }

  const RowSplit split = o.split() == "file" ? read_split_file(o.split_file(), n)
                                             : cross_validation_split(n, o.folds(), o.fold(), o.val_fraction(), o.seed());
  Batch all({{kInputs, features},
             {kBasal, table.basal},
             {kCellLine, at::tensor(cell, at::kLong)},
             {kTargets, table.treated},
             {kSignatureRow, at::arange(n, at::kLong)}});
  auto part = [&](const std::vector<int64_t>& rows) -> std::shared_ptr<DataSource> {
    std::vector<int64_t> kept;
    for (int64_t r : rows) {
      if (usable[r]) kept.push_back(r);
    }
    if (kept.empty()) return nullptr;
    return std::make_shared<TensorSet>(all.rows(at::tensor(kept, at::kLong)));
  };
  splits.train = part(split.train);
  splits.val = part(split.val);
  splits.test = part(split.test);
  if (!splits.train) throw DataError(read_from + ": no training signatures left after the split and filters");
  splits.sizes = {{"input_dim", features.size(1)},
                  {"num_genes", static_cast<int64_t>(table.genes.size())},
                  {"num_cell_lines", static_cast<int64_t>(names.size())}};
  splits.cell_line_names = names;
  return splits;
}

// ---- the simulator ------------------------------------------------------------------------

PerturbationTable simulate_perturbation(const SimulationOptions& o, const std::string& out_dir) {
  auto require = [](bool ok, const std::string& key, const std::string& rule, auto value) {
    if (!ok) throw ConfigError("simulate-perturbation: --" + key + " must be " + rule + ", got " + fmt::format("{}", value));
  };
  require(o.cell_lines() >= 1, "cell-lines", ">= 1", o.cell_lines());
  require(o.genes() >= 2, "genes", ">= 2", o.genes());
  require(o.samples() >= 1, "samples", ">= 1", o.samples());
  require(o.programs() >= 1, "programs", ">= 1", o.programs());
  require(o.genes_per_program() >= 1 && o.genes_per_program() <= o.genes(), "genes-per-program",
          "in [1, genes=" + std::to_string(o.genes()) + "]", o.genes_per_program());
  require(std::isfinite(o.noise()) && o.noise() >= 0, "noise", "finite and >= 0", o.noise());

  // Compounds: the valid molecules of the file, their fingerprints (radius 2, 1024 bits).
  const NamedMolecules read = read_smiles_file(o.molecules());
  const MorganOptions morgan;
  const Fingerprints all_bits = morgan_fingerprints(read.molecules, morgan, OnInvalid::kSkip);
  std::vector<int64_t> valid;
  for (size_t i = 0; i < read.molecules.size(); ++i) {
    if (all_bits.valid[i]) valid.push_back(static_cast<int64_t>(i));
  }
  require(valid.size() >= 2, "molecules", "a file with at least 2 valid SMILES", o.molecules());
  at::Generator gen = at::detail::createCPUGenerator(o.seed());
  // A pool of compounds, each profiled in several cell lines and doses, as LINCS profiles them.
  const int64_t pool_size = std::min<int64_t>(static_cast<int64_t>(valid.size()), std::max<int64_t>(2, o.samples() / 4));
  const at::Tensor pool_pick = at::randperm(static_cast<int64_t>(valid.size()), gen, at::kLong).slice(0, 0, pool_size);
  std::vector<int64_t> pool;
  for (int64_t i = 0; i < pool_size; ++i) pool.push_back(valid[pool_pick[i].item<int64_t>()]);
  const at::Tensor pool_bits = all_bits.bits.index_select(0, at::tensor(pool, at::kLong));  // (P, 1024)

  // Programs: a trigger bit set in 5-40% of the pool (a common substructure, not a rare one),
  // its genes, and a signed effect per gene.
  const at::Tensor frequency = pool_bits.mean(0);  // (1024)
  std::vector<int64_t> candidates;
  for (int64_t bit = 0; bit < morgan.bits(); ++bit) {
    const float f = frequency[bit].item<float>();
    if (f >= 0.05f && f <= 0.4f) candidates.push_back(bit);
  }
  require(static_cast<int64_t>(candidates.size()) >= o.programs(), "programs",
          "at most the " + std::to_string(candidates.size()) + " bits set in 5-40% of the compounds", o.programs());
  const at::Tensor trigger_pick = at::randperm(static_cast<int64_t>(candidates.size()), gen, at::kLong);
  const int64_t p = o.programs(), g = o.genes(), c = o.cell_lines(), n = o.samples();
  std::vector<int64_t> triggers;
  at::Tensor effect = at::zeros({p, g}, at::kDouble);  // (P, G) signed effect of each program
  nlohmann::json programs = nlohmann::json::array();
  for (int64_t q = 0; q < p; ++q) {
    triggers.push_back(candidates[trigger_pick[q].item<int64_t>()]);
    const at::Tensor genes = at::randperm(g, gen, at::kLong).slice(0, 0, o.genes_per_program());
    const at::Tensor sign = at::randint(0, 2, {o.genes_per_program()}, gen, at::kDouble) * 2 - 1;
    // U(1, 2.5): the top changes of a LINCS level-5 signature are z-scores of about 2-6.
    const at::Tensor size = at::rand({o.genes_per_program()}, gen, at::kDouble) * 1.5 + 1.0;
    effect[q].index_put_({genes}, sign * size);
    const at::Tensor gene_effect = effect[q].index_select(0, genes).contiguous();
    programs.push_back({{"trigger_bit", triggers.back()},
                        {"genes", std::vector<int64_t>(genes.data_ptr<int64_t>(), genes.data_ptr<int64_t>() + genes.numel())},
                        {"effect", std::vector<double>(gene_effect.data_ptr<double>(),
                                                       gene_effect.data_ptr<double>() + gene_effect.numel())}});
  }
  // Cell lines: a basal profile each, and a strength per program, U(0.5, 1.5), or 0 for ~30%:
  // the program is silent in that cell line.
  const at::Tensor basal_profile = at::normal(0.0, 1.0, {c, g}, gen, at::kDouble);
  const at::Tensor strength = (at::rand({c, p}, gen, at::kDouble) + 0.5) *
                              at::rand({c, p}, gen, at::kDouble).ge(0.3).to(at::kDouble);
  // Signatures.
  const at::Tensor compound = at::randint(0, pool_size, {n}, gen, at::kLong);
  const at::Tensor cell = at::randint(0, c, {n}, gen, at::kLong);
  const std::vector<double> dose_levels{0.37, 1.11, 3.33, 10.0};  // micromolar, as LINCS doses
  const at::Tensor dose_index = at::randint(0, static_cast<int64_t>(dose_levels.size()), {n}, gen, at::kLong);
  at::Tensor active = at::zeros({n, p}, at::kDouble);  // (N, P) programs the compound triggers
  for (int64_t q = 0; q < p; ++q) {
    active.select(1, q).copy_(pool_bits.select(1, triggers[q]).index_select(0, compound).to(at::kDouble));
  }
  at::Tensor doses = at::tensor(dose_levels, at::kDouble).index_select(0, dose_index);
  const at::Tensor dose_effect = (doses + 1).log() / std::log(11.0);  // (N) in (0, 1]
  const at::Tensor basal = basal_profile.index_select(0, cell) +
                           at::normal(0.0, 1.0, {n, g}, gen, at::kDouble) * (0.5 * o.noise());
  const at::Tensor response = (active * strength.index_select(0, cell)).mm(effect) * dose_effect.unsqueeze(1);
  const at::Tensor treated = basal + response + at::normal(0.0, 1.0, {n, g}, gen, at::kDouble) * o.noise();

  PerturbationTable table;
  for (int64_t j = 0; j < g; ++j) table.genes.push_back(fmt::format("G{:04d}", j));
  std::vector<std::string> cell_names;
  for (int64_t k = 0; k < c; ++k) cell_names.push_back(fmt::format("CELL{:02d}", k));
  for (int64_t r = 0; r < n; ++r) {
    const int64_t molecule = pool[compound[r].item<int64_t>()];
    table.sig_ids.push_back(fmt::format("SIM{:06d}", r));
    table.pert_ids.push_back(read.names[molecule].empty() ? fmt::format("MOL{}", molecule) : "NCI-" + read.names[molecule]);
    table.cell_ids.push_back(cell_names[cell[r].item<int64_t>()]);
    table.smiles.push_back(read.molecules[molecule].smiles);
    table.doses.push_back(doses[r].item<double>());
  }
  table.basal = basal.to(at::kFloat);
  table.treated = treated.to(at::kFloat);
  write_perturbation_csv(table, (fs::path(out_dir) / "csv").string());
  write_perturbation_gctx(table, (fs::path(out_dir) / "gctx").string());
  auto rows_of = [](const at::Tensor& t) {
    std::vector<std::vector<double>> rows;
    const at::Tensor x = t.to(at::kDouble).contiguous();
    for (int64_t i = 0; i < x.size(0); ++i) {
      rows.emplace_back(x[i].data_ptr<double>(), x[i].data_ptr<double>() + x.size(1));
    }
    return rows;
  };
  nlohmann::json truth{{"format", "moelab-perturbation-truth"},
                       {"format_version", 1},
                       {"options", {{"molecules", o.molecules()}, {"cell_lines", c}, {"genes", g},
                                    {"samples", n}, {"programs", p}, {"genes_per_program", o.genes_per_program()},
                                    {"noise", o.noise()}, {"seed", o.seed()}}},
                       {"model", "treated = basal + log(1 + dose) / log(11) x sum_p active[sig, p] x "
                                 "strength[cell, p] x effect[p] + N(0, noise^2); basal = profile[cell] + "
                                 "N(0, (noise / 2)^2); active[sig, p] = the compound has program p's trigger bit "
                                 "(Morgan radius 2, 1024 bits)"},
                       {"cell_lines", cell_names},
                       {"programs", programs},
                       {"strength", rows_of(strength)},
                       {"active_programs", rows_of(active)}};
  io::write_file_atomic((fs::path(out_dir) / "truth.json").string(), truth.dump(1) + "\n");
  return table;
}

}  // namespace moelab::data
