// Gene-expression response to a compound (LINCS L1000 style), the data of CheMoE: per signature a
// compound (SMILES), a cell line, a dose, the cell line's basal expression and the treated
// expression, over the same G genes. Two layouts on disk, both read and written here:
//
//   csv   DIR/treated.csv and DIR/basal.csv (or .tsv), the published CheMoE code's layout: the
//         metadata columns sig_id, idx, pert_id, pert_type, cell_id, pert_idose, cell_type, dose,
//         smiles, then one column per gene; row i of basal.csv is the basal profile paired with
//         row i of treated.csv (same sig_id).
//   gctx  DIR/treated.gctx and DIR/basal.gctx (HDF5, the LINCS GCTX layout: /0/DATA/0/matrix
//         (signatures x genes, float32), /0/META/ROW/id the gene ids, /0/META/COL/id the
//         signature ids) plus DIR/signatures.csv (sig_id, pert_id, cell_id, dose, smiles).
//
// Splits: PDGrapher's protocol, a seeded 5-fold cross-validation whose training part is split
// 80/20 into train and validation (64/16/20), or a user's split file; all cell lines with the
// cell-line embedding, or one (`cell_line: NAME`). Every format error names the file, the row and
// column, and what was expected.
//
// The simulator writes such a data set from real molecules, with its ground truth beside it
// (see simulate_perturbation).
#pragma once

#include <ATen/ATen.h>
#include <torch/arg.h>

#include <string>
#include <vector>

#include "moelab/data/dataset.h"
#include "moelab/data/molecules.h"

namespace YAML {
class Node;
}

