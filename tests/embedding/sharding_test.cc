#include "embedding/sharding.h"

#include <gtest/gtest.h>

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

TEST(Sharding, PartitionKeepsPositions) {
  const std::vector<int64_t> ids = {5, 9, 5, -3, 100, 7, 8};
  const Partition p = PartitionByShard(ids, 3);
  size_t total = 0;
  for (int s = 0; s < 3; ++s) {
    ASSERT_EQ(p.ids[static_cast<size_t>(s)].size(), p.positions[static_cast<size_t>(s)].size());
    for (size_t j = 0; j < p.ids[static_cast<size_t>(s)].size(); ++j) {
      EXPECT_EQ(ShardOf(p.ids[static_cast<size_t>(s)][j], 3), s);
      EXPECT_EQ(ids[p.positions[static_cast<size_t>(s)][j]], p.ids[static_cast<size_t>(s)][j]);
    }
    total += p.ids[static_cast<size_t>(s)].size();
  }
  EXPECT_EQ(total, ids.size());
}

}  // namespace
}  // namespace t2d::embedding
