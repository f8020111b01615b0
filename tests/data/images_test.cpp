#include <gtest/gtest.h>
#include <torch/torch.h>
#include <zlib.h>

#include <fstream>

#include "moelab/data/images.h"
#include "moelab/data/registry.h"
#include "moelab/util/errors.h"
#include "support/fixtures.h"
#include "support/image_files.h"

using namespace moelab::data;

namespace {

class ImagesTest : public moelab::testing::TempDirTest {
 protected:
  // An IDX file: magic 0 0 8 <dims>, big-endian sizes, then the bytes.
  static std::string idx_bytes(const std::vector<uint32_t>& shape, const std::vector<uint8_t>& data) {
    std::string out{'\0', '\0', '\x08', static_cast<char>(shape.size())};
    for (uint32_t d : shape) {
      for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>(d >> shift & 0xff));
    }
    out.append(data.begin(), data.end());
    return out;
  }
  void write_plain(const std::string& name, const std::string& bytes) {
    std::ofstream(path(name), std::ios::binary) << bytes;
  }
  void write_gzip(const std::string& name, const std::string& bytes) {
    gzFile f = gzopen(path(name).c_str(), "wb");
    gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
    gzclose(f);
  }
  // n images of side 4 with pixel value (i * 16 + p) % 256, labels i % 10.
  void write_idx_set(const std::string& prefix, uint32_t n, bool gzip) {
    std::vector<uint8_t> pixels, labels;
    for (uint32_t i = 0; i < n; ++i) {
      for (int p = 0; p < 16; ++p) pixels.push_back(static_cast<uint8_t>((i * 16 + p) % 256));
      labels.push_back(static_cast<uint8_t>(i % 10));
    }
    auto write = [&](const std::string& name, const std::string& bytes) {
      gzip ? write_gzip(name + ".gz", bytes) : write_plain(name, bytes);
    };
    write(prefix + "-images-idx3-ubyte", idx_bytes({n, 4, 4}, pixels));
    write(prefix + "-labels-idx1-ubyte", idx_bytes({n}, labels));
  }
  // CIFAR records whose pixel (c, y, x) of record r is (r + c * 7 + y + x) % 256.
  void write_cifar(const std::string& name, const std::vector<std::vector<uint8_t>>& labels) {
    moelab::testing::write_cifar_file(path(name), labels, [](size_t r, int c, int y, int x) {
      return static_cast<uint8_t>((r + c * 7 + y + x) % 256);
    });
  }
};

}  // namespace

TEST_F(ImagesTest, IdxPlainAndGzipReadTheSame) {
  write_plain("a", idx_bytes({2, 3}, {1, 2, 3, 4, 5, 6}));
  write_gzip("b.gz", idx_bytes({2, 3}, {1, 2, 3, 4, 5, 6}));
  const at::Tensor expected = torch::tensor({1, 2, 3, 4, 5, 6}, at::kByte).view({2, 3});
  EXPECT_TRUE(torch::equal(read_idx(path("a")), expected));
  EXPECT_TRUE(torch::equal(read_idx(path("b.gz")), expected));
}

TEST_F(ImagesTest, IdxErrorsNameTheFileAndTheSizes) {
  write_plain("short", idx_bytes({2, 3}, {1, 2, 3, 4}));
  EXPECT_EQ(moelab::testing::error_message<moelab::DataError>([&] { read_idx(path("short")); }),
            path("short") + ": truncated: the header promises 6 data bytes, the file has 4");
  write_plain("magic", std::string("\x00\x00\x09\x01\x00\x00\x00\x01\x05", 9));
  EXPECT_NE(moelab::testing::error_message<moelab::DataError>([&] { read_idx(path("magic")); })
                .find("not an unsigned-byte IDX file"),
            std::string::npos);
  EXPECT_EQ(moelab::testing::error_message<moelab::DataError>([&] { read_idx(path("none")); }),
            path("none") + ": no such file");
  write_plain("images", idx_bytes({2, 1, 1}, {0, 255}));
  write_plain("labels", idx_bytes({3}, {0, 1, 2}));
  EXPECT_EQ(moelab::testing::error_message<moelab::DataError>(
                [&] { load_idx_pair(path("images"), path("labels")); }),
            path("labels") + ": 3 labels for 2 images in " + path("images"));
}