namespace moelab::data {

inline constexpr const char* kBasal = "basal";          // (B, G) float32 basal expression
inline constexpr const char* kCellLine = "cell_line";   // (B) int64, indexes Splits::cell_line_names
inline constexpr const char* kSignatureRow = "signature_row";  // (B) int64, the row in the table read

/// Signatures as both layouts hold them.
struct PerturbationTable {
  std::vector<std::string> sig_ids, pert_ids, cell_ids, smiles;
  std::vector<double> doses;
  std::vector<std::string> genes;  // (G) gene ids, the column order of basal and treated
  at::Tensor basal, treated;       // (N, G) float32
  int64_t size() const { return static_cast<int64_t>(sig_ids.size()); }
};

/// DIR/treated.csv + DIR/basal.csv (or .tsv); DataError "FILE:ROW: column C: ..." for a bad
/// cell, a missing column, rows that do not pair.
PerturbationTable read_perturbation_csv(const std::string& dir);
/// DIR/treated.gctx + DIR/basal.gctx + DIR/signatures.csv; DataError naming the file and the
/// dataset or row.
PerturbationTable read_perturbation_gctx(const std::string& dir);
/// Writes the csv layout (files replaced atomically).
void write_perturbation_csv(const PerturbationTable& table, const std::string& dir);
/// Writes the gctx layout.
void write_perturbation_gctx(const PerturbationTable& table, const std::string& dir);

struct SimulationOptions {
  /// A SMILES file (.smi, rdkit-data's NCI/first_5K.smi by default): compounds are drawn from it.
  TORCH_ARG(std::string, molecules) = "/usr/share/RDKit/Data/NCI/first_5K.smi";
  TORCH_ARG(int64_t, cell_lines) = 10;
  TORCH_ARG(int64_t, genes) = 978;
  TORCH_ARG(int64_t, samples) = 4000;
  /// Gene programs: each is switched on by a substructure (a Morgan bit) and moves its genes.
  TORCH_ARG(int64_t, programs) = 16;
  /// Genes per program. Default 40.
  TORCH_ARG(int64_t, genes_per_program) = 40;
  /// Standard deviation of the measurement noise. Default 0.1.
  TORCH_ARG(double, noise) = 0.1;
  TORCH_ARG(uint64_t, seed) = 0;
};

struct PerturbationDataOptions {
  /// The data set's directory (required unless simulate: true).
  TORCH_ARG(std::string, path) = "";
  /// Read a simulated set (simulate_perturbation with `simulation`) from PATH/csv (or
  /// PATH/gctx), simulating it first if PATH holds none; PATH "" = the user's cache, keyed by
  /// the simulation options. Default false.
  TORCH_ARG(bool, simulate) = false;
  TORCH_ARG(SimulationOptions, simulation);
  /// "auto" (gctx if DIR/treated.gctx exists, else csv), "csv" or "gctx".
  TORCH_ARG(std::string, format) = "auto";
  /// Molecule features: "fingerprint" (Morgan, from the SMILES) or "embeddings" (a file).
  TORCH_ARG(std::string, molecules) = "fingerprint";
  TORCH_ARG(MorganOptions, fingerprint);
  /// molecules: embeddings: a CSV whose first column is a SMILES or pert_id and the rest the
  /// vector. A molecule with no entry gets zeros (as the published code) and is counted.
  TORCH_ARG(std::string, embeddings) = "";
  /// "stop" (default) or "skip" signatures whose SMILES RDKit cannot parse.
  TORCH_ARG(OnInvalid, on_invalid) = OnInvalid::kStop;
  /// "cv" (seeded folds) or "file" (split_file).
  TORCH_ARG(std::string, split) = "cv";
  /// cv: folds (>= 2, default 5) and the test fold (in [0, folds), default 0).
  TORCH_ARG(int64_t, folds) = 5;
  TORCH_ARG(int64_t, fold) = 0;
  /// cv: validation share of the training part, in [0, 1). Default 0.2 (64/16/20).
  TORCH_ARG(double, val_fraction) = 0.2;
  /// split: file: JSON {"train": [...], "val": [...], "test": [...]} of row indices, or CSV
  /// lines "index,split" with split train/val/test.
  TORCH_ARG(std::string, split_file) = "";
  /// "" = every cell line (with the cell-line embedding); a name = that cell line's signatures.
  TORCH_ARG(std::string, cell_line) = "";
  /// Seeds the folds. Default 0.
  TORCH_ARG(uint64_t, seed) = 0;
  /// The fingerprint cache directory; "" = the user's cache.
  TORCH_ARG(std::string, cache_dir) = "";
};

YAML::Node to_yaml(const SimulationOptions& options);
void from_yaml(const YAML::Node& node, SimulationOptions& options, const std::string& where);
YAML::Node to_yaml(const PerturbationDataOptions& options);
void from_yaml(const YAML::Node& node, PerturbationDataOptions& options, const std::string& where);
/// ConfigError naming the key of an invalid value.
void validate(const PerturbationDataOptions& options, const std::string& where);

/// The directory the options read: `path`, or with simulate: true the simulated set's directory
/// (OUT of simulate_perturbation, which holds truth.json), simulated first if it is missing.
std::string perturbation_data_directory(const PerturbationDataOptions& options);

/// Train/val/test sets of inputs (N, F) molecule features, basal (N, G), cell_line (N), targets
/// (N, G) treated expression, signature_row (N); sizes input_dim, num_genes, num_cell_lines;
/// cell line names.
Splits load_perturbation_data(const PerturbationDataOptions& options);

/// Row indices (train, val, test) of `n` samples: fold `fold` of `folds` seeded folds is the
/// test set, and the first val_fraction of the rest (seeded) the validation set.
struct RowSplit {
  std::vector<int64_t> train, val, test;
};
RowSplit cross_validation_split(int64_t n, int64_t folds, int64_t fold, double val_fraction, uint64_t seed);

/// A user's split file (see split_file) over `n` rows; DataError naming the file and entry.
RowSplit read_split_file(const std::string& path, int64_t n);


/// Writes OUT/csv/ and OUT/gctx/ (the same signatures in both layouts) and OUT/truth.json: the
/// programs (trigger bit, genes, direction), each cell line's program strengths, and each
/// signature's active programs. The model of the response: treated = profile[cell] + log(1 +
/// dose) / log(11) x sum over programs the compound triggers of strength[cell, program] (U(0.5,
/// 1.5), or 0 in ~30% of cell lines) x effect[program] (+-U(1, 2.5) on its genes) + N(0,
/// noise^2); basal = profile[cell] + N(0, (noise / 2)^2). Returns the table written.
PerturbationTable simulate_perturbation(const SimulationOptions& options, const std::string& out_dir);

}  // namespace moelab::data
