#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "moelab/run/run.h"
#include "moelab/run/run_config.h"
#include "moelab/util/errors.h"
#include "support/fixtures.h"

namespace fs = std::filesystem;
using moelab::run::resolve_run_config;

namespace {
std::string run_config_error(const std::function<void()>& action) {
  return moelab::testing::error_message<moelab::ConfigError>(action);
}
}  // namespace

TEST(RunConfigTest, DefaultsComeFromTheModelThenFilesThenOverrides) {
  const fs::path file = fs::temp_directory_path() / ("moelab_run_" + std::to_string(::getpid()) + ".yaml");
  std::ofstream(file) << "model: {num_layers: 3, moe: {router: {top_k: 1}}}";
  YAML::Node resolved = resolve_run_config({file.string()}, {"model.moe.router.top_k=2"});
  fs::remove(file);
  EXPECT_EQ(resolved["model"]["name"].as<std::string>(), "mlp_moe");
  EXPECT_EQ(resolved["model"]["num_layers"].as<int>(), 3);               // file
  EXPECT_EQ(resolved["model"]["moe"]["router"]["top_k"].as<int>(), 2);   // override wins
  EXPECT_EQ(resolved["model"]["input_dim"].as<int>(), 16);               // default
  EXPECT_EQ(resolved["model"]["moe"]["experts"]["activation"].as<std::string>(), "swiglu");
  auto model = moelab::run::build_model(resolved);
  EXPECT_EQ(model->forward_inputs(torch::randn({2, 16})).moe_layers.size(), 3u);
}

TEST(RunConfigTest, RejectsUnknownSectionsKeysAndInvalidCombinations) {
  EXPECT_EQ(run_config_error([] { resolve_run_config({}, {"modell.x=1"}); }),
            "modell: unknown key; did you mean 'model'?");
  EXPECT_EQ(run_config_error([] { resolve_run_config({}, {"sections.x=1"}); }),
            "sections: unknown key (valid: model data task train parallel federated)");
  EXPECT_EQ(run_config_error([] { resolve_run_config({}, {"task.name=regresion"}); }),
            "task.name: unknown task 'regresion'; did you mean 'regression'? (registered: "
            "classification regression language_model perturbation)");
  EXPECT_EQ(run_config_error([] { resolve_run_config({}, {"model.num_layer=2"}); }),
            "model.num_layer: unknown key; did you mean 'model.num_layers'?");
  EXPECT_EQ(run_config_error([] { resolve_run_config({}, {"model=3"}); }),
            "model: expected a section of keys, got a value");
  const std::string message = run_config_error([] {
    moelab::run::build_model(resolve_run_config({}, {"model.moe.router.top_k=9"}));
  });
  EXPECT_NE(message.find("model: Router: top_k (9) must be in [1, num_experts=4]"), std::string::npos)
      << message;
}
