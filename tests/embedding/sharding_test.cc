#include "embedding/sharding.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

namespace t2d::embedding {
namespace {

TEST(Sharding, PureAndInRange) {
  for (int n : {1, 2, 3, 7, 64}) {
    for (int64_t id : {int64_t{0}, int64_t{1}, int64_t{-1}, int64_t{1} << 62, int64_t{123456789}}) {
      const int s = ShardOf(id, n);
      EXPECT_GE(s, 0);
      EXPECT_LT(s, n);
      EXPECT_EQ(s, ShardOf(id, n));
    }
  }
  EXPECT_EQ(ShardOf(987654321, 1), 0);
}

TEST(Sharding, SequentialIdsSpreadEvenly) {
  for (int n : {2, 3, 8, 13}) {
    std::vector<int> count(static_cast<size_t>(n));
    const int total = 130000;
    for (int64_t id = 0; id < total; ++id) ++count[static_cast<size_t>(ShardOf(id, n))];
    for (int c : count) EXPECT_NEAR(c, total / n, 0.03 * total / n) << "n=" << n;
  }
  // Strided ids (a common pattern: id = item * 1000 + type) must spread too.
  std::vector<int> count(4);
  for (int64_t i = 0; i < 40000; ++i) ++count[static_cast<size_t>(ShardOf(i * 1024, 4))];
  for (int c : count) EXPECT_NEAR(c, 10000, 400);
}

TEST(Sharding, PartitionDedupesInFirstOccurrenceOrder) {
  const std::vector<int64_t> ids = {5, 9, 5, -3, 100, 7, 8, 9, -3, 5};
  // One shard: the distinct ids in order of first occurrence (the order on the wire).
  const Partition one = PartitionByShard(ids, 1);
  ASSERT_EQ(one.ids.size(), 1u);
  EXPECT_EQ(one.ids[0], (std::vector<int64_t>{5, 9, -3, 100, 7, 8}));
  EXPECT_EQ(one.row_of_position, (std::vector<uint32_t>{0, 1, 0, 2, 3, 4, 5, 1, 2, 0}));
  for (int n : {2, 3, 7}) {
    const Partition p = PartitionByShard(ids, n);
    ASSERT_EQ(p.ids.size(), static_cast<size_t>(n));
    ASSERT_EQ(p.shard_of_position.size(), ids.size());
    ASSERT_EQ(p.row_of_position.size(), ids.size());
    // Every position points at its own id, in the shard that owns it.
    for (size_t i = 0; i < ids.size(); ++i) {
      const int s = p.shard_of_position[i];
      EXPECT_EQ(s, ShardOf(ids[i], n));
      ASSERT_LT(p.row_of_position[i], p.ids[static_cast<size_t>(s)].size());
      EXPECT_EQ(p.ids[static_cast<size_t>(s)][p.row_of_position[i]], ids[i]) << "n=" << n << " position " << i;
    }
    // Each shard holds its distinct ids in order of first occurrence.
    for (int s = 0; s < n; ++s) {
      std::vector<int64_t> want;
      for (int64_t id : ids) {
        if (ShardOf(id, n) == s && std::find(want.begin(), want.end(), id) == want.end()) want.push_back(id);
      }
      EXPECT_EQ(p.ids[static_cast<size_t>(s)], want) << "n=" << n << " shard " << s;
    }
  }
  const Partition empty = PartitionByShard({}, 3);
  EXPECT_EQ(empty.ids, std::vector<std::vector<int64_t>>(3));
  EXPECT_TRUE(empty.shard_of_position.empty() && empty.row_of_position.empty());
}

}  // namespace
}  // namespace t2d::embedding
