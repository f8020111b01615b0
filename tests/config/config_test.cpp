#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "moelab/config/config.h"
#include "moelab/config/fields.h"
#include "moelab/nn/options_yaml.h"
#include "moelab/run/run_config.h"
#include "moelab/util/errors.h"
#include "support/fixtures.h"

namespace fs = std::filesystem;
namespace cfg = moelab::config;

namespace {

class ConfigTest : public moelab::testing::TempDirTest {
 protected:
  std::string write(const std::string& name, const std::string& text) {
    std::ofstream(path(name)) << text;
    return path(name);
  }
};

std::string config_error(const std::function<void()>& action) {
  return moelab::testing::error_message<moelab::ConfigError>(action);
}

}  // namespace

TEST_F(ConfigTest, DefaultsThenFilesInOrderThenOverrides) {
  YAML::Node defaults = YAML::Load("a: 1\nsection: {x: 1, y: 2}\nlist: [1, 2]");
  const std::string first = write("first.yaml", "a: 2\nsection: {x: 10}\nlist: [3]");
  const std::string second = write("second.yaml", "section: {y: 20}");
  YAML::Node resolved = cfg::resolve(defaults, {first, second}, {"section.x=100", "new.key=abc"});
  EXPECT_EQ(resolved["a"].as<int>(), 2);
  EXPECT_EQ(resolved["section"]["x"].as<int>(), 100);
  EXPECT_EQ(resolved["section"]["y"].as<int>(), 20);
  EXPECT_EQ(resolved["list"].size(), 1u);  // lists are replaced, not merged
  EXPECT_EQ(resolved["new"]["key"].as<std::string>(), "abc");
  EXPECT_EQ(defaults["section"]["x"].as<int>(), 1) << "defaults must stay untouched";
}

TEST_F(ConfigTest, OverrideValuesAreParsedAsYaml) {
  YAML::Node root(YAML::NodeType::Map);
  cfg::apply_override(root, "n=2");
  cfg::apply_override(root, "xs=[1, 2, 3]");
  cfg::apply_override(root, "s=hello world");
  EXPECT_EQ(root["n"].as<int>(), 2);
  EXPECT_EQ(root["xs"].size(), 3u);
  EXPECT_EQ(root["s"].as<std::string>(), "hello world");
  EXPECT_NE(config_error([&] { cfg::apply_override(root, "novalue"); }).find("must look like key.sub=value"),
            std::string::npos);
  EXPECT_NE(config_error([&] { cfg::apply_override(root, "a..b=1"); }).find("has an empty part"),
            std::string::npos);
  EXPECT_NE(config_error([&] { cfg::apply_override(root, "n.sub=1"); }).find("'n' holds a value"),
            std::string::npos);
}

TEST_F(ConfigTest, FileErrorsNameTheFileAndLine) {
  const std::string missing = path("missing.yaml");
  EXPECT_NE(config_error([&] { cfg::load_file(missing); }).find(missing + ": cannot open"),
            std::string::npos);
  const std::string bad = write("bad.yaml", "a: 1\nb: [1, 2\n");
  const std::string message = config_error([&] { cfg::load_file(bad); });
  EXPECT_NE(message.find(bad + ":"), std::string::npos) << message;
  EXPECT_NE(message.find("invalid YAML"), std::string::npos) << message;
  const std::string scalar = write("scalar.yaml", "just a string");
  EXPECT_NE(config_error([&] { cfg::load_file(scalar); }).find("top level must be a mapping"),
            std::string::npos);
  EXPECT_TRUE(cfg::load_file(write("empty.yaml", "")).IsMap());
}

TEST_F(ConfigTest, NearestSuggestsCloseKeysOnly) {
  EXPECT_EQ(cfg::nearest("topk", {"top_k", "temperature", "kind"}), "top_k");
  EXPECT_EQ(cfg::nearest("temprature", {"top_k", "temperature"}), "temperature");
  EXPECT_EQ(cfg::nearest("completely_different", {"top_k", "kind"}), "");
}

