// The one place moelab calls RDKit (Debian's librdkit): SMILES in, fingerprint bits out. Kept to
// a plain C++ interface in its own translation unit so that RDKit's and Boost's headers reach no
// other file (they would slow every LibTorch file's build and clash with nothing but time).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace moelab::data::internal {

/// The Morgan fingerprint of `smiles` folded to `bits` (RDKit's GetHashedMorganFingerprint:
/// radius, no chirality, default atom invariants) as ascending bits, each repeated as often as
/// atom environments hash to it; the distinct bits are exactly GetMorganFingerprintAsBitVect's
/// (checked on all 4,993 valid NCI first_5K molecules). nullopt if RDKit cannot parse or sanitise
/// `smiles`. RDKit's own error log is silenced: the caller reports the file and line.
std::optional<std::vector<uint32_t>> morgan_bit_counts(const std::string& smiles, int radius, int bits);

}  // namespace moelab::data::internal
