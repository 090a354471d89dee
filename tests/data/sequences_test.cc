#include "data/sequences.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <set>

namespace t2d::data {
namespace {

using config::DataConfig;

TEST(BuildSequencesTest, StableTimeSortMinLengthAndCounts) {
  InteractionLog log;
  // user 2: equal timestamps keep input order (30 before 10); user 5 has one item; user 9 two.
  log.interactions = {{2, 30, 100}, {5, 1, 1}, {2, 10, 100}, {2, 20, 50}, {9, 7, 3}, {9, 8, 2}};
  log.empty_users = 4;
  PrepareSummary s;
  auto built = BuildSequences(log, 2, &s);
  ASSERT_TRUE(built.ok()) << built.status();
  const auto& seqs = *built;
  ASSERT_EQ(seqs.size(), 2u);
  EXPECT_EQ(seqs[0].user, 2);
  EXPECT_EQ(seqs[0].items, (std::vector<int64_t>{20, 30, 10}));
  EXPECT_EQ(seqs[0].times, (std::vector<int64_t>{50, 100, 100}));
  EXPECT_EQ(seqs[1].items, (std::vector<int64_t>{8, 7}));
  EXPECT_EQ(s.input_users(), 3);
  EXPECT_EQ(s.input_items(), 6);
  EXPECT_EQ(s.input_interactions(), 6);
  EXPECT_EQ(s.empty_users(), 4);
  EXPECT_EQ(s.one_item_users(), 1);
  EXPECT_EQ(s.short_users_dropped(), 1);
  EXPECT_EQ(s.users(), 2);
  EXPECT_EQ(s.items(), 5);
  EXPECT_EQ(s.interactions(), 5);
  EXPECT_EQ(s.min_seq_len(), 2);
  EXPECT_EQ(s.max_seq_len(), 3);
  EXPECT_DOUBLE_EQ(s.mean_seq_len(), 2.5);
  int64_t total = 0;
  for (const auto& b : s.seq_len_histogram()) {
    total += b.count();
    if (b.lo() == 2 || b.lo() == 3) {
      EXPECT_EQ(b.count(), 1);
    }
  }
  EXPECT_EQ(total, 2);
}

TEST(BuildSequencesTest, FileOrderKeepsInputOrder) {
  InteractionLog log;
  log.interactions = {{2, 30, 100}, {2, 10, 5}, {2, 20, 50}};
  PrepareSummary s;
  auto built = BuildSequences(log, 1, &s, /*by_time=*/false);
  ASSERT_TRUE(built.ok()) << built.status();
  const auto& seqs = *built;
  ASSERT_EQ(seqs.size(), 1u);
  EXPECT_EQ(seqs[0].items, (std::vector<int64_t>{30, 10, 20}));
  EXPECT_EQ(seqs[0].times, (std::vector<int64_t>{100, 5, 50}));
}

TEST(SessionBeginTest, LastKAndTimeGap) {
  //                          0  1   2     3     4     5     6
  std::vector<int64_t> times{0, 10, 5000, 5010, 5020, 9000, 9005};
  // LAST_K: the last k behaviours of the window.
  EXPECT_EQ(SessionBegin(times, 0, 6, DataConfig::LAST_K, 1800, 3), 3u);
  EXPECT_EQ(SessionBegin(times, 4, 6, DataConfig::LAST_K, 1800, 3), 4u);
  // TIME_GAP: after the last gap > 1800 s (between 4 and 5), capped at k.
  EXPECT_EQ(SessionBegin(times, 0, 7, DataConfig::TIME_GAP, 1800, 10), 5u);
  EXPECT_EQ(SessionBegin(times, 0, 5, DataConfig::TIME_GAP, 1800, 10), 2u);
  EXPECT_EQ(SessionBegin(times, 0, 5, DataConfig::TIME_GAP, 1800, 2), 3u);
  // A session of one behaviour, and an empty history.
  EXPECT_EQ(SessionBegin(times, 0, 6, DataConfig::TIME_GAP, 1800, 10), 5u);
  EXPECT_EQ(SessionBegin(times, 0, 0, DataConfig::TIME_GAP, 1800, 10), 0u);
  // The window start bounds the session.
  EXPECT_EQ(SessionBegin(times, 3, 5, DataConfig::TIME_GAP, 1800, 10), 3u);
}

// Times at the ends of the int64 range: the gap between them does not fit an int64 (signed
// overflow, which wrapped to -1 and kept both in one session); it is compared as a double.
TEST(SessionBeginTest, GapsBeyondTheInt64RangeCutTheSession) {
  const int64_t lo = std::numeric_limits<int64_t>::min(), hi = std::numeric_limits<int64_t>::max();
  const std::vector<int64_t> times{lo, hi, hi};
  EXPECT_EQ(SessionBegin(times, 0, 3, DataConfig::TIME_GAP, 1800, 10), 1u);
  EXPECT_EQ(SessionBegin(times, 0, 2, DataConfig::TIME_GAP, 1800, 10), 1u);
  EXPECT_EQ(SessionBegin(times, 0, 2, DataConfig::TIME_GAP, 1e300, 10), 0u);
}

std::vector<uint32_t> Positions(const std::vector<TargetRef>& v) {
  std::vector<uint32_t> out;
  for (const auto& t : v) out.push_back(t.target);
  return out;
}

TEST(UserTargetsTest, LastItemProtocol) {
  SplitOptions o;
  o.protocol = DataConfig::LAST_ITEM;
  o.window = 3;
  o.session_len = 2;
  std::array<std::vector<TargetRef>, kNumSplits> t;
  std::vector<int64_t> times{1, 2, 3, 4, 5, 6};
  ASSERT_TRUE(UserTargets(o, 1, kTrain, times, &t));
  EXPECT_EQ(Positions(t[kTrain]), (std::vector<uint32_t>{1, 2, 3}));
  EXPECT_EQ(Positions(t[kValid]), (std::vector<uint32_t>{4}));
  EXPECT_EQ(Positions(t[kTest]), (std::vector<uint32_t>{5}));
  // Target 5: window [2, 5), session the last 2 -> begins at 3.
  EXPECT_EQ(t[kTest][0].session_begin, 3u);
  EXPECT_EQ(t[kTrain][0].session_begin, 0u);
  EXPECT_FALSE(UserTargets(o, 1, kTrain, std::vector<int64_t>{1, 2}, &t));
}

// PAPER over windows of 4; targets per training / evaluation user.
SplitOptions PaperOptions(int train_targets, int eval_targets, uint64_t seed) {
  SplitOptions o;
  o.protocol = DataConfig::PAPER;
  o.window = 4;
  o.paper_targets_per_user = train_targets;
  o.paper_eval_targets_per_user = eval_targets;
  o.seed = seed;
  return o;
}

std::vector<int64_t> Times(int n) {
  std::vector<int64_t> times(static_cast<size_t>(n));
  std::iota(times.begin(), times.end(), 0);
  return times;
}

TEST(UserTargetsTest, PaperProtocolFullWindowsDeterministic) {
  SplitOptions o = PaperOptions(3, 1, 7);
  o.session_len = 2;
  const std::vector<int64_t> times = Times(20);
  std::array<std::vector<TargetRef>, kNumSplits> a, b;
  ASSERT_TRUE(UserTargets(o, 42, kTrain, times, &a));
  ASSERT_TRUE(UserTargets(o, 42, kTrain, times, &b));
  ASSERT_EQ(a[kTrain].size(), 3u);
  EXPECT_EQ(Positions(a[kTrain]), Positions(b[kTrain]));
  std::set<uint32_t> distinct;
  for (const auto& t : a[kTrain]) {
    EXPECT_GE(t.target, 4u);  // a full window of 4 before it
    EXPECT_LT(t.target, 20u);
    distinct.insert(t.target);
  }
  EXPECT_EQ(distinct.size(), 3u);
  // Short training user (len <= n): one sample, the last item.
  ASSERT_TRUE(UserTargets(o, 42, kTrain, std::vector<int64_t>{1, 2, 3}, &a));
  EXPECT_EQ(Positions(a[kTrain]), (std::vector<uint32_t>{2}));
  // Test user under RANDOM_POSITION (default): one target, the first draw of the same shuffle
  // a training user makes, so one of the training user's positions.
  ASSERT_TRUE(UserTargets(o, 42, kTest, times, &a));
  EXPECT_TRUE(a[kTrain].empty());
  ASSERT_EQ(a[kTest].size(), 1u);
  EXPECT_GE(a[kTest][0].target, 4u);
  EXPECT_LT(a[kTest][0].target, 20u);
  const std::vector<uint32_t> train_positions = Positions(b[kTrain]);
  EXPECT_EQ(std::count(train_positions.begin(), train_positions.end(), a[kTest][0].target), 1);
  // Different users draw different positions (16 candidates; 8 users all equal would be a bug).
  std::set<uint32_t> eval_positions;
  for (int64_t user = 0; user < 8; ++user) {
    ASSERT_TRUE(UserTargets(o, user, kValid, times, &a));
    ASSERT_EQ(a[kValid].size(), 1u);
    eval_positions.insert(a[kValid][0].target);
  }
  EXPECT_GT(eval_positions.size(), 1u);
  // A short test user: the last item.
  ASSERT_TRUE(UserTargets(o, 42, kTest, std::vector<int64_t>{1, 2, 3}, &a));
  EXPECT_EQ(Positions(a[kTest]), (std::vector<uint32_t>{2}));
  // LAST: an eval user's last item.
  o.paper_eval_target = DataConfig::LAST;
  ASSERT_TRUE(UserTargets(o, 42, kTest, times, &a));
  EXPECT_EQ(Positions(a[kTest]), (std::vector<uint32_t>{19}));
  // Fewer candidates than m: all of them.
  std::vector<int64_t> six{1, 2, 3, 4, 5, 6};
  ASSERT_TRUE(UserTargets(o, 1, kTrain, six, &a));
  EXPECT_EQ(Positions(a[kTrain]), (std::vector<uint32_t>{4, 5}));
}

// Several targets per evaluation user: the positions a training user with the same m would get
// (the same shuffle), so one target is the prefix of several; short users still give one.
TEST(UserTargetsTest, PaperProtocolSeveralEvalTargets) {
  SplitOptions o = PaperOptions(5, 5, 3);
  const std::vector<int64_t> times = Times(30);
  std::array<std::vector<TargetRef>, kNumSplits> train, test, one;
  ASSERT_TRUE(UserTargets(o, 9, kTrain, times, &train));
  ASSERT_TRUE(UserTargets(o, 9, kTest, times, &test));
  ASSERT_EQ(test[kTest].size(), 5u);
  EXPECT_TRUE(test[kTrain].empty());
  EXPECT_EQ(Positions(test[kTest]), Positions(train[kTrain]));
  o.paper_eval_targets_per_user = 1;
  ASSERT_TRUE(UserTargets(o, 9, kValid, times, &one));
  ASSERT_EQ(one[kValid].size(), 1u);
  const std::vector<uint32_t> five = Positions(test[kTest]);
  EXPECT_EQ(std::count(five.begin(), five.end(), one[kValid][0].target), 1);
  // 7 behaviours, window 4: 3 candidates (4, 5, 6), all of them.
  o.paper_eval_targets_per_user = 5;
  ASSERT_TRUE(UserTargets(o, 9, kTest, std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7}, &test));
  EXPECT_EQ(Positions(test[kTest]), (std::vector<uint32_t>{4, 5, 6}));
  ASSERT_TRUE(UserTargets(o, 9, kTest, std::vector<int64_t>{1, 2, 3}, &test));
  EXPECT_EQ(Positions(test[kTest]), (std::vector<uint32_t>{2}));
}

TEST(UserTargetsTest, GlobalTimeProtocol) {
  SplitOptions o;
  o.protocol = DataConfig::GLOBAL_TIME;
  o.window = 10;
  o.valid_cut = 30;
  o.test_cut = 40;
  std::array<std::vector<TargetRef>, kNumSplits> t;
  ASSERT_TRUE(UserTargets(o, 1, kTrain, std::vector<int64_t>{5, 10, 29, 30, 35, 40, 50}, &t));
  EXPECT_EQ(Positions(t[kTrain]), (std::vector<uint32_t>{1, 2}));
  EXPECT_EQ(Positions(t[kValid]), (std::vector<uint32_t>{3, 4}));
  EXPECT_EQ(Positions(t[kTest]), (std::vector<uint32_t>{5, 6}));
}

TEST(PaperGroupsTest, ExactFractionsAndSeeded) {
  auto g = PaperGroups(1000, 0.8, 0.05, 3);
  int counts[3] = {0, 0, 0};
  for (Split s : g) ++counts[s];
  EXPECT_EQ(counts[kTrain], 800);
  EXPECT_EQ(counts[kValid], 50);
  EXPECT_EQ(counts[kTest], 150);
  EXPECT_EQ(g, PaperGroups(1000, 0.8, 0.05, 3));
  EXPECT_NE(g, PaperGroups(1000, 0.8, 0.05, 4));
  int train = 0;
  for (int u = 0; u < 10000; ++u) train += PaperGroupOfUser(u, 0.8, 0.0, 1) == kTrain;
  EXPECT_NEAR(train, 8000, 200);
}

}  // namespace
}  // namespace t2d::data
