#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "moelab/data/molecules.h"
#include "moelab/util/errors.h"
#include "support/fixtures.h"

using moelab::data::MorganOptions;
using moelab::data::OnInvalid;
using moelab::data::SmilesRecord;
using moelab::testing::error_message;

namespace {

class MoleculesTest : public moelab::testing::TempDirTest {
 protected:
  moelab::data::Fingerprints fingerprints(const std::vector<std::string>& smiles, MorganOptions options = {},
                                          OnInvalid on_invalid = OnInvalid::kStop) {
    std::vector<SmilesRecord> records;
    for (size_t i = 0; i < smiles.size(); ++i) records.push_back({smiles[i], "mols.smi:" + std::to_string(i + 1)});
    return moelab::data::morgan_fingerprints(records, options, on_invalid, path("cache"));
  }
  static std::vector<int64_t> on_bits(const at::Tensor& row) {
    const at::Tensor on = row.nonzero().view({-1});
    return std::vector<int64_t>(on.data_ptr<int64_t>(), on.data_ptr<int64_t>() + on.numel());
  }
  void write(const std::string& name, const std::string& text) { std::ofstream(path(name)) << text; }
};

}  // namespace

TEST_F(MoleculesTest, MorganBitsAreRDKitsForKnownMolecules) {
  // RDKit 2022.09's GetMorganFingerprintAsBitVect(mol, 2, nBits=1024) on-bits.
  const auto fp = fingerprints({"CCO", "c1ccccc1", "CC(=O)Oc1ccccc1C(=O)O"});
  EXPECT_EQ(on_bits(fp.bits[0]), (std::vector<int64_t>{33, 80, 222, 294, 386, 807}));
  EXPECT_EQ(on_bits(fp.bits[1]), (std::vector<int64_t>{64, 389, 849}));
  EXPECT_EQ(on_bits(fp.bits[2]),
            (std::vector<int64_t>{11, 23, 33, 64, 175, 356, 386, 389, 423, 444, 456, 592, 650, 695, 705,
                                  726, 751, 807, 849, 893, 909, 946, 967, 1017}));
  EXPECT_EQ(fp.bits.max().item<float>(), 1.0f);
  // Counts: benzene's six identical atoms give each of its three environments (radius 0, 1, 2)
  // six times; the set bits are the same.
  const auto counts = fingerprints({"c1ccccc1", "CCO"}, MorganOptions().counts(true));
  EXPECT_EQ(on_bits(counts.bits[0]), (std::vector<int64_t>{64, 389, 849}));
  EXPECT_EQ(counts.bits[0].sum().item<float>(), 18.0f);
  EXPECT_EQ(on_bits(counts.bits[1]), on_bits(fp.bits[0]));
  // Radius and length are options: radius 0 sees atoms only.
  const auto radius0 = fingerprints({"c1ccccc1"}, MorganOptions().radius(0).bits(2048));
  EXPECT_EQ(radius0.bits.size(1), 2048);
  EXPECT_EQ(radius0.bits[0].sum().item<float>(), 1.0f);
}

TEST_F(MoleculesTest, InvalidSmilesStopWithFileLineAndStringOrAreSkippedAndCounted) {
  EXPECT_EQ(error_message<moelab::DataError>([&] { fingerprints({"CCO", "C1CC", "CC"}); }),
            "mols.smi:2: invalid SMILES 'C1CC' (RDKit cannot parse it; HINT: fix or remove the line, or set "
            "on_invalid: skip to leave such molecules out and count them)");
  const auto fp = fingerprints({"CCO", "C1CC", "", "c1ccccc1"}, {}, OnInvalid::kSkip);
  EXPECT_EQ(fp.invalid, 2);
  EXPECT_EQ(fp.valid, (std::vector<bool>{true, false, false, true}));
  EXPECT_EQ(fp.bits[1].sum().item<float>(), 0.0f);
}

TEST_F(MoleculesTest, TheCacheIsWrittenReusedAndADamagedLineIsRecomputed) {
  const auto first = fingerprints({"CCO", "c1ccccc1", "C1CC"}, {}, OnInvalid::kSkip);
  const std::string file = path("cache") + "/morgan-r2-b1024.tsv";
  ASSERT_TRUE(std::filesystem::exists(file));
  std::string text;
  {
    std::ifstream in(file);
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  EXPECT_NE(text.find("CCO\t33,80,222,294,386,807\n"), std::string::npos);
  EXPECT_NE(text.find("C1CC\t-\n"), std::string::npos);
  // A damaged entry (a bit out of range) is not trusted: it is computed again.
  const size_t at = text.find("CCO\t");
  text.replace(at, text.find('\n', at) - at, "CCO\t33,99999");
  write("cache/morgan-r2-b1024.tsv", text);
  const auto again = fingerprints({"CCO", "c1ccccc1"});
  EXPECT_TRUE(torch::equal(again.bits, first.bits.slice(0, 0, 2)));
}

TEST_F(MoleculesTest, ValueFilesSkipCommentsAndAHeaderAndNameABadLine) {
  write("v.csv", "# TPSA values\nsmiles,tpsa\nCCO,20.23\n\nc1ccccc1\t0\n");
  const auto read = moelab::data::read_molecule_values(path("v.csv"));
  ASSERT_EQ(read.values, (std::vector<double>{20.23, 0.0}));
  EXPECT_EQ(read.molecules[1].smiles, "c1ccccc1");
  EXPECT_EQ(read.molecules[1].where, path("v.csv") + ":5");
  write("bad.csv", "smiles,tpsa\nCCO,20.23\nCC,abc\n");
  EXPECT_EQ(error_message<moelab::DataError>([&] { moelab::data::read_molecule_values(path("bad.csv")); }),
            path("bad.csv") + ":3: expected a number after the SMILES, got 'abc'");
  EXPECT_EQ(error_message<moelab::DataError>([&] { moelab::data::read_molecule_values(path("none.csv")); }),
            path("none.csv") + ": no such file (SMILES,value lines)");
  write("m.smi", "CCO ethanol\n# comment\nc1ccccc1\t2\n");
  const auto smi = moelab::data::read_smiles_file(path("m.smi"));
  EXPECT_EQ(smi.names, (std::vector<std::string>{"ethanol", "2"}));
  EXPECT_EQ(smi.molecules[1].smiles, "c1ccccc1");
}

TEST_F(MoleculesTest, MoleculePropertySplitsTheInstalledNciSetWithTpsaTargets) {
  const std::string nci = "/usr/share/RDKit/Data/NCI/first_5k.tpsa.csv";
  if (!std::filesystem::exists(nci)) GTEST_SKIP() << "rdkit-data is not installed";
  const auto splits = moelab::data::load_molecule_property(
      moelab::data::MoleculePropertyOptions().on_invalid(OnInvalid::kSkip).cache_dir(path("cache")));
  // 4,999 molecules, 6 of which RDKit rejects; 20% of the rest held out.
  EXPECT_EQ(splits.train->size() + splits.test->size(), 4993);
  EXPECT_EQ(splits.test->size(), 999);
  ASSERT_EQ(splits.notes.size(), 1u);
  EXPECT_NE(splits.notes[0].find("6 of 4999 molecules"), std::string::npos);
  const auto first = splits.train->range(0, 4);
  EXPECT_EQ(first.at("inputs").size(1), 1024);
  EXPECT_EQ(first.at("targets").sizes(), at::IntArrayRef({4, 1}));
}
