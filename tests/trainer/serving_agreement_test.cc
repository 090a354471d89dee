// Serving agrees with evaluation by construction: a job trained in process is exported, its test
// split evaluated with a dump of every sample as a serving request, and every request answered
// by the bundle (serving::Bundle, the code behind `t2diff serve`) must rank the sample's target
// exactly where evaluation ranked it. For both session modes, with and without the diffusion
// module, with the time-lag feature, with a user-id table, with user profile fields, and in
// batches of several sizes (a query's answer must not depend on the batch it is in).

#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "serving/bundle.h"
#include "serving/protocol.h"
#include "tests/trainer/inproc_job.h"

namespace t2d::trainer {
namespace {

struct Case {
  const char* name;
  std::vector<std::string> overrides;
  const char* extra = "";  // more config text
};

class ServingAgreementTest : public test_util::InProcJobTest, public ::testing::WithParamInterface<Case> {};

TEST_P(ServingAgreementTest, ServingRanksEveryTestTargetAsEvaluationDid) {
  std::vector<std::string> overrides = GetParam().overrides;
  overrides.push_back("training.epochs=1");
  const config::JobConfig job = Job(overrides, GetParam().extra);
  PrepareData(job);
  auto t = NewTrainer(job, false);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_TRUE((*t)->Train().ok());
  ASSERT_TRUE((*t)->Export(dir_ + "/bundle").ok());
  auto eval = (*t)->Evaluate("test", dir_ + "/ranks");
  ASSERT_TRUE(eval.ok()) << eval.status();

  auto bundle = serving::Bundle::Load(dir_ + "/bundle");
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  std::vector<serving::ParsedQuery> parsed;
  std::vector<int64_t> targets, ranks;
  std::ifstream in(dir_ + "/ranks");
  std::string line;
  while (std::getline(in, line)) {
    nlohmann::json j = nlohmann::json::parse(line);
    targets.push_back(j["target"].get<int64_t>());
    ranks.push_back(j["rank"].get<int64_t>());
    j.erase("target");
    j.erase("rank");
    j["k"] = (*bundle)->num_items();
    auto request = serving::ParseRequest(j.dump());
    ASSERT_TRUE(request.ok()) << request.status() << " for " << line;
    parsed.push_back(request->queries[0]);
  }
  ASSERT_EQ(static_cast<int64_t>(parsed.size()), eval->model.count());
  if (!job.model().user_feature_table().empty()) {
    // The generator gives every user a value in every field: every request carries its keys.
    for (const auto& q : parsed) {
      ASSERT_EQ(q.user_feature_keys.size(), static_cast<size_t>(job.data().generator().user_profile_fields()));
      for (int64_t key : q.user_feature_keys) ASSERT_NE(key, 0);
    }
  }
  ASSERT_GE(parsed.size(), 50u);
  for (size_t batch : {size_t{1}, size_t{7}, parsed.size()}) {
    SCOPED_TRACE(::testing::Message() << "batches of " << batch);
    int disagree = 0;
    for (size_t lo = 0; lo < parsed.size(); lo += batch) {
      std::vector<serving::Query> queries;
      for (size_t i = lo; i < std::min(parsed.size(), lo + batch); ++i) queries.push_back(parsed[i].View());
      auto answers = (*bundle)->Search(queries);
      for (size_t q = 0; q < queries.size(); ++q) {
        ASSERT_TRUE(answers[q].ok()) << answers[q].status();
        const auto& items = answers[q]->items;
        const auto& scores = answers[q]->scores;
        const size_t i = lo + q;
        const auto at = std::find(items.begin(), items.end(), targets[i]);
        ASSERT_NE(at, items.end()) << "target " << targets[i] << " not ranked";
        const float target_score = scores[static_cast<size_t>(at - items.begin())];
        const int64_t rank = 1 + std::count_if(scores.begin(), scores.end(), [&](float s) { return s > target_score; });
        if (rank != ranks[i]) {
          ++disagree;
          ADD_FAILURE() << "sample " << i << " (user " << parsed[i].user << ", target " << targets[i]
                        << "): evaluation rank " << ranks[i] << ", serving rank " << rank;
        }
      }
    }
    EXPECT_EQ(disagree, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    SessionModesAndKinds, ServingAgreementTest,
    ::testing::Values(Case{"LastK_T2Diff", {"data.session_mode=LAST_K", "model.kind=T2DIFF"}},
                      Case{"TimeGap_T2Diff_TimeLags",
                           {"data.session_mode=TIME_GAP", "model.kind=T2DIFF", "model.time_lag_feature=true"}},
                      Case{"LastK_NoDiffusion", {"data.session_mode=LAST_K", "model.kind=T2DIFF_NO_DIFFUSION"}},
                      Case{"TimeGap_NoDiffusion", {"data.session_mode=TIME_GAP", "model.kind=T2DIFF_NO_DIFFUSION"}},
                      // The industrial options: a U-Net narrower than D over the newest slots,
                      // sampled with DDIM in a few steps.
                      Case{"LastK_T2Diff_LeanDiffusion",
                           {"data.session_mode=LAST_K", "model.kind=T2DIFF", "model.unet_channels=3",
                            "model.diffusion_window=4", "model.reverse_update=DDIM",
                            "model.inference_reverse_steps=5"}},
                      Case{"LastK_T2Diff_UserIds",
                           {"data.session_mode=LAST_K", "model.kind=T2DIFF", "model.user_id_table=user_id"},
                           R"(tables { name: "user_id" dim: 3 optimizer { kind: ADAGRAD learning_rate: 0.05 } })"},
                      // Profile fields from the generator: the dump carries each sample's keys
                      // (user_feature_keys), and the bundle reads the profile table's rows.
                      Case{"TimeGap_T2Diff_ProfileFields",
                           {"data.session_mode=TIME_GAP", "model.kind=T2DIFF", "model.user_feature_table=profile",
                            "data.generator.user_profile_fields=3", "data.generator.user_profile_values=4",
                            "data.generator.user_profile_signal=0.5"},
                           R"(tables { name: "profile" dim: 2 optimizer { kind: ADAGRAD learning_rate: 0.05 } })"},
                      Case{"LastK_TwoTowerMean_UserIdsAndProfileFields",
                           {"data.session_mode=LAST_K", "model.kind=TWO_TOWER_MEAN", "model.user_id_table=user_id",
                            "model.user_feature_table=profile", "data.generator.user_profile_fields=2"},
                           R"(tables { name: "user_id" dim: 3 optimizer { kind: ADAGRAD learning_rate: 0.05 } }
                              tables { name: "profile" dim: 2 optimizer { kind: ADAGRAD learning_rate: 0.05 } })"}),
    [](const ::testing::TestParamInfo<Case>& p) { return std::string(p.param.name); });

}  // namespace
}  // namespace t2d::trainer

namespace t2d::trainer {
namespace {

class EvalAtScaleTest : public test_util::InProcJobTest {};

// eval.max_samples caps each split; eval.ann ranks through the serving index as well. With an
// index that scans every cell (IVF with nprobe >= its lists) or the exact one, the index's
// metrics equal the exact ones and it finds all of the exact top main_k.
TEST_F(EvalAtScaleTest, SampleCapAndIndexRankingAgreeWithExact) {
  for (const std::string serving : {"", "serving { exact_max_items: 10 index_kind: IVF ivf_nprobe: 64 }"}) {
    SCOPED_TRACE(serving.empty() ? "exact index" : serving);
    std::vector<std::string> overrides = {"training.epochs=1", "eval.ann=true"};
    const config::JobConfig base = Job(overrides);
    config::JobConfig job = base;
    if (!serving.empty()) {
      ASSERT_TRUE(google::protobuf::TextFormat::MergeFromString(serving, &job));
    }
    std::filesystem::remove_all(dir_ + "/data");
    PrepareData(job);
    auto t = NewTrainer(job, false);
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_TRUE((*t)->Train().ok());
    auto r = (*t)->Evaluate("test");
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_TRUE(r->has_ann);
    EXPECT_EQ(r->ann_index, serving.empty() ? "flat" : "ivf");
    EXPECT_EQ(r->ann.count(), r->model.count());
    for (int k : r->model.ks()) EXPECT_DOUBLE_EQ(r->ann.Recall(k), r->model.Recall(k)) << "Recall@" << k;
    EXPECT_DOUBLE_EQ(r->ann_recall, 1.0);
    EXPECT_EQ(r->ann_top_k, 10);
    EXPECT_GT(r->exact_seconds, 0);
    EXPECT_GT(r->ann_seconds, 0);
  }
  config::JobConfig capped = Job({"training.epochs=1", "eval.max_samples=17"});
  auto t = NewTrainer(capped, false);
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE((*t)->Train().ok());
  auto r = (*t)->Evaluate("test");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->model.count(), 17);
  EXPECT_EQ(r->popularity.count(), 17);
  EXPECT_FALSE(r->has_ann);
}

}  // namespace
}  // namespace t2d::trainer