TEST_F(ConfigTest, MoELayerOptionsRoundTripWithEveryDefault) {
  YAML::Node node = moelab::nn::to_yaml(moelab::nn::MoELayerOptions(16, 32, 4));
  EXPECT_EQ(node["d_model"].as<int>(), 16);
  EXPECT_EQ(node["num_experts"].as<int>(), 4);
  EXPECT_EQ(node["router"]["kind"].as<std::string>(), "top_k");
  EXPECT_EQ(node["router"]["top_k"].as<int>(), 1);
  EXPECT_EQ(node["experts"]["activation"].as<std::string>(), "swiglu");
  EXPECT_EQ(node["dispatch"]["drop_policy"].as<std::string>(), "position");
  EXPECT_EQ(node["aux"]["load_balance"].as<double>(), 0.0);
  EXPECT_FALSE(node["router"]["d_model"]) << "sizes are stated once, at the top";

  moelab::nn::MoELayerOptions options(1, 1, 1);
  moelab::nn::from_yaml(YAML::Load(R"(
    d_model: 8
    d_ff: 12
    num_experts: 6
    router: {kind: noisy_top_k, top_k: 2, temperature: 0.5}
    experts: {activation: gelu, bias: true}
    dispatch: {dropless: false, capacity_factor: 1.25, drop_policy: score}
    aux: {load_balance: 0.01, z_loss: 0.001}
    num_shared_experts: 1
  )"), options, "model.moe");
  EXPECT_EQ(options.router().d_model(), 8);
  EXPECT_EQ(options.experts().d_model(), 8);
  EXPECT_EQ(options.experts().num_experts(), 6);
  EXPECT_EQ(options.router().kind(), moelab::nn::RouterKind::kNoisyTopK);
  EXPECT_EQ(options.router().top_k(), 2);
  EXPECT_EQ(options.experts().activation(), moelab::nn::Activation::kGELU);
  EXPECT_EQ(options.dispatch().drop_policy(), moelab::nn::DropPolicy::kScore);
  EXPECT_DOUBLE_EQ(options.aux().z_loss(), 0.001);
  moelab::nn::MoELayer layer(options);  // the sizes reached router and experts alike
  EXPECT_EQ(layer->experts->w_in.size(1), 12);

  moelab::nn::MoELayerOptions again(1, 1, 1);
  moelab::nn::from_yaml(moelab::nn::to_yaml(options), again, "model.moe");
  EXPECT_EQ(YAML::Dump(moelab::nn::to_yaml(again)), YAML::Dump(moelab::nn::to_yaml(options)));
}

TEST_F(ConfigTest, MoELayerOptionsRejectUnknownKeysAndWrongTypes) {
  moelab::nn::MoELayerOptions options(8, 16, 4);
  auto read = [&](const std::string& text) {
    return config_error([&] { moelab::nn::from_yaml(YAML::Load(text), options, "model.moe"); });
  };
  EXPECT_EQ(read("router: {topk: 2}"),
            "model.moe.router.topk: unknown key; did you mean 'model.moe.router.top_k'?");
  EXPECT_EQ(read("num_expert: 4"),
            "model.moe.num_expert: unknown key; did you mean 'model.moe.num_experts'?");
  EXPECT_EQ(read("router: {top_k: two}"),
            "model.moe.router.top_k: expected an integer, got 'two'");
  EXPECT_EQ(read("router: {top_k: 1.5}"),
            "model.moe.router.top_k: expected an integer, got '1.5'");
  EXPECT_EQ(read("experts: {bias: maybe}"),
            "model.moe.experts.bias: expected a boolean (true/false), got 'maybe'");
  EXPECT_EQ(read("router: [1, 2]"), "model.moe.router: expected a section of keys, got a value");
  EXPECT_NE(read("router: {kind: top2}").find("model.moe.router.kind: Router: unknown kind 'top2'"),
            std::string::npos);
  EXPECT_EQ(read("aux: {z_loss: [1]}"),
            "model.moe.aux.z_loss: expected a number, got a list or section");
}

TEST(ConfigJsonTest, ScalarsBecomeTypedJson) {
  const YAML::Node node = YAML::Load(
      "a: 3\nb: 2.5e-3\nc: true\nd: relu\ne: [1, x]\nf: {g: null}\nh: '42'\ni: ''\nj: -7\n");
  const nlohmann::json expected = nlohmann::json::parse(
      R"({"a": 3, "b": 0.0025, "c": true, "d": "relu", "e": [1, "x"], "f": {"g": null},
          "h": "42", "i": "", "j": -7})");
  EXPECT_EQ(cfg::to_json(node), expected);
}