TEST_F(ImagesTest, FashionMnistEntryLoadsScalesAndNormalises) {
  write_idx_set("train", 20, /*gzip=*/true);
  write_idx_set("t10k", 5, /*gzip=*/false);
  ImageDataOptions options;
  options.root(root_.string()).normalize(false);
  Splits raw = load_image_data("fashion_mnist", options);
  ASSERT_EQ(raw.train->range(0, raw.train->size()).at("inputs").sizes(), (std::vector<int64_t>{20, 1, 4, 4}));
  EXPECT_EQ(raw.test->size(), 5);
  EXPECT_FLOAT_EQ(raw.train->range(0, raw.train->size()).at("inputs")[1][0][0][2].item<float>(), (16 + 2) / 255.0f);
  EXPECT_EQ(raw.train->range(0, raw.train->size()).at("targets")[13].item<int64_t>(), 3);
  EXPECT_EQ(raw.class_names.at(9), "Ankle boot");
  EXPECT_FALSE(raw.augment);

  Splits normalised = load_image_data("fashion_mnist", options.normalize(true).train_limit(12));
  EXPECT_EQ(normalised.train->size(), 12);
  EXPECT_NEAR(normalised.train->range(0, normalised.train->size()).at("inputs").mean().item<double>(), 0.0, 1e-5);
  EXPECT_NEAR(normalised.train->range(0, normalised.train->size()).at("inputs").std(/*unbiased=*/false).item<double>(), 1.0, 1e-4);

  EXPECT_NE(moelab::testing::error_message<moelab::DataError>(
                [&] { load_image_data("mnist", ImageDataOptions().root(path("missing"))); })
                .find("no such directory"),
            std::string::npos);
}

TEST_F(ImagesTest, CifarRecordsKeepPlaneOrderAndBothLabelKinds) {
  write_cifar("data_batch_1.bin", {{3}, {7}});
  for (int b = 2; b <= 5; ++b)
    write_cifar("data_batch_" + std::to_string(b) + ".bin", {{static_cast<uint8_t>(b)}});
  write_cifar("test_batch.bin", {{9}});
  ImageDataOptions options;
  options.root(root_.string()).normalize(false);
  Splits cifar10 = load_image_data("cifar10", options);
  ASSERT_EQ(cifar10.train->range(0, cifar10.train->size()).at("inputs").sizes(), (std::vector<int64_t>{6, 3, 32, 32}));
  EXPECT_TRUE(torch::equal(cifar10.train->range(0, cifar10.train->size()).at("targets"), torch::tensor({3, 7, 2, 3, 4, 5}, at::kLong)));
  // record 1, channel 2 (blue), y 5, x 6: (1 + 14 + 5 + 6) = 26
  EXPECT_FLOAT_EQ(cifar10.train->range(0, cifar10.train->size()).at("inputs")[1][2][5][6].item<float>(), 26 / 255.0f);
  EXPECT_EQ(cifar10.class_names.at(0), "airplane");

  write_cifar("train.bin", {{4, 41}, {19, 99}});
  write_cifar("test.bin", {{0, 1}});
  Splits fine = load_image_data("cifar100", options);
  EXPECT_TRUE(torch::equal(fine.train->range(0, fine.train->size()).at("targets"), torch::tensor({41, 99}, at::kLong)));
  EXPECT_EQ(fine.class_names.size(), 100u);
  Splits coarse = load_image_data("cifar100", options.labels("coarse"));
  EXPECT_TRUE(torch::equal(coarse.train->range(0, coarse.train->size()).at("targets"), torch::tensor({4, 19}, at::kLong)));
  EXPECT_EQ(coarse.class_names.size(), 20u);

  std::filesystem::resize_file(path("test.bin"), 3000);
  EXPECT_EQ(moelab::testing::error_message<moelab::DataError>(
                [&] { load_image_data("cifar100", options); }),
            path("test.bin") + ": 3000 bytes is not a whole number of 3074-byte CIFAR records "
                               "(truncated or another format)");
  EXPECT_THROW(validate("cifar10", ImageDataOptions().labels("coarse"), "data"), moelab::ConfigError);
}

TEST(ImageAugmentTest, CropAndFlipKeepShapeAndContent) {
  torch::manual_seed(0);
  const at::Tensor images = torch::arange(2 * 3 * 4 * 4, at::kFloat).view({2, 3, 4, 4});
  const at::Tensor flipped_only = random_crop_flip(images, /*pad=*/0);
  for (int64_t i = 0; i < 2; ++i) {
    EXPECT_TRUE(torch::equal(flipped_only[i], images[i]) ||
                torch::equal(flipped_only[i], images[i].flip({2})));
  }
  const at::Tensor cropped = random_crop_flip(images, 4);
  EXPECT_EQ(cropped.sizes(), images.sizes());
  // Every value of a crop is a pixel of the image or padding.
  EXPECT_TRUE(((cropped == 0) | at::isin(cropped, images)).all().item<bool>());
}

