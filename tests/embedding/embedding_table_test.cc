#include "embedding/embedding_table.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "tests/embedding/test_tables.h"

namespace t2d::embedding {
namespace {

using config::InitializerConfig;
using config::SparseOptimizerConfig;
using testing::Spec;

std::vector<float> Lookup(const EmbeddingTable& t, std::vector<int64_t> ids) {
  std::vector<float> out(ids.size() * static_cast<size_t>(t.dim()));
  EXPECT_TRUE(t.Lookup(ids, absl::MakeSpan(out)).ok());
  return out;
}

TEST(EmbeddingTable, UnseenIdsReadAsInitialValuesAndAreNotStored) {
  auto t = *EmbeddingTable::Create(Spec("t", 8, SparseOptimizerConfig::SGD, 0.1f, InitializerConfig::NORMAL));
  const auto a = Lookup(*t, {42, -7, std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min()});
  EXPECT_EQ(t->size(), 0);
  // Pure function of (seed, id): the same in another table object and in any order.
  auto t2 = *EmbeddingTable::Create(Spec("t", 8, SparseOptimizerConfig::SGD, 0.1f, InitializerConfig::NORMAL));
  const auto b = Lookup(*t2, {std::numeric_limits<int64_t>::min(), 42});
  for (int j = 0; j < 8; ++j) {
    EXPECT_EQ(a[static_cast<size_t>(j)], b[static_cast<size_t>(8 + j)]);
    EXPECT_EQ(a[static_cast<size_t>(24 + j)], b[static_cast<size_t>(j)]);
  }
  // Different ids and different seeds give different rows.
  EXPECT_NE(a[0], a[8]);
  auto other = Spec("t", 8, SparseOptimizerConfig::SGD, 0.1f, InitializerConfig::NORMAL);
  other.mutable_initializer()->set_seed(2);
  auto t3 = *EmbeddingTable::Create(other);
  EXPECT_NE(Lookup(*t3, {42})[0], a[0]);
}

TEST(EmbeddingTable, StoredRowStartsFromItsInitialValue) {
  auto t = *EmbeddingTable::Create(Spec("t", 4, SparseOptimizerConfig::SGD, 1.0f, InitializerConfig::UNIFORM));
  const auto before = Lookup(*t, {9});
  ASSERT_TRUE(t->ApplyGradients({9}, {1, 2, 3, 4}).ok());
  const auto after = Lookup(*t, {9});
  for (size_t j = 0; j < 4; ++j) EXPECT_FLOAT_EQ(after[j], before[j] - static_cast<float>(j + 1));
}

TEST(EmbeddingTable, InitializerDistributions) {
  const int n = 20000, dim = 10;
  std::vector<int64_t> ids(n);
  std::iota(ids.begin(), ids.end(), 0);
  for (auto kind : {InitializerConfig::NORMAL, InitializerConfig::TRUNCATED_NORMAL, InitializerConfig::UNIFORM}) {
    auto spec = Spec("t", dim, SparseOptimizerConfig::SGD, 0.1f, kind);
    spec.mutable_initializer()->set_stddev(0.5f);
    spec.mutable_initializer()->set_range(0.3f);
    auto t = *EmbeddingTable::Create(spec);
    const auto v = Lookup(*t, ids);
    double sum = 0, sq = 0, max_abs = 0;
    for (float x : v) {
      sum += x;
      sq += static_cast<double>(x) * x;
      max_abs = std::max(max_abs, std::abs(static_cast<double>(x)));
    }
    const double mean = sum / static_cast<double>(v.size());
    const double var = sq / static_cast<double>(v.size()) - mean * mean;
    EXPECT_NEAR(mean, 0.0, 0.01) << kind;
    if (kind == InitializerConfig::NORMAL) {
      EXPECT_NEAR(std::sqrt(var), 0.5, 0.01);
    } else if (kind == InitializerConfig::TRUNCATED_NORMAL) {
      EXPECT_LE(max_abs, 1.0 + 1e-6);             // within 2 stddev
      EXPECT_NEAR(std::sqrt(var), 0.5 * 0.8796, 0.01);  // stddev of N(0,1) truncated at +-2
    } else {
      EXPECT_LE(max_abs, 0.3 + 1e-6);
      EXPECT_NEAR(var, 0.3 * 0.3 / 3.0, 0.002);  // variance of U(-a, a) = a^2 / 3
    }
  }
}

TEST(EmbeddingTable, SizeMismatchesAreErrors) {
  auto t = *EmbeddingTable::Create(Spec("tab", 4, SparseOptimizerConfig::SGD));
  std::vector<float> out(7);
  auto s = t->Lookup({1, 2}, absl::MakeSpan(out));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("tab"), std::string::npos);
  EXPECT_EQ(t->ApplyGradients({1}, {1, 2, 3}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t->step(), 0);
  EXPECT_FALSE(EmbeddingTable::Create(Spec("bad", 0, SparseOptimizerConfig::SGD)).ok());
}

TEST(EmbeddingTable, NonFiniteGradientIsRejectedAndNothingApplied) {
  auto t = *EmbeddingTable::Create(Spec("t", 2, SparseOptimizerConfig::SGD));
  auto s = t->ApplyGradients({1, 2}, {1, 1, 1, std::nanf("")});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("id 2"), std::string::npos) << s;
  EXPECT_EQ(t->size(), 0);
  EXPECT_EQ(t->step(), 0);
  EXPECT_FALSE(t->ApplyGradients({1}, {std::numeric_limits<float>::infinity(), 0}).ok());
}

TEST(EmbeddingTable, AdmissionAfterMinCount) {
  auto spec = Spec("t", 1, SparseOptimizerConfig::SGD, 1.0f);
  spec.set_admission_min_count(3);
  auto t = *EmbeddingTable::Create(spec);
  ASSERT_TRUE(t->ApplyGradients({1, 2}, {1, 1}).ok());  // seen once each: dropped
  ASSERT_TRUE(t->ApplyGradients({1, 1}, {1, 1}).ok());  // id 1 twice in one step counts once
  EXPECT_EQ(t->size(), 0);
  EXPECT_FLOAT_EQ(Lookup(*t, {1})[0], 0.0f);  // still reads its initial value
  EXPECT_EQ(t->counters().rejected, 3);
  ASSERT_TRUE(t->ApplyGradients({1}, {0.5f}).ok());  // third time: admitted and updated
  EXPECT_EQ(t->size(), 1);
  EXPECT_FLOAT_EQ(Lookup(*t, {1})[0], -0.5f);
  EXPECT_EQ(t->counters().admitted, 1);
  EXPECT_EQ(t->counters().rejected, 3);
  ASSERT_TRUE(t->ApplyGradients({1}, {0.5f}).ok());  // admitted ids update every time
  EXPECT_FLOAT_EQ(Lookup(*t, {1})[0], -1.0f);
}

TEST(EmbeddingTable, TtlEviction) {
  auto spec = Spec("t", 1, SparseOptimizerConfig::SGD, 1.0f);
  spec.set_eviction_ttl_steps(8);  // sweep every 8 / 8 = 1 step
  auto t = *EmbeddingTable::Create(spec);
  ASSERT_TRUE(t->ApplyGradients({1, 2}, {1, 1}).ok());  // step 1
  for (int s = 2; s <= 9; ++s) ASSERT_TRUE(t->ApplyGradients({2}, {1}).ok());
  // At step 9 row 1 is 8 steps old: kept (evicted only when older than ttl).
  EXPECT_EQ(t->size(), 2);
  ASSERT_TRUE(t->ApplyGradients({2}, {1}).ok());  // step 10: row 1 is 9 steps old
  EXPECT_EQ(t->size(), 1);
  EXPECT_EQ(t->counters().evicted, 1);
  EXPECT_FLOAT_EQ(Lookup(*t, {1})[0], 0.0f);  // back to its initial value
  // The freed slot is reused.
  const size_t bytes = t->MemoryBytes();
  ASSERT_TRUE(t->ApplyGradients({3}, {1}).ok());
  EXPECT_EQ(t->MemoryBytes(), bytes);
}

TEST(EmbeddingTable, CapacityEvictsLeastRecentlyUpdated) {
  auto spec = Spec("t", 1, SparseOptimizerConfig::SGD, 1.0f);
  spec.set_capacity_rows(32);  // evicts down to 32 - 2 = 30 rows when exceeded
  auto t = *EmbeddingTable::Create(spec);
  for (int64_t id = 0; id < 32; ++id) ASSERT_TRUE(t->ApplyGradients({id}, {1}).ok());
  ASSERT_TRUE(t->ApplyGradients({0}, {1}).ok());  // id 0 becomes the most recent
  EXPECT_EQ(t->size(), 32);
  ASSERT_TRUE(t->ApplyGradients({100}, {1}).ok());  // 33 rows: evict 3 oldest = ids 1, 2, 3
  EXPECT_EQ(t->size(), 30);
  EXPECT_EQ(t->counters().evicted, 3);
  EXPECT_FLOAT_EQ(Lookup(*t, {0})[0], -2.0f);
  EXPECT_FLOAT_EQ(Lookup(*t, {1})[0], 0.0f);
  EXPECT_FLOAT_EQ(Lookup(*t, {3})[0], 0.0f);
  EXPECT_FLOAT_EQ(Lookup(*t, {4})[0], -1.0f);
  EXPECT_FLOAT_EQ(Lookup(*t, {100})[0], -1.0f);
}

TEST(EmbeddingTable, ManyRowsAcrossBlocks) {
  auto t = *EmbeddingTable::Create(Spec("t", 3, SparseOptimizerConfig::SGD, 1.0f));
  const int64_t n = 3 * EmbeddingTable::kBlockRows + 5;
  std::vector<int64_t> ids(static_cast<size_t>(n));
  std::vector<float> g(static_cast<size_t>(n) * 3);
  for (int64_t i = 0; i < n; ++i) {
    ids[static_cast<size_t>(i)] = i * 1000003;
    for (int j = 0; j < 3; ++j) g[static_cast<size_t>(i * 3 + j)] = static_cast<float>(i % 97 + j);
  }
  ASSERT_TRUE(t->ApplyGradients(ids, g).ok());
  EXPECT_EQ(t->size(), n);
  const auto v = Lookup(*t, ids);
  for (size_t k = 0; k < v.size(); ++k) ASSERT_FLOAT_EQ(v[k], -g[k]);
  // Memory is accounted in blocks, not per row: 4 blocks of (4 + 3 x 4)-byte records.
  EXPECT_GE(t->MemoryBytes(), size_t{4} * EmbeddingTable::kBlockRows * 16);
}

// The record sizes docs/SCALE.md's bytes-per-row figures rest on: 4 bytes of last-update step,
// 4 more for Adam's step count, then weights and optimizer state; the id lives in the index only.
TEST(EmbeddingTable, RecordBytesAreLastUpdateStepCountWeightsAndState) {
  struct Case {
    SparseOptimizerConfig::Kind kind;
    size_t record_bytes;
  };
  for (const Case& c : {Case{SparseOptimizerConfig::SGD, 4 + 16 * 4}, Case{SparseOptimizerConfig::ROWWISE_ADAGRAD, 4 + 17 * 4},
                        Case{SparseOptimizerConfig::ADAGRAD, 4 + 32 * 4}, Case{SparseOptimizerConfig::ADAM, 8 + 48 * 4}}) {
    auto t = *EmbeddingTable::Create(Spec("t", 16, c.kind, 0.1f));
    ASSERT_TRUE(t->ApplyGradients({7}, std::vector<float>(16, 1.0f)).ok());
    const size_t block = size_t{EmbeddingTable::kBlockRows} * c.record_bytes;
    // One block plus an index of a handful of buckets (17 bytes each) and the block list.
    EXPECT_GE(t->MemoryBytes(), block) << c.kind;
    EXPECT_LE(t->MemoryBytes(), block + 256) << c.kind;
  }
}

// Adam rows of dim 1 are 5 words (last update, step count, weight, m, v): every path that reads
// or writes a record's words runs here on them (admission, update, TTL and capacity eviction,
// iteration, PutRow); the sanitizer build checks the accesses.
TEST(EmbeddingTable, OddSizedRecordsOnEveryPath) {
  auto spec = Spec("t", 1, SparseOptimizerConfig::ADAM, 1.0f);
  spec.set_eviction_ttl_steps(8);
  spec.set_capacity_rows(6);
  auto t = *EmbeddingTable::Create(spec);
  for (int64_t id = 0; id < 8; ++id) ASSERT_TRUE(t->ApplyGradients({id, id + 100}, {1, 2}).ok());
  EXPECT_LE(t->size(), 8);
  EXPECT_GT(t->counters().evicted, 0);
  std::vector<EmbeddingTable::RowView> rows;
  t->ForEachRow([&](const EmbeddingTable::RowView& r) { rows.push_back(r); });
  ASSERT_FALSE(rows.empty());
  for (const auto& r : rows) {
    EXPECT_EQ(r.aux, 1u) << r.id;  // each row was updated once
    t->PutRow(r.id + 1000, r.last_update, r.aux, absl::MakeConstSpan(r.values, 3));
  }
  EXPECT_EQ(t->size(), 2 * static_cast<int64_t>(rows.size()));
  EXPECT_EQ(Lookup(*t, {1107})[0], Lookup(*t, {107})[0]);
}

// A slot freed by eviction starts its next row afresh: Adam's step count back at zero, so the
// new row's first update is a fresh table's first update (bias correction of step 1).
TEST(EmbeddingTable, ReusedSlotsStartWithAZeroStepCount) {
  auto spec = Spec("t", 1, SparseOptimizerConfig::ADAM, 0.1f);
  spec.set_capacity_rows(2);  // more than 2 rows: the least recently updated go
  auto t = *EmbeddingTable::Create(spec);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(t->ApplyGradients({1}, {0.5f}).ok());  // row 1: step count 5
  ASSERT_TRUE(t->ApplyGradients({2}, {0.5f}).ok());
  ASSERT_TRUE(t->ApplyGradients({3}, {0.5f}).ok());  // 3 rows: row 1 (oldest) is evicted
  EXPECT_EQ(Lookup(*t, {1})[0], 0.0f);
  ASSERT_TRUE(t->ApplyGradients({4}, {0.25f}).ok());  // takes row 1's slot
  auto fresh = *EmbeddingTable::Create(spec);
  ASSERT_TRUE(fresh->ApplyGradients({4}, {0.25f}).ok());
  EXPECT_EQ(Lookup(*t, {4})[0], Lookup(*fresh, {4})[0]);
  t->ForEachRow([](const EmbeddingTable::RowView& r) {
    if (r.id == 4) {
      EXPECT_EQ(r.aux, 1u);
    }
  });
}

}  // namespace
}  // namespace t2d::embedding
