#include "trainer/metrics.h"

#include <gtest/gtest.h>

#include <cmath>

namespace t2d::trainer {
namespace {

TEST(Metrics, RankCountsStrictlyHigherScores) {
  const std::vector<float> scores = {0.5f, 0.9f, 0.5f, 0.1f, 0.7f};
  EXPECT_EQ(RankOfTarget(scores, 1), 1);
  EXPECT_EQ(RankOfTarget(scores, 0), 3);  // 0.9 and 0.7 higher; the tie at 0.5 does not count
  EXPECT_EQ(RankOfTarget(scores, 2), 3);
  EXPECT_EQ(RankOfTarget(scores, 3), 5);
}

TEST(Metrics, HandComputedAverages) {
  RankingMetrics m({1, 3});
  m.Add(1);
  m.Add(2);
  m.Add(5);
  m.Add(3);
  EXPECT_EQ(m.count(), 4);
  EXPECT_DOUBLE_EQ(m.Recall(1), 0.25);
  EXPECT_DOUBLE_EQ(m.Recall(3), 0.75);
  EXPECT_DOUBLE_EQ(m.Mrr(1), 0.25);
  EXPECT_DOUBLE_EQ(m.Mrr(3), (1.0 + 0.5 + 1.0 / 3.0) / 4.0);
  EXPECT_DOUBLE_EQ(m.Ndcg(3), (1.0 + 1.0 / std::log2(3.0) + 0.5) / 4.0);
  EXPECT_EQ(m.ToString().substr(0, 40), "Recall@1=0.2500 MRR@1=0.2500 NDCG@1=0.25");
}

TEST(Metrics, SumsRoundTripAndMerge) {
  RankingMetrics a({2, 10}), b({2, 10});
  a.Add(1);
  b.Add(4);
  b.Add(20);
  RankingMetrics c({2, 10});
  c.SetSums(a.Sums());
  c.Merge(b);
  EXPECT_EQ(c.count(), 3);
  EXPECT_DOUBLE_EQ(c.Recall(10), 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(c.Mrr(10), (1.0 + 0.25) / 3.0);
  RankingMetrics empty({5});
  EXPECT_EQ(empty.Recall(5), 0.0);
}

}  // namespace
}  // namespace t2d::trainer
