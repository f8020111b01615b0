#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <set>

#include "moelab/data/perturbation.h"
#include "moelab/util/errors.h"
#include "support/fixtures.h"

using moelab::data::PerturbationDataOptions;
using moelab::data::PerturbationTable;
using moelab::testing::error_message;

namespace {

class PerturbationDataTest : public moelab::testing::TempDirTest {
 protected:
  static PerturbationTable table() {
    PerturbationTable t;
    t.sig_ids = {"S0", "S1", "S2", "S3"};
    t.pert_ids = {"P0", "P1", "P0", "P2"};
    t.cell_ids = {"A549", "MCF7", "A549", "MCF7"};
    t.smiles = {"CCO", "c1ccccc1", "CCO", "CC(=O)O"};
    t.doses = {1.0, 10.0, 0.5, 3.33};
    t.genes = {"TP53", "EGFR", "MYC"};
    t.basal = torch::arange(12, torch::kFloat).view({4, 3}) / 7;
    t.treated = t.basal + torch::tensor({{1.0f, 0.0f, -1.0f}, {0.5f, 0.25f, 0.0f}, {0.0f, 2.0f, 0.0f}, {-3.0f, 0.0f, 1.5f}});
    return t;
  }
  void write(const std::string& name, const std::string& text) { std::ofstream(path(name)) << text; }
  std::string read(const std::string& name) {
    std::ifstream in(path(name));
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  static void expect_same(const PerturbationTable& a, const PerturbationTable& b) {
    EXPECT_EQ(a.sig_ids, b.sig_ids);
    EXPECT_EQ(a.pert_ids, b.pert_ids);
    EXPECT_EQ(a.cell_ids, b.cell_ids);
    EXPECT_EQ(a.smiles, b.smiles);
    EXPECT_EQ(a.doses, b.doses);
    EXPECT_EQ(a.genes, b.genes);
    EXPECT_TRUE(torch::equal(a.basal, b.basal));
    EXPECT_TRUE(torch::equal(a.treated, b.treated));
  }
};

}  // namespace

TEST_F(PerturbationDataTest, CsvLayoutRoundTripsAndNamesEveryBrokenCell) {
  moelab::data::write_perturbation_csv(table(), path("csv"));
  const std::string start =
      "sig_id,idx,pert_id,pert_type,cell_id,pert_idose,cell_type,dose,smiles,TP53,EGFR,MYC\n"
      "S0,0,P0,trt_cp,A549,1 uM,A549,1,CCO,1,0.142857149,";
  EXPECT_EQ(read("csv/treated.csv").substr(0, start.size()), start);
  expect_same(moelab::data::read_perturbation_csv(path("csv")), table());

  const std::string header = "sig_id,cell_id,smiles,TP53,EGFR\n";
  std::filesystem::create_directories(path("bad"));
  write("bad/basal.csv", header + "S0,A549,CCO,1,2\n");
  write("bad/treated.csv", header + "S0,A549,CCO,1,x\n");
  EXPECT_EQ(error_message<moelab::DataError>([&] { moelab::data::read_perturbation_csv(path("bad")); }),
            path("bad/treated.csv") + ":2: column EGFR: expected a finite number, got 'x'");
  write("bad/treated.csv", header + "S0,A549,CCO,1,2,3\n");
  EXPECT_EQ(error_message<moelab::DataError>([&] { moelab::data::read_perturbation_csv(path("bad")); }),
            path("bad/treated.csv") + ":2: 6 fields, but the header has 5");
  write("bad/treated.csv", "sig_id,smiles,TP53\nS0,CCO,1\n");
  EXPECT_EQ(error_message<moelab::DataError>([&] { moelab::data::read_perturbation_csv(path("bad")); }),
            path("bad/treated.csv") + ":1: no column 'cell_id' in the header");
  write("bad/treated.csv", header + "S9,A549,CCO,1,2\n");
  EXPECT_EQ(error_message<moelab::DataError>([&] { moelab::data::read_perturbation_csv(path("bad")); }),
            path("bad/basal.csv") + ":2: sig_id 'S0' does not pair with " + path("bad/treated.csv") + ":2's 'S9'");
  write("bad/treated.csv", "sig_id,cell_id,smiles,TP53,KRAS\nS0,A549,CCO,1,2\n");
  EXPECT_EQ(error_message<moelab::DataError>([&] { moelab::data::read_perturbation_csv(path("bad")); }),
            path("bad/basal.csv") + ":1: no column for gene 'KRAS' (treated.csv has it)");
  std::filesystem::remove(path("bad/basal.csv"));
  EXPECT_EQ(error_message<moelab::DataError>([&] { moelab::data::read_perturbation_csv(path("bad")); }),
            path("bad") + ": no basal.csv or basal.tsv (the csv layout)");
}

TEST_F(PerturbationDataTest, GctxLayoutRoundTripsAndRejectsWhatIsNotGctx) {
  moelab::data::write_perturbation_gctx(table(), path("gctx"));
  expect_same(moelab::data::read_perturbation_gctx(path("gctx")), table());
  // Basal and treated must hold the same genes and signatures.
  PerturbationTable other = table();
  other.genes = {"TP53", "EGFR", "KRAS"};
  moelab::data::write_perturbation_gctx(other, path("other"));
  std::filesystem::copy_file(path("other/basal.gctx"), path("gctx/basal.gctx"),
                             std::filesystem::copy_options::overwrite_existing);
  EXPECT_EQ(error_message<moelab::DataError>([&] { moelab::data::read_perturbation_gctx(path("gctx")); }),
            path("gctx/basal.gctx") + ": its genes (/0/META/ROW/id) are not " + path("gctx/treated.gctx") +
                "'s, in the same order");
  write("gctx/treated.gctx", "not hdf5");
  EXPECT_EQ(error_message<moelab::DataError>([&] { moelab::data::read_perturbation_gctx(path("gctx")); }),
            path("gctx/treated.gctx") + ": not an HDF5 file (a GCTX file is one)");
  // A signature of the matrix without a row in signatures.csv.
  moelab::data::write_perturbation_gctx(table(), path("g2"));
  write("g2/signatures.csv", "sig_id,pert_id,cell_id,dose,smiles\nS0,P0,A549,1,CCO\n");
  EXPECT_EQ(error_message<moelab::DataError>([&] { moelab::data::read_perturbation_gctx(path("g2")); }),
            path("g2/signatures.csv") + ": no row for signature 'S1' of " + path("g2/treated.gctx"));
}

TEST_F(PerturbationDataTest, CrossValidationFoldsAre64To16To20AndPartitionTheRows) {
  std::set<int64_t> tests;
  for (int64_t fold = 0; fold < 5; ++fold) {
    const auto split = moelab::data::cross_validation_split(100, 5, fold, 0.2, 7);
    EXPECT_EQ(split.train.size(), 64u);
    EXPECT_EQ(split.val.size(), 16u);
    EXPECT_EQ(split.test.size(), 20u);
    std::set<int64_t> all(split.train.begin(), split.train.end());
    all.insert(split.val.begin(), split.val.end());
    all.insert(split.test.begin(), split.test.end());
    EXPECT_EQ(all.size(), 100u);
    for (int64_t i : split.test) EXPECT_TRUE(tests.insert(i).second) << "row " << i << " tested twice";
  }
  EXPECT_EQ(tests.size(), 100u);
  EXPECT_EQ(moelab::data::cross_validation_split(100, 5, 2, 0.2, 7).test,
            moelab::data::cross_validation_split(100, 5, 2, 0.2, 7).test);
  // 7 rows in 5 folds: sizes 1 or 2.
  EXPECT_EQ(moelab::data::cross_validation_split(7, 5, 0, 0.2, 0).test.size(), 1u);
}

TEST_F(PerturbationDataTest, SplitFilesInJsonOrCsvAndTheirErrors) {
  write("s.json", R"({"train": [0, 1], "val": [2], "test": [3]})");
  auto split = moelab::data::read_split_file(path("s.json"), 4);
  EXPECT_EQ(split.train, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(split.test, (std::vector<int64_t>{3}));
  write("s.csv", "index,split\n3,train\n0,test\n");
  split = moelab::data::read_split_file(path("s.csv"), 4);
  EXPECT_EQ(split.train, (std::vector<int64_t>{3}));
  write("s.csv", "0,train\n9,test\n");
  EXPECT_EQ(error_message<moelab::DataError>([&] { moelab::data::read_split_file(path("s.csv"), 4); }),
            path("s.csv") + ":2: row index 9 is outside [0, 4)");
  write("s.csv", "0,train\n0,test\n");
  EXPECT_EQ(error_message<moelab::DataError>([&] { moelab::data::read_split_file(path("s.csv"), 4); }),
            path("s.csv") + ": row 0 is in more than one split");
  write("s.json", R"({"train": [0, "x"]})");
  EXPECT_EQ(error_message<moelab::DataError>([&] { moelab::data::read_split_file(path("s.json"), 4); }),
            path("s.json") + ": train[1]: expected a row index, got \"x\"");
}

TEST_F(PerturbationDataTest, TheSimulatorWritesBothLayoutsAndItsTruthExplainsTheResponse) {
  const auto options = moelab::data::SimulationOptions()
                           .cell_lines(3).genes(60).samples(200).programs(4).genes_per_program(5).noise(0.05);
  const std::string nci = "/usr/share/RDKit/Data/NCI/first_5K.smi";
  if (!std::filesystem::exists(nci)) GTEST_SKIP() << "rdkit-data is not installed";
  const PerturbationTable table = moelab::data::simulate_perturbation(options, path("sim"));
  expect_same(moelab::data::read_perturbation_csv(path("sim/csv")), table);
  expect_same(moelab::data::read_perturbation_gctx(path("sim/gctx")), table);
  nlohmann::json truth = nlohmann::json::parse(read("sim/truth.json"));
  ASSERT_EQ(truth["programs"].size(), 4u);
  // Genes in no program change by noise only; the rest move where a program is active.
  std::set<int64_t> program_genes;
  for (const auto& p : truth["programs"]) {
    for (int64_t g : p["genes"]) program_genes.insert(g);
  }
  const at::Tensor de = table.treated - table.basal;
  for (int64_t g = 0; g < 60; ++g) {
    if (program_genes.count(g)) continue;
    EXPECT_LT(de.select(1, g).abs().max().item<float>(), 0.05f * 6) << "gene " << g;
  }
  double moved = 0;
  for (int64_t g : program_genes) moved = std::max(moved, de.select(1, g).abs().max().item<double>());
  EXPECT_GT(moved, 0.5);
  // Same seed, same data.
  const PerturbationTable again = moelab::data::simulate_perturbation(options, path("sim2"));
  expect_same(again, table);
}

TEST_F(PerturbationDataTest, TheDataSetSizesTheModelAndFiltersACellLine) {
  moelab::data::write_perturbation_csv(table(), path("csv"));
  auto options = PerturbationDataOptions().path(path("csv")).cache_dir(path("cache")).folds(2).val_fraction(0.5);
  auto splits = moelab::data::load_perturbation_data(options);
  EXPECT_EQ(splits.sizes.at("num_genes"), 3);
  EXPECT_EQ(splits.sizes.at("num_cell_lines"), 2);
  EXPECT_EQ(splits.sizes.at("input_dim"), 1024);
  EXPECT_EQ(splits.cell_line_names, (std::vector<std::string>{"A549", "MCF7"}));
  EXPECT_EQ(splits.train->size() + splits.val->size() + splits.test->size(), 4);
  const auto all = splits.test->range(0, splits.test->size());
  EXPECT_EQ(all.at(moelab::data::kBasal).size(1), 3);
  // gctx gives the same samples.
  moelab::data::write_perturbation_gctx(table(), path("gctx"));
  auto from_gctx = moelab::data::load_perturbation_data(options.path(path("gctx")));
  EXPECT_TRUE(torch::equal(from_gctx.test->range(0, 2).at("targets"), all.at("targets")));
  // One cell line: its signatures only, one embedding.
  options.path(path("csv")).cell_line("MCF7");
  splits = moelab::data::load_perturbation_data(options);
  EXPECT_EQ(splits.sizes.at("num_cell_lines"), 1);
  int64_t n = moelab::data::size_of(splits.train) + moelab::data::size_of(splits.val) + moelab::data::size_of(splits.test);
  EXPECT_EQ(n, 2);
  options.cell_line("HELA");
  EXPECT_EQ(error_message<moelab::ConfigError>([&] { moelab::data::load_perturbation_data(options); }),
            "data.cell_line: no signatures of cell line 'HELA' (the data has: A549, MCF7)");
}
