#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "moelab/nn/moe_layer.h"
#include "moelab/train/checkpoint.h"
#include "moelab/util/errors.h"
#include "support/fixtures.h"

namespace fs = std::filesystem;
using namespace moelab::train;

namespace {

class CheckpointTest : public moelab::testing::TempDirTest {
 protected:
  std::string dir(const std::string& name) const { return path(name); }

  static FileWriters text_files() {
    return {{"a.txt", [](const std::string& p) { std::ofstream(p) << "alpha"; }},
            {"b.bin", [](const std::string& p) { std::ofstream(p) << std::string(1000, 'x'); }}};
  }

  static std::string checkpoint_error(const std::function<void()>& action) {
    return moelab::testing::error_message<moelab::CheckpointError>(action);
  }
};

bool contains(const std::string& text, const std::string& fragment) {
  return text.find(fragment) != std::string::npos;
}

}  // namespace

TEST_F(CheckpointTest, WritesAVerifiableDirectoryWithMetadata) {
  write_checkpoint(dir("step-00000010"), text_files(), {{"step", 10}});
  auto manifest = verify_checkpoint(dir("step-00000010"));
  EXPECT_EQ(manifest["metadata"]["step"], 10);
  EXPECT_EQ(manifest["format_version"], kCheckpointFormatVersion);
  EXPECT_EQ(manifest["files"]["b.bin"]["bytes"], 1000);
  EXPECT_FALSE(fs::exists(dir(".step-00000010.tmp")));
}

TEST_F(CheckpointTest, DetectsTruncationCorruptionAndMissingPieces) {
  write_checkpoint(dir("c"), text_files(), {});
  fs::resize_file(dir("c") + "/b.bin", 500);
  EXPECT_TRUE(contains(checkpoint_error([&] { verify_checkpoint(dir("c")); }),
                       "b.bin: 500 bytes, the manifest says 1000 (truncated?)"));

  write_checkpoint(dir("d"), text_files(), {});
  { std::fstream f(dir("d") + "/a.txt", std::ios::in | std::ios::out); f.put('A'); }
  EXPECT_TRUE(contains(checkpoint_error([&] { verify_checkpoint(dir("d")); }),
                       "a.txt: checksum mismatch"));

  write_checkpoint(dir("e"), text_files(), {});
  fs::remove(dir("e") + "/a.txt");
  EXPECT_TRUE(contains(checkpoint_error([&] { verify_checkpoint(dir("e")); }),
                       "listed in the manifest but missing"));

  fs::create_directories(dir("half"));
  EXPECT_TRUE(contains(checkpoint_error([&] { verify_checkpoint(dir("half")); }), "no manifest.json"));

  write_checkpoint(dir("f"), text_files(), {});
  std::ofstream(dir("f") + "/manifest.json")
      << R"({"format": "moelab-checkpoint", "format_version": 99, "files": {}})";
  EXPECT_TRUE(contains(checkpoint_error([&] { verify_checkpoint(dir("f")); }),
                       "format_version 99 is not supported"));
}

TEST_F(CheckpointTest, AFailedWriteLeavesNothingThatLooksValid) {
  FileWriters files = text_files();
  files["c.bin"] = [](const std::string&) { throw std::runtime_error("disk full"); };
  EXPECT_THROW(write_checkpoint(dir("g"), files, {}), std::runtime_error);
  EXPECT_FALSE(fs::exists(dir("g")));
  EXPECT_FALSE(fs::exists(dir(".g.tmp")));

  write_checkpoint(dir("h"), text_files(), {});
  EXPECT_TRUE(contains(checkpoint_error([&] { write_checkpoint(dir("h"), text_files(), {}); }),
                       "already exists"));
  std::ofstream(dir("plain_file")) << "x";
  EXPECT_TRUE(contains(
      checkpoint_error([&] { write_checkpoint(dir("plain_file") + "/ckpt", text_files(), {}); }),
      "cannot create directory"));
}

TEST_F(CheckpointTest, ModuleWeightsRoundTripAndMismatchesAreListed) {
  torch::manual_seed(0);
  moelab::nn::MoELayerOptions options(8, 16, 4);
  options.router().kind(moelab::nn::RouterKind::kAuxFree).top_k(2);
  moelab::nn::MoELayer trained(options);
  {
    torch::NoGradGuard no_grad;
    trained->router->expert_bias.fill_(0.25);  // buffers travel too
  }
  save_module_weights(*trained, dir("w.safetensors"));
  moelab::nn::MoELayer fresh(options);
  load_module_weights(*fresh, dir("w.safetensors"));
  at::Tensor x = torch::randn({5, 8});
  trained->eval();
  fresh->eval();
  EXPECT_TRUE(torch::equal(trained->forward(x).output, fresh->forward(x).output));
  EXPECT_TRUE(torch::equal(fresh->router->expert_bias, torch::full({4}, 0.25)));

  moelab::nn::MoELayerOptions other(8, 16, 6);
  moelab::nn::MoELayer wrong(other);
  const std::string message =
      checkpoint_error([&] { load_module_weights(*wrong, dir("w.safetensors")); });
  EXPECT_TRUE(contains(message, "does not match the model")) << message;
  EXPECT_TRUE(contains(message, "mismatch: experts.w_in is Float[4, 32, 8] in the file, Float[6, 32, 8]"))
      << message;
  EXPECT_TRUE(contains(message, "unexpected: router.expert_bias")) << message;
  EXPECT_TRUE(contains(checkpoint_error([&] { load_module_weights(*wrong, dir("none.safetensors")); }),
                       "cannot open"));
}
