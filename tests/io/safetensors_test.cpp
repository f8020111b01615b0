#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "moelab/io/safetensors.h"
#include "moelab/util/errors.h"
#include "support/fixtures.h"

namespace fs = std::filesystem;
using moelab::io::load_safetensors;
using moelab::io::save_safetensors;

namespace {

class SafetensorsTest : public moelab::testing::TempDirTest {
 protected:
  // Writes a file with the given header text and `data_bytes` zero bytes after it.
  std::string raw_file(const std::string& header, size_t data_bytes) {
    const std::string p = path("raw.safetensors");
    std::ofstream out(p, std::ios::binary);
    const uint64_t n = header.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << header << std::string(data_bytes, '\0');
    return p;
  }

  void expect_data_error(const std::string& file, const std::string& fragment) {
    try {
      load_safetensors(file);
      ADD_FAILURE() << "expected DataError containing: " << fragment;
    } catch (const moelab::DataError& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(file), std::string::npos) << "must name the file";
    }
  }
};

}  // namespace

TEST_F(SafetensorsTest, RoundTripsEveryDtypeAndMetadata) {
  moelab::io::NamedTensors tensors{
      {"f32", torch::randn({2, 3})},
      {"f64", torch::randn({4}, torch::kDouble)},
      {"bf16", torch::randn({3, 1}).to(torch::kBFloat16)},
      {"f16", torch::randn({2}).to(torch::kHalf)},
      {"i64", torch::arange(5)},
      {"i32", torch::arange(3, torch::kInt)},
      {"u8", torch::tensor({1, 255}, torch::kByte)},
      {"bool", torch::tensor({true, false, true})},
      {"scalar", torch::tensor(2.5)},
      {"empty", torch::zeros({0, 4})},
      {"strided", torch::randn({3, 4}).t()},
  };
  save_safetensors(path("a.safetensors"), tensors, {{"format", "pt"}, {"moelab", "1"}});
  auto file = load_safetensors(path("a.safetensors"));
  ASSERT_EQ(file.tensors.size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    EXPECT_TRUE(torch::equal(file.tensors.at(name), t)) << name;
    EXPECT_EQ(file.tensors.at(name).scalar_type(), t.scalar_type()) << name;
  }
  EXPECT_EQ(file.metadata.at("format"), "pt");
  EXPECT_FALSE(fs::exists(path("a.safetensors.tmp")));
}

TEST_F(SafetensorsTest, HeaderIsSpecConformingJson) {
  save_safetensors(path("h.safetensors"),
                   {{"w", torch::zeros({2, 3})}, {"b", torch::zeros({3}, torch::kBFloat16)}});
  std::ifstream in(path("h.safetensors"), std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u) << "data must start 8-byte aligned";
  std::string text(n, '\0');
  in.read(text.data(), n);
  auto header = nlohmann::json::parse(text);
  EXPECT_EQ(header["w"]["dtype"], "F32");
  EXPECT_EQ(header["w"]["shape"], nlohmann::json::array({2, 3}));
  EXPECT_EQ(header["w"]["data_offsets"], nlohmann::json::array({0, 24}));
  EXPECT_EQ(header["b"]["dtype"], "BF16");
  EXPECT_EQ(header["b"]["data_offsets"], nlohmann::json::array({24, 30}));
  EXPECT_EQ(fs::file_size(path("h.safetensors")), 8 + n + 30);
}

TEST_F(SafetensorsTest, RejectsMissingTruncatedAndCorruptFiles) {
  expect_data_error(path("nope.safetensors"), "cannot open");

  save_safetensors(path("t.safetensors"), {{"w", torch::ones({64})}});
  fs::resize_file(path("t.safetensors"), fs::file_size(path("t.safetensors")) - 10);
  expect_data_error(path("t.safetensors"), "lie outside the");

  fs::resize_file(path("t.safetensors"), 5);
  expect_data_error(path("t.safetensors"), "too short for the 8-byte header length");

  expect_data_error(raw_file("{\"w\": ", 0), "header is not valid JSON");
  expect_data_error(raw_file("[1, 2]", 0), "header must be a JSON object");
  expect_data_error(raw_file(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})", 4),
                    "data_offsets span 4 bytes but dtype and shape need 8");
  expect_data_error(raw_file(R"({"w": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 1]}})", 1),
                    "unsupported dtype 'Q4'");
  expect_data_error(raw_file(R"({"w": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}})", 4),
                    "data bytes [0, 2) belong to no tensor");
  expect_data_error(raw_file(R"({"a": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
                                 "b": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}})", 4),
                    "tensors overlap at byte 2");
  expect_data_error(raw_file(R"({"w": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]}})", 1),
                    "shape must hold non-negative integers");
  expect_data_error(raw_file(R"({"w": {"dtype": "U8"}})", 0), "needs dtype, shape and data_offsets");

  // A header length larger than the file.
  const std::string p = path("big.safetensors");
  std::ofstream out(p, std::ios::binary);
  const uint64_t n = 1000;
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << "{}";
  out.close();
  expect_data_error(p, "header length 1000 does not fit");
}

TEST_F(SafetensorsTest, AFailedWriteKeepsTheExistingFile) {
  save_safetensors(path("keep.safetensors"), {{"w", torch::ones({2})}});
  EXPECT_THROW(save_safetensors(path("keep.safetensors"), {{"w", torch::ones({2})}, {"w", torch::ones({1})}}),
               c10::Error);
  EXPECT_TRUE(torch::equal(load_safetensors(path("keep.safetensors")).tensors.at("w"), torch::ones({2})));
  EXPECT_THROW(save_safetensors(path("no/such/dir/x.safetensors"), {{"w", torch::ones({2})}}),
               moelab::IoError);
}