TEST(ConfigFieldsTest, FloatsAreWrittenInTheShortestFormThatReadsBackExactly) {
  EXPECT_EQ(cfg::shortest_text(0.9), "0.9");
  EXPECT_EQ(cfg::shortest_text(1e-3), "0.001");
  EXPECT_EQ(cfg::shortest_text(2.0), "2.0");
  EXPECT_EQ(cfg::shortest_text(1.0 / 3.0), "0.3333333333333333");
  EXPECT_EQ(std::stod(cfg::shortest_text(1.0 / 3.0)), 1.0 / 3.0);
  EXPECT_EQ(cfg::shortest_text(1.03125), "1.03125");
  const std::string dumped = YAML::Dump(moelab::nn::to_yaml(
      moelab::nn::MoELayerOptions(4, 8, 2).router(moelab::nn::RouterOptions(4, 2).temperature(0.9))));
  EXPECT_NE(dumped.find("temperature: 0.9\n"), std::string::npos) << dumped;
}

// A type or range error found after the files are merged still names the file and line that set
// the value; a value from an override or from the defaults is named by its key alone.
TEST_F(ConfigTest, ErrorsAfterTheMergeNameTheFileAndLineThatSetTheKey) {
  const std::string first = write("first.yaml", "train:\n  max_steps: 10\n  batch_size: 8\n");
  const std::string second = write("second.yaml", "# later wins\ntrain:\n\n  max_steps: abc\n");
  const std::string message = moelab::testing::error_message<moelab::ConfigError>(
      [&] { moelab::run::resolve_run_config({first, second}, {}); });
  EXPECT_EQ(message, second + ":4: train.max_steps: expected an integer, got 'abc'");
  const std::string overridden = moelab::testing::error_message<moelab::ConfigError>(
      [&] { moelab::run::resolve_run_config({first, second}, {"train.max_steps=xyz"}); });
  EXPECT_EQ(overridden, "train.max_steps: expected an integer, got 'xyz'");
  const std::string nested = moelab::testing::error_message<moelab::ConfigError>([&] {
    moelab::run::resolve_run_config(
        {write("third.yaml", "model:\n  moe:\n    num_experts: [1, 2]\n")}, {});
  });
  EXPECT_EQ(nested.rfind(path("third.yaml") + ":3: model.moe.num_experts: expected an integer", 0), 0u)
      << nested;
  // An error named by its section (a module's own check, raised when the model is built) is
  // put at the file's section (its first line) only when no override writes into that section.
  const std::string section =
      write("fourth.yaml", "data:\n  name: x\nmodel:\n  moe:\n    num_experts: 0\n");
  const moelab::ConfigError built("model: Router: num_experts (0) must be >= 1");
  EXPECT_EQ(std::string(moelab::config::with_origin(built, {section}, {}).what()),
            section + ":4: model: Router: num_experts (0) must be >= 1");
  EXPECT_EQ(std::string(
                moelab::config::with_origin(built, {section}, {"model.moe.num_experts=0"}).what()),
            "model: Router: num_experts (0) must be >= 1");
  EXPECT_EQ(std::string(moelab::config::with_origin(built, {section}, {"data.name=y"}).what()),
            section + ":4: model: Router: num_experts (0) must be >= 1");
}
