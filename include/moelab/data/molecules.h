// Molecules as model inputs: Morgan fingerprints computed by RDKit from SMILES (radius 2 and
// 1024 bits by default, as CheMoE), cached on disk by SMILES; and `molecule_property`, a data set
// of SMILES with one measured value per molecule (rdkit-data's NCI set with TPSA values by
// default), which checks a molecule encoder on real chemistry.
//
// Invalid SMILES: the default stops with FILE:LINE, the string and a hint; `on_invalid: skip`
// drops such molecules and counts them (Splits::notes says how many).
#pragma once

#include <ATen/ATen.h>
#include <torch/arg.h>

#include <string>
#include <vector>

#include "moelab/data/dataset.h"

namespace YAML {
class Node;
}

namespace moelab::data {

enum class OnInvalid { kStop, kSkip };

struct MorganOptions {
  /// Bond radius of the atom environments, in [0, 8]. Default 2 (ECFP4).
  TORCH_ARG(int64_t, radius) = 2;
  /// Fingerprint length in bits, in [8, 65536]. Default 1024.
  TORCH_ARG(int64_t, bits) = 1024;
  /// Each feature counts the atom environments hashed to its bit (RDKit's hashed count
  /// fingerprint) instead of 1 for any. Default false (bits, as CheMoE).
  TORCH_ARG(bool, counts) = false;
};

/// One SMILES and where it was read, "FILE:LINE", for messages.
struct SmilesRecord {
  std::string smiles;
  std::string where;
};

struct Fingerprints {
  at::Tensor bits;          // (N, bits) float32, 1 at a set bit (or its count); zeros if invalid
  std::vector<bool> valid;  // (N) RDKit parsed the SMILES
  int64_t invalid = 0;      // molecules RDKit could not parse
};

/// Morgan fingerprints of `molecules` (row i for molecules[i]), computed once per distinct SMILES
/// and cached in CACHE_DIR/morgan-rRADIUS-bBITS.tsv (counts; bits or counts are read from it) (cache_dir "" = io::cache_directory
/// ("fingerprints")). kStop: DataError "WHERE: invalid SMILES 'S' ..." at the first invalid one.
Fingerprints morgan_fingerprints(const std::vector<SmilesRecord>& molecules, const MorganOptions& options,
                                 OnInvalid on_invalid, const std::string& cache_dir = "");

/// SMILES with one value each, as in rdkit-data's NCI/first_5k.tpsa.csv: lines "SMILES,value"
/// or "SMILES<TAB>value", '#' comments and blank lines skipped, a first line whose value is not a
/// number taken as a header. DataError naming FILE:LINE for anything else.
struct MoleculeValues {
  std::vector<SmilesRecord> molecules;
  std::vector<double> values;
};
MoleculeValues read_molecule_values(const std::string& path);

/// SMILES files (.smi): "SMILES[<whitespace>NAME...]" per line, '#' comments and blank lines
/// skipped; the name is the rest of the line ("" if none).
struct NamedMolecules {
  std::vector<SmilesRecord> molecules;
  std::vector<std::string> names;
};
NamedMolecules read_smiles_file(const std::string& path);

struct MoleculePropertyOptions {
  /// The SMILES,value file. Default rdkit-data's /usr/share/RDKit/Data/NCI/first_5k.tpsa.csv.
  TORCH_ARG(std::string, path) = "/usr/share/RDKit/Data/NCI/first_5k.tpsa.csv";
  TORCH_ARG(MorganOptions, fingerprint);
  /// "stop" (default) or "skip" an invalid SMILES.
  TORCH_ARG(OnInvalid, on_invalid) = OnInvalid::kStop;
  /// Held-out test share, in (0, 1). Default 0.2.
  TORCH_ARG(double, test_fraction) = 0.2;
  /// Seeds the train/test split. Default 0.
  TORCH_ARG(uint64_t, seed) = 0;
  /// The fingerprint cache directory; "" = the user's cache (io/cache.h).
  TORCH_ARG(std::string, cache_dir) = "";
};

YAML::Node to_yaml(const MorganOptions& options);
void from_yaml(const YAML::Node& node, MorganOptions& options, const std::string& where);
YAML::Node to_yaml(const MoleculePropertyOptions& options);
void from_yaml(const YAML::Node& node, MoleculePropertyOptions& options, const std::string& where);

/// ConfigError naming the key of a value out of range.
void validate(const MorganOptions& options, const std::string& where);

/// inputs (N, bits) fingerprints, targets (N, 1) the values; a seeded test split.
Splits load_molecule_property(const MoleculePropertyOptions& options);

}  // namespace moelab::data
