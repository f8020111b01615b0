#include "rdkit_molecules.h"

#include <DataStructs/SparseIntVect.h>
#include <GraphMol/Fingerprints/MorganFingerprints.h>
#include <GraphMol/SmilesParse/SmilesParse.h>
#include <RDGeneral/RDLog.h>

#include <memory>
#include <mutex>

namespace moelab::data::internal {

namespace {

std::unique_ptr<RDKit::ROMol> parse(const std::string& smiles) {
  static std::once_flag silenced;
  std::call_once(silenced, [] { boost::logging::disable_logs("rdApp.*"); });
  try {
    return std::unique_ptr<RDKit::ROMol>(RDKit::SmilesToMol(smiles));
  } catch (const std::exception&) {  // sanitisation failures may throw rather than return null
    return nullptr;
  }
}

}  // namespace

std::optional<std::vector<uint32_t>> morgan_bit_counts(const std::string& smiles, int radius, int bits) {
  const auto molecule = parse(smiles);
  if (!molecule) return std::nullopt;
  std::unique_ptr<RDKit::SparseIntVect<uint32_t>> fingerprint(
      RDKit::MorganFingerprints::getHashedFingerprint(*molecule, radius, bits));
  std::vector<uint32_t> repeated;
  for (const auto& [bit, count] : fingerprint->getNonzeroElements()) {
    repeated.insert(repeated.end(), static_cast<size_t>(count), bit);
  }
  return repeated;
}

}  // namespace moelab::data::internal
