// data/catalogue.h: lookup, popularity shares and sampling by hand, and counting training
// targets of a prepared data set.
#include "data/catalogue.h"

#include <gtest/gtest.h>

#include <cmath>

#include "data/prepare.h"
#include "data/sample_reader.h"
#include "tests/data/test_util.h"

namespace t2d::data {
namespace {

using config::DataConfig;
using testing::TempDir;

TEST(CatalogueTest, LookupSharesAndSamplingByHand) {
  // Counts 5, 3, 0 (a zero counts as 1): shares 5/9, 3/9, 1/9; cdf 5/9, 8/9, 1.
  auto c = Catalogue::FromItems({100, 200, 300}, {{7}, {8, 9}, {7}}, {5, 3, 0});
  EXPECT_EQ(c->size(), 3);
  EXPECT_EQ(c->IndexOf(200), 1);
  EXPECT_EQ(c->IndexOf(7), -1);
  EXPECT_EQ(c->all_tags(), (std::vector<int64_t>{7, 8, 9}));
  EXPECT_FLOAT_EQ(c->log_share(0), static_cast<float>(std::log(5.0 / 9.0)));
  EXPECT_FLOAT_EQ(c->log_share(2), static_cast<float>(std::log(1.0 / 9.0)));
  EXPECT_EQ(c->SampleByPopularity(0.0), 0);
  EXPECT_EQ(c->SampleByPopularity(5.0 / 9.0 - 1e-9), 0);
  EXPECT_EQ(c->SampleByPopularity(5.0 / 9.0 + 1e-9), 1);
  EXPECT_EQ(c->SampleByPopularity(0.95), 2);
  EXPECT_EQ(c->SampleByPopularity(0.999999999), 2);
  EXPECT_EQ(c->ByPopularity(), (std::vector<int64_t>{0, 1, 2}));
  c->SetCounts({0, 0, 0});
  EXPECT_EQ(c->ByPopularity(), (std::vector<int64_t>{0, 1, 2}));  // ties: smaller id first
}

TEST(CatalogueTest, CountsTrainingTargetsOfAPreparedDataSet) {
  TempDir dir;
  DataConfig c;
  c.set_source(DataConfig::SYNTHETIC);
  c.set_dataset_dir(dir.File("syn"));
  c.set_num_shards(2);
  c.set_max_seq_len(8);
  c.set_session_len(3);
  c.mutable_generator()->set_num_users(80);
  c.mutable_generator()->set_num_items(40);
  c.mutable_generator()->set_mean_seq_len(10);
  auto summary = Prepare(c, false);
  ASSERT_TRUE(summary.ok()) << summary.status();
  auto cat = Catalogue::Load(c.dataset_dir());
  ASSERT_TRUE(cat.ok()) << cat.status();
  // The generator writes each item's training targets into the items file, so the trainer needs
  // no counting pass: the same counts as one over the train split.
  ReaderOptions o;
  o.split = "train";
  o.batch_size = 64;
  o.max_seq_len = 1;
  o.shuffle_buffer = 0;
  o.equal_epochs = false;
  auto reader = SampleReader::Open(c.dataset_dir(), o);
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::vector<int64_t> counted((*cat)->size());
  SampleBatch b;
  while (true) {
    auto more = (*reader)->Next(&b);
    ASSERT_TRUE(more.ok()) << more.status();
    if (!*more) break;
    for (int i = 0; i < b.size; ++i) ++counted[static_cast<size_t>((*cat)->IndexOf(b.target_id[static_cast<size_t>(i)]))];
  }
  EXPECT_EQ(counted, (*cat)->counts());
  // Every training sample's target is counted once.
  int64_t total = 0;
  for (int64_t n : (*cat)->counts()) total += n;
  EXPECT_EQ(total, summary->train_samples());
  EXPECT_FALSE(Catalogue::Load(dir.File("none")).ok());
}

}  // namespace
}  // namespace t2d::data
