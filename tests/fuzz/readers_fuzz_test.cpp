// A seeded mutation fuzzer for every reader of user files: safetensors, IDX (plain and gzip),
// CIFAR, checkpoint manifests and config files. Each round takes a valid file, flips, inserts,
// deletes or truncates bytes (or overwrites a size field with an extreme value), and reads it.
// A reader must then return normally or throw its typed error (DataError, CheckpointError,
// ConfigError) - never crash, hang, allocate without bound or throw anything else. libFuzzer
// needs clang, which these machines do not have; a bounded seeded loop runs in `make test`.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "moelab/config/config.h"
#include "moelab/data/images.h"
#include "moelab/io/safetensors.h"
#include "moelab/train/checkpoint.h"
#include "moelab/util/errors.h"
#include "support/fixtures.h"

namespace {

constexpr int kRounds = 2000;

std::string read_bytes_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes_to(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

std::string mutate(std::string bytes, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> kind(0, 5);
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int e = 0; e < edits && !bytes.empty(); ++e) {
    const size_t at = rng() % bytes.size();
    switch (kind(rng)) {
      case 0: bytes[at] = static_cast<char>(bytes[at] ^ (1 << (rng() % 8))); break;
      case 1: bytes[at] = static_cast<char>(rng()); break;
      case 2: bytes.insert(at, 1 + rng() % 16, static_cast<char>(rng())); break;
      case 3: bytes.erase(at, 1 + rng() % 16); break;
      case 4: bytes.resize(at); break;
      default:  // an extreme 4-byte value, where sizes live in binary headers
        for (size_t i = 0; i < 4 && at + i < bytes.size(); ++i) bytes[at + i] = '\xff';
    }
  }
  return bytes;
}

// Reads `path` through `read` after each mutation of `valid`; fails on any unexpected outcome.
template <typename Error>
void fuzz(const std::string& path, const std::string& valid, uint64_t seed,
          const std::function<void()>& read) {
  std::mt19937_64 rng(seed);
  for (int round = 0; round < kRounds; ++round) {
    write_bytes_to(path, mutate(valid, rng));
    try {
      read();
    } catch (const Error&) {
    } catch (const std::exception& e) {
      FAIL() << path << " round " << round << ": untyped error: " << e.what();
    }
  }
}

class ReadersFuzzTest : public moelab::testing::TempDirTest {};

}  // namespace

TEST_F(ReadersFuzzTest, SafetensorsReader) {
  moelab::io::save_safetensors(path("w.safetensors"),
                               {{"a", torch::randn({3, 4})}, {"b", torch::arange(5)}}, {{"k", "v"}});
  fuzz<moelab::DataError>(path("m.safetensors"), read_bytes_of(path("w.safetensors")), 1,
                          [&] { moelab::io::load_safetensors(path("m.safetensors")); });
}

TEST_F(ReadersFuzzTest, IdxReaderPlainAndGzip) {
  std::string idx{'\0', '\0', '\x08', '\x03', '\0', '\0', '\0', '\x05', '\0', '\0', '\0', '\x04',
                  '\0', '\0', '\0', '\x04'};
  for (int i = 0; i < 80; ++i) idx.push_back(static_cast<char>(i * 3));
  fuzz<moelab::DataError>(path("m.idx"), idx, 2, [&] { moelab::data::read_idx(path("m.idx")); });
  gzFile f = gzopen(path("v.idx.gz").c_str(), "wb");
  gzwrite(f, idx.data(), static_cast<unsigned>(idx.size()));
  gzclose(f);
  fuzz<moelab::DataError>(path("m.idx.gz"), read_bytes_of(path("v.idx.gz")), 3,
                          [&] { moelab::data::read_idx(path("m.idx.gz")); });
}

TEST_F(ReadersFuzzTest, CifarReader) {
  std::string records;
  for (int r = 0; r < 3; ++r) {
    records.push_back(static_cast<char>(r));
    records.append(3072, static_cast<char>(r * 40));
  }
  fuzz<moelab::DataError>(path("m.bin"), records, 4, [&] {
    moelab::data::load_cifar_binary({path("m.bin")}, /*label_bytes=*/1, /*label_index=*/0);
  });
}

TEST_F(ReadersFuzzTest, CheckpointManifest) {
  moelab::train::write_checkpoint(
      path("c"), {{"a.txt", [](const std::string& p) { std::ofstream(p) << "weights"; }}},
      {{"step", 3}, {"epoch", 0}, {"cursor", 64}});
  const std::string manifest = path("c") + "/" + moelab::train::kManifestName;
  fuzz<moelab::CheckpointError>(manifest, read_bytes_of(manifest), 5,
                                [&] { moelab::train::verify_checkpoint(path("c")); });
}

TEST_F(ReadersFuzzTest, ConfigFiles) {
  const std::string valid =
      "model:\n  name: mlp_moe\n  moe: {d_model: 32, router: {top_k: 2}}\n"
      "train:\n  max_steps: 60\n  optimizer: {name: adamw, lr: 3.0e-3}\n"
      "  groups: [{match: '*.bias', weight_decay: 0}]\n";
  fuzz<moelab::ConfigError>(path("m.yaml"), valid, 6,
                            [&] { moelab::config::load_file(path("m.yaml")); });
}
