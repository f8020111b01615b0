#include <gtest/gtest.h>

#include <fstream>

#include "moelab/analysis/study.h"
#include "moelab/run/run.h"
#include "moelab/run/run_config.h"
#include "moelab/models/vision.h"
#include "moelab/util/errors.h"
#include "support/fixtures.h"

namespace {

class StudyPlanTest : public moelab::testing::TempDirTest {
 protected:
  std::string write_study(const std::string& text) {
    std::ofstream(path("study.yaml")) << text;
    return path("study.yaml");
  }
};

constexpr const char* kStudy = R"(
study: {name: s, reference: moe}
base:
  model: {name: vision_moe, expert: {width: 8, depth: 2, hidden: 32}}
  data: {name: synthetic_mixture}
runs:
  - {name: iso_flops, match: flops}
  - {name: iso_params, match: parameters}
  - {name: moe, model: {num_experts: 4}}
  - {name: moe_k2, model: {num_experts: 4, router: {top_k: 2}}, train: {max_steps: 7}}
)";

}  // namespace

TEST_F(StudyPlanTest, DenseBaselinesMatchTheReferenceWithinFivePercent) {
  const moelab::analysis::StudyPlan plan = moelab::analysis::plan_study({write_study(kStudy)}, {});
  ASSERT_EQ(plan.runs.size(), 4u);
  EXPECT_EQ(plan.runs[0].first, "iso_flops");
  std::map<std::string, moelab::models::ModelCost> costs;
  for (const auto& [name, text] : plan.runs) {
    costs[name] = moelab::run::build_model(YAML::Load(text))->cost();
  }
  EXPECT_NEAR(costs["iso_flops"].flops_per_sample, costs["moe"].flops_per_sample,
              0.05 * costs["moe"].flops_per_sample);
  EXPECT_NEAR(costs["iso_params"].parameters_total, costs["moe"].parameters_total,
              0.05 * costs["moe"].parameters_total);
  EXPECT_EQ(YAML::Load(plan.runs[0].second)["model"]["name"].as<std::string>(), "cnn");
  EXPECT_EQ(YAML::Load(plan.runs[3].second)["train"]["max_steps"].as<int>(), 7);
  EXPECT_EQ(YAML::Load(plan.runs[2].second)["train"]["max_steps"].as<int>(), 200);
}

TEST_F(StudyPlanTest, BadStudiesAreRejectedWithTheKey) {
  const std::string file = write_study(kStudy);
  EXPECT_EQ(moelab::testing::error_message<moelab::ConfigError>(
                [&] { moelab::analysis::plan_study({file}, {"study.reference=nope"}); })
                .rfind("study.reference: runs with `match` need", 0),
            0u);
  EXPECT_EQ(moelab::testing::error_message<moelab::ConfigError>([&] { moelab::analysis::plan_study({file}, {"runz=1"}); }),
            "runz: unknown key; did you mean 'runs'?");
  const std::string message = moelab::testing::error_message<moelab::ConfigError>(
      [&] { moelab::analysis::plan_study({file}, {"base.model.num_expert=3"}); });
  EXPECT_NE(message.find("model.num_expert: unknown key"), std::string::npos) << message;
}