TEST(DataRegistryTest, ImageEntriesAreRegisteredWithTheirDefaults) {
  EXPECT_EQ(find_data("cifar10").defaults()["augment"].as<bool>(), true);
  EXPECT_EQ(find_data("fashion_mnist").defaults()["augment"].as<bool>(), false);
  EXPECT_EQ(moelab::testing::error_message<moelab::ConfigError>([] { find_data("fashion-mnist"); }),
            "data.name: unknown data set 'fashion-mnist'; did you mean 'fashion_mnist'? "
            "(registered: synthetic_mixture synthetic_regression fashion_mnist mnist cifar10 cifar100 brown text "
            "molecule_property perturbation)");
}

// Damaged files are refused before anything is allocated or trained on (issue 16).
TEST_F(ImagesTest, DamagedIdxFilesAreRefusedWithWhatIsWrong) {
  auto error = [&](const std::string& name) {
    return moelab::testing::error_message<moelab::DataError>([&] { read_idx(path(name)); });
  };
  // Sizes whose product overflows, and a header that promises gigabytes the file does not hold.
  write_plain("overflow", idx_bytes({0xffffffffu, 0xffffffffu, 0xffffffffu}, {}));
  EXPECT_EQ(error("overflow"),
            path("overflow") + ": the IDX header's sizes multiply to more than 2^40 bytes");
  write_plain("huge", idx_bytes({60000, 28, 28}, {1, 2, 3}));
  EXPECT_EQ(error("huge"),
            path("huge") + ": truncated: the header promises 47040000 data bytes, the file has 3");
  // Trailing bytes, plain and gzip.
  write_plain("trailing", idx_bytes({2}, {1, 2}) + std::string(1000, 'x'));
  EXPECT_EQ(error("trailing"),
            path("trailing") + ": 1000 bytes after the data (trailing garbage, or not an IDX file)");
  write_gzip("trailing.gz", idx_bytes({2}, {1, 2}) + std::string(1000, 'x'));
  EXPECT_NE(error("trailing.gz").find("bytes after the data"), std::string::npos);
  // Damaged gzip data: the CRC catches what decompresses without complaint.
  std::vector<uint8_t> pixels(20000);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>(i * 7 % 251);
  write_gzip("flipped.gz", idx_bytes({20000}, pixels));
  ASSERT_TRUE(read_idx(path("flipped.gz")).defined());
  {
    std::fstream file(path("flipped.gz"), std::ios::in | std::ios::out | std::ios::binary);
    file.seekg(0, std::ios::end);
    const auto size = static_cast<int64_t>(file.tellg());
    for (int64_t i = size / 2; i < size / 2 + 64; ++i) {
      file.seekg(i);
      const char c = static_cast<char>(file.get());
      file.seekp(i);
      file.put(static_cast<char>(c ^ 0x5a));
    }
  }
  EXPECT_NE(error("flipped.gz").find(path("flipped.gz") + ": "), std::string::npos);
  // A directory where a file belongs.
  std::filesystem::create_directories(path("adir"));
  EXPECT_EQ(error("adir"), path("adir") + ": is a directory, not an IDX file");
}

TEST_F(ImagesTest, ALabelOutOfRangeNamesTheSplitAndTheRecord) {
  write_idx_set("train", 12, /*gzip=*/false);
  write_idx_set("t10k", 3, /*gzip=*/false);
  std::vector<uint8_t> labels{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1};
  labels[7] = 12;
  write_plain("train-labels-idx1-ubyte", idx_bytes({12}, labels));
  EXPECT_EQ(moelab::testing::error_message<moelab::DataError>([&] {
              load_image_data("fashion_mnist", ImageDataOptions().root(root_.string()));
            }),
            "data.fashion_mnist (" + root_.string() +
                "): training record 7 has label 12, but there are only 10 classes");
}

// data.as_sequence: each image becomes the sequence of its rows, (N, H, C * W), same pixels.
TEST_F(ImagesTest, AsSequenceGivesEachImageAsItsRows) {
  write_idx_set("train", 6, /*gzip=*/false);
  write_idx_set("t10k", 2, /*gzip=*/false);
  ImageDataOptions options;
  options.root(root_.string()).normalize(false);
  const at::Tensor images = load_image_data("fashion_mnist", options).train->range(0, 6).at("inputs");
  const at::Tensor rows =
      load_image_data("fashion_mnist", options.as_sequence(true)).train->range(0, 6).at("inputs");
  ASSERT_EQ(rows.sizes(), (std::vector<int64_t>{6, 4, 4}));
  EXPECT_TRUE(torch::equal(rows, images.squeeze(1)));
  EXPECT_EQ(rows[1][0][2].item<float>(), images[1][0][0][2].item<float>());
  const std::string message = moelab::testing::error_message<moelab::ConfigError>(
      [&] { load_image_data("fashion_mnist", options.augment(true)); });
  EXPECT_NE(message.find("data.as_sequence: cannot be combined with data.augment"), std::string::npos)
      << message;
}
