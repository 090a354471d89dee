#include "model/step_builder.h"

#include <gtest/gtest.h>

#include <cmath>

namespace t2d::model {
namespace {

// Catalogue: items 100, 200, 300 with tags {7}, {8, 9}, {} and counts 5, 3, 2.
std::unique_ptr<data::Catalogue> MakeCatalogue() {
  return data::Catalogue::FromItems({100, 200, 300}, {{7}, {8, 9}, {}}, {5, 3, 2});
}

// Two samples, n = 3, T = 2: sample 0 has history [200] -> 100, sample 1 [100, 300, 200] -> 300.
data::SampleBatch MakeBatch() {
  data::SampleBatch b;
  b.size = 2;
  b.max_seq_len = 3;
  b.max_tags = 2;
  b.history_id = {200, 0, 0, 100, 300, 200};
  b.history_len = {1, 3};
  b.session_begin = {0, 1};
  b.history_time = std::vector<int64_t>(6, 0);
  b.time_lag = {5, 0, 0, 30, 20, 10};
  b.history_tag = {8, 9, 0, 0, 0, 0, 7, 0, 0, 0, 8, 9};
  b.history_tag_count = {2, 0, 0, 1, 0, 2};
  b.target_id = {100, 300};
  b.target_time = {0, 0};
  b.target_tag = {7, 0, 0, 0};
  b.target_tag_count = {1, 0};
  b.user_id = {1, 2};
  return b;
}

TEST(StepBuilder, FullSoftmaxPutsCatalogueFirstAndRightAligns) {
  auto cat = MakeCatalogue();
  StepBuilder::Options o;
  o.full_softmax = true;
  o.time_lags = true;
  StepBuilder builder(cat.get(), o);
  StepInput in;
  ASSERT_TRUE(builder.BuildTraining(MakeBatch(), 1, &in).ok());
  EXPECT_EQ(in.id_keys, (std::vector<int64_t>{100, 200, 300}));
  EXPECT_EQ(in.tag_keys, (std::vector<int64_t>{7, 8, 9}));
  const model::Batch& b = in.batch;
  EXPECT_EQ(b.batch_size, 2);
  EXPECT_EQ(b.seq_len, 3);
  EXPECT_EQ(b.lengths, (std::vector<int64_t>{1, 3}));
  // Sample 0: two padding slots, then item 200 (row 1); sample 1: 100, 300, 200.
  EXPECT_EQ(b.history.id_rows, (std::vector<int64_t>{-1, -1, 1, 0, 2, 1}));
  EXPECT_EQ(b.history.tag_offsets, (std::vector<int64_t>{0, 0, 0, 2, 3, 3, 5}));
  EXPECT_EQ(b.history.tag_rows, (std::vector<int64_t>{1, 2, 0, 1, 2}));
  EXPECT_EQ(b.time_lags, (std::vector<float>{0, 0, 5, 30, 20, 10}));
  EXPECT_EQ(b.targets.id_rows, (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(b.target_candidates, (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(in.candidates.items.id_rows, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_TRUE(model::ValidateBatch(b, 3, 3).ok());
}

// With a user table each sample names its user's row among the batch's distinct users (first
// seen first), for training and user-only batches alike; without one nothing is filled.
TEST(StepBuilder, UserRowsNumberTheBatchsDistinctUsers) {
  auto cat = MakeCatalogue();
  data::SampleBatch in = MakeBatch();
  in.user_id = {42, 7};
  StepBuilder::Options o;
  StepInput out;
  ASSERT_TRUE(StepBuilder(cat.get(), o).BuildTraining(in, 1, &out).ok());
  EXPECT_TRUE(out.user_keys.empty());
  EXPECT_TRUE(out.batch.user_rows.empty());
  o.use_user_ids = true;
  StepBuilder builder(cat.get(), o);
  ASSERT_TRUE(builder.BuildTraining(in, 1, &out).ok());
  EXPECT_EQ(out.user_keys, (std::vector<int64_t>{42, 7}));
  EXPECT_EQ(out.batch.user_rows, (std::vector<int64_t>{0, 1}));
  in.user_id = {9, 9};
  ASSERT_TRUE(builder.BuildUsers(in, &out).ok());
  EXPECT_EQ(out.user_keys, (std::vector<int64_t>{9}));
  EXPECT_EQ(out.batch.user_rows, (std::vector<int64_t>{0, 0}));
}

// Keys are numbered first seen first whatever their range: small ones through the builder's
// direct array, large and negative ones through its hash map, in one numbering; each build
// starts afresh, so a key seen before gets its new first-seen row.
TEST(StepBuilder, RowNumbersMixDenseAndHashedKeysAndStartAfreshEachBuild) {
  auto cat = MakeCatalogue();
  StepBuilder::Options o;
  o.use_user_ids = true;
  StepBuilder builder(cat.get(), o);
  data::SampleBatch in = MakeBatch();
  const int64_t big = int64_t{1} << 40;
  in.size = 6;
  in.history_id.assign(18, 0);
  in.history_len.assign(6, 0);
  in.session_begin.assign(6, 0);
  in.history_tag.assign(36, 0);
  in.history_tag_count.assign(18, 0);
  in.user_id = {5, big, -3, 5, 3000000, big};
  StepInput out;
  ASSERT_TRUE(builder.BuildUsers(in, &out).ok());
  EXPECT_EQ(out.user_keys, (std::vector<int64_t>{5, big, -3, 3000000}));
  EXPECT_EQ(out.batch.user_rows, (std::vector<int64_t>{0, 1, 2, 0, 3, 1}));
  in.user_id = {1999999, big, 7, 5, 5, -3};  // 5 comes later now; 1999999 grows the array
  ASSERT_TRUE(builder.BuildUsers(in, &out).ok());
  EXPECT_EQ(out.user_keys, (std::vector<int64_t>{1999999, big, 7, 5, -3}));
  EXPECT_EQ(out.batch.user_rows, (std::vector<int64_t>{0, 1, 2, 3, 3, 4}));
  StepInput other;  // a different output: the numbering does not depend on the last one's keys
  in.user_id = {7, 7, 8, 1999999, 0, 0};
  ASSERT_TRUE(builder.BuildUsers(in, &other).ok());
  EXPECT_EQ(other.user_keys, (std::vector<int64_t>{7, 8, 1999999, 0}));
  EXPECT_EQ(other.batch.user_rows, (std::vector<int64_t>{0, 0, 1, 2, 3, 3}));
}

// With profile fields each sample's F keys become rows among the batch's distinct nonzero keys
// (first seen first, shared across fields and samples), a missing value (key 0) row -1; without
// the option nothing is filled.
TEST(StepBuilder, UserFeatureRowsNumberTheBatchsDistinctKeys) {
  auto cat = MakeCatalogue();
  data::SampleBatch in = MakeBatch();
  in.user_fields = 3;
  in.user_feature = {11, 0, 22, 22, 33, 0};
  StepBuilder::Options o;
  StepInput out;
  ASSERT_TRUE(StepBuilder(cat.get(), o).BuildTraining(in, 1, &out).ok());
  EXPECT_TRUE(out.user_feature_keys.empty());
  EXPECT_TRUE(out.batch.user_feature_rows.empty());
  o.use_user_features = true;
  StepBuilder builder(cat.get(), o);
  ASSERT_TRUE(builder.BuildTraining(in, 1, &out).ok());
  EXPECT_EQ(out.user_feature_keys, (std::vector<int64_t>{11, 22, 33}));
  EXPECT_EQ(out.batch.user_feature_rows, (std::vector<int64_t>{0, -1, 1, 1, 2, -1}));
  // A batch with every value missing pulls no row.
  in.user_feature = {0, 0, 0, 0, 0, 0};
  ASSERT_TRUE(builder.BuildUsers(in, &out).ok());
  EXPECT_TRUE(out.user_feature_keys.empty());
  EXPECT_EQ(out.batch.user_feature_rows, (std::vector<int64_t>(6, -1)));
  // Fewer keys than samples x fields: refused.
  in.user_feature.resize(5);
  EXPECT_FALSE(builder.BuildUsers(in, &out).ok());
}

TEST(StepBuilder, SampledSoftmaxDrawsNegativesByPopularity) {
  auto cat = MakeCatalogue();
  StepBuilder::Options o;
  o.full_softmax = false;
  o.num_negatives = 1000;
  StepBuilder builder(cat.get(), o);
  StepInput a, b;
  ASSERT_TRUE(builder.BuildTraining(MakeBatch(), 7, &a).ok());
  ASSERT_TRUE(builder.BuildTraining(MakeBatch(), 7, &b).ok());
  EXPECT_EQ(a.candidates.items.id_rows, b.candidates.items.id_rows);  // same seed, same draw
  ASSERT_EQ(a.candidates.items.size(), 1000);
  // Rows appear in first-touch order: history of sample 0 first.
  EXPECT_EQ(a.id_keys[0], 200);
  int popular = 0;
  for (int64_t r : a.candidates.items.id_rows) popular += a.id_keys[static_cast<size_t>(r)] == 100 ? 1 : 0;
  EXPECT_NEAR(popular, 500, 60);  // item 100 holds 5 of 10 counts
  EXPECT_NEAR(a.candidates.log_q[0], std::log(static_cast<float>(cat->counts()[static_cast<size_t>(
                                         cat->IndexOf(a.id_keys[static_cast<size_t>(a.candidates.items.id_rows[0])]))]) / 10.0f),
              1e-5);
  EXPECT_NEAR(a.batch.target_log_q[0], std::log(0.5f), 1e-6);
}

TEST(StepBuilder, TargetOutsideCatalogueIsAnError) {
  auto cat = MakeCatalogue();
  StepBuilder builder(cat.get(), StepBuilder::Options());
  auto batch = MakeBatch();
  batch.target_id[1] = 999;
  StepInput in;
  auto s = builder.BuildTraining(batch, 1, &in);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("target item 999"), std::string::npos) << s;
  batch = MakeBatch();
  batch.history_len[0] = 4;
  EXPECT_FALSE(builder.BuildTraining(batch, 1, &in).ok());
}

TEST(StepBuilder, CatalogueSliceAndPopularity) {
  auto cat = MakeCatalogue();
  StepBuilder builder(cat.get(), StepBuilder::Options());
  StepInput in;
  builder.BuildCatalogue(1, 3, &in);
  EXPECT_EQ(in.id_keys, (std::vector<int64_t>{200, 300}));
  EXPECT_EQ(in.candidates.items.size(), 2);
  EXPECT_EQ(cat->ByPopularity(), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(cat->SampleByPopularity(0.0), 0);
  EXPECT_EQ(cat->SampleByPopularity(0.55), 1);
  EXPECT_EQ(cat->SampleByPopularity(0.95), 2);
}

}  // namespace
}  // namespace t2d::model

namespace t2d::model {
namespace {

TEST(StepBuilder, TimeGapSessionLengths) {
  auto cat = MakeCatalogue();
  StepBuilder::Options o;
  o.time_gap_sessions = true;
  StepBuilder builder(cat.get(), o);
  StepInput in;
  auto batch = MakeBatch();
  batch.session_begin = {1, 1};  // sample 0: empty session (kept as its newest behaviour)
  ASSERT_TRUE(builder.BuildTraining(batch, 1, &in).ok());
  EXPECT_EQ(in.batch.session_lengths, (std::vector<int64_t>{1, 2}));
  StepBuilder plain(cat.get(), StepBuilder::Options());
  ASSERT_TRUE(plain.BuildTraining(batch, 1, &in).ok());
  EXPECT_TRUE(in.batch.session_lengths.empty());
}

}  // namespace
}  // namespace t2d::model
