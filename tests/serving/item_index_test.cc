#include "serving/item_index.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <set>
#include <thread>

#include "common/file_util.h"
#include "configs/config_loader.h"

namespace t2d::serving {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Gaussian mixture: `clusters` centres of unit variance (the same for every seed: queries come
// from the items' mixture, as training pulls user vectors towards the items they score), points
// at spread 0.4 around them.
std::vector<float> Clustered(int64_t n, int64_t dim, uint64_t seed, int clusters = 64) {
  std::mt19937_64 rng(1000 + static_cast<uint64_t>(dim));
  std::normal_distribution<float> g(0, 1);
  std::vector<float> centres(static_cast<size_t>(clusters * dim));
  for (auto& c : centres) c = g(rng);
  rng.seed(seed);
  std::uniform_int_distribution<int> pick(0, clusters - 1);
  std::vector<float> v(static_cast<size_t>(n * dim));
  for (int64_t i = 0; i < n; ++i) {
    const int c = pick(rng);
    for (int64_t j = 0; j < dim; ++j) v[i * dim + j] = centres[c * dim + j] + 0.4f * g(rng);
  }
  return v;
}

// The exact top k rows of `items` for one query, best first.
std::vector<int64_t> BruteForce(const std::vector<float>& items, int64_t dim, const float* q, int k) {
  const int64_t n = static_cast<int64_t>(items.size()) / dim;
  std::vector<float> s(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) s[i] = std::inner_product(q, q + dim, &items[i * dim], 0.0f);
  std::vector<int64_t> rows(static_cast<size_t>(n));
  std::iota(rows.begin(), rows.end(), 0);
  const int64_t kk = std::min<int64_t>(k, n);
  std::partial_sort(rows.begin(), rows.begin() + kk, rows.end(), [&](int64_t a, int64_t b) { return s[a] > s[b]; });
  rows.resize(static_cast<size_t>(kk));
  return rows;
}

double Recall(const ItemIndex& index, const std::vector<float>& items, const std::vector<float>& queries, int k) {
  const int64_t dim = index.dim(), nq = static_cast<int64_t>(queries.size()) / dim;
  auto hits = index.Search(queries, nq, k);
  EXPECT_TRUE(hits.ok()) << hits.status();
  if (!hits.ok()) return 0;
  int64_t found = 0;
  for (int64_t q = 0; q < nq; ++q) {
    const auto truth = BruteForce(items, dim, &queries[q * dim], k);
    const std::set<int64_t> want(truth.begin(), truth.end());
    for (int64_t r : (*hits)[q].rows) found += want.count(r);
  }
  return static_cast<double>(found) / static_cast<double>(nq * k);
}

config::ServingConfig Forced(config::ServingConfig::IndexKind kind) {
  config::ServingConfig c;
  c.set_exact_max_items(0);
  c.set_index_kind(kind);
  c.set_index_threads(2);
  return c;
}

std::string TempPath(const std::string& name) {
  return (std::filesystem::path(::testing::TempDir()) / name).string();
}

void ExpectSameHits(const std::vector<Hits>& a, const std::vector<Hits>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t q = 0; q < a.size(); ++q) {
    EXPECT_EQ(a[q].rows, b[q].rows) << "query " << q;
    EXPECT_EQ(a[q].scores, b[q].scores) << "query " << q;
  }
}

// Hits of a and b without `row` agree as far as the shorter one goes: replacing `row` moved
// only that row (it may have entered or left a top k, shifting the rest by one).
void ExpectSameExcept(const std::vector<Hits>& a, const std::vector<Hits>& b, int64_t row) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t q = 0; q < a.size(); ++q) {
    std::vector<std::pair<int64_t, float>> x, y;
    for (size_t i = 0; i < a[q].rows.size(); ++i) if (a[q].rows[i] != row) x.emplace_back(a[q].rows[i], a[q].scores[i]);
    for (size_t i = 0; i < b[q].rows.size(); ++i) if (b[q].rows[i] != row) y.emplace_back(b[q].rows[i], b[q].scores[i]);
    const size_t m = std::min(x.size(), y.size());
    EXPECT_GE(m + 1, std::max(x.size(), y.size())) << "query " << q;
    x.resize(m);
    y.resize(m);
    EXPECT_EQ(x, y) << "query " << q;
  }
}

// Four items in the plane; the query (1, 0.5) scores them 1, 0.5, 2, 1.5.
const std::vector<float> kItems = {1, 0, 0, 1, 2, 0, 1, 1};
const std::vector<float> kQuery = {1, 0.5};

TEST(ItemIndex, FlatTopKOfAHandExample) {
  auto index = ItemIndex::Build(kItems, 4, 2, config::ServingConfig());
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ((*index)->kind(), ItemIndex::Kind::kFlat);
  EXPECT_STREQ((*index)->name(), "flat");
  EXPECT_EQ((*index)->size(), 4);
  EXPECT_EQ((*index)->dim(), 2);
  auto hits = (*index)->Search(kQuery, 1, 3);
  ASSERT_TRUE(hits.ok()) << hits.status();
  ASSERT_EQ(hits->size(), 1u);
  EXPECT_THAT((*hits)[0].rows, ElementsAre(2, 3, 0));
  EXPECT_THAT((*hits)[0].scores, ElementsAre(2.0f, 1.5f, 1.0f));
}

TEST(ItemIndex, FlatEqualsBruteForce) {
  const auto items = Clustered(3000, 8, 1), queries = Clustered(20, 8, 2);
  auto index = ItemIndex::Build(items, 3000, 8, config::ServingConfig());
  ASSERT_TRUE(index.ok()) << index.status();
  auto hits = (*index)->Search(queries, 20, 25);
  ASSERT_TRUE(hits.ok()) << hits.status();
  for (int q = 0; q < 20; ++q) EXPECT_EQ((*hits)[q].rows, BruteForce(items, 8, &queries[q * 8], 25)) << q;
}

TEST(ItemIndex, ApproximateIndexesFindMostOfTheTopK) {
  const auto items = Clustered(20000, 16, 3), queries = Clustered(200, 16, 4);
  for (auto kind : {config::ServingConfig::IVF, config::ServingConfig::HNSW}) {
    auto index = ItemIndex::Build(items, 20000, 16, Forced(kind));
    ASSERT_TRUE(index.ok()) << index.status();
    EXPECT_EQ((*index)->kind(), kind == config::ServingConfig::IVF ? ItemIndex::Kind::kIvf : ItemIndex::Kind::kHnsw);
    const double recall = Recall(**index, items, queries, 10);
    EXPECT_GT(recall, 0.95) << (*index)->name();
    EXPECT_LT(Recall(**index, items, queries, 100), 1.01);  // at most k per query
  }
}

TEST(ItemIndex, IvfTrainingIsDeterministic) {
  const auto items = Clustered(5000, 8, 5);
  auto c1 = Forced(config::ServingConfig::IVF), c2 = c1;
  c1.set_index_threads(1);
  auto a = ItemIndex::Build(items, 5000, 8, c1), b = ItemIndex::Build(items, 5000, 8, c2);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE((*a)->Write(TempPath("det_a.faiss")).ok());
  ASSERT_TRUE((*b)->Write(TempPath("det_b.faiss")).ok());
  auto x = ReadFileToString(TempPath("det_a.faiss")), y = ReadFileToString(TempPath("det_b.faiss"));
  ASSERT_TRUE(x.ok() && y.ok());
  EXPECT_GT(x->size(), 5000u * 8 * 4);
  EXPECT_TRUE(*x == *y) << "two builds of the same input differ";
}

TEST(ItemIndex, WriteReadRoundTripAnswersIdentically) {
  const auto items = Clustered(4000, 8, 6), queries = Clustered(50, 8, 7);
  config::ServingConfig flat;
  for (const auto& c : {flat, Forced(config::ServingConfig::IVF), Forced(config::ServingConfig::HNSW)}) {
    auto index = ItemIndex::Build(items, 4000, 8, c);
    ASSERT_TRUE(index.ok()) << index.status();
    const std::string path = TempPath(std::string("round_trip_") + (*index)->name() + ".faiss");
    ASSERT_TRUE((*index)->Write(path).ok());
    auto read = ItemIndex::Read(path, 4000, 8, c);
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ((*read)->kind(), (*index)->kind());
    auto before = (*index)->Search(queries, 50, 20), after = (*read)->Search(queries, 50, 20);
    ASSERT_TRUE(before.ok() && after.ok());
    ExpectSameHits(*before, *after);
  }
}

TEST(ItemIndex, DamagedFilesAreDataLossNamingThePath) {
  const auto items = Clustered(2000, 8, 8);
  auto index = ItemIndex::Build(items, 2000, 8, Forced(config::ServingConfig::IVF));
  ASSERT_TRUE(index.ok()) << index.status();
  const std::string path = TempPath("damaged.faiss");
  ASSERT_TRUE((*index)->Write(path).ok());
  auto bytes = ReadFileToString(path);
  ASSERT_TRUE(bytes.ok());
  const config::ServingConfig c;

  const std::string truncated = TempPath("truncated.faiss");
  ASSERT_TRUE(WriteFileAtomic(truncated, bytes->substr(0, bytes->size() / 2)).ok());
  auto r = ItemIndex::Read(truncated, 2000, 8, c);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr(truncated));

  const std::string garbage = TempPath("garbage.faiss");
  ASSERT_TRUE(WriteFileAtomic(garbage, std::string(5000, 'x')).ok());
  r = ItemIndex::Read(garbage, 2000, 8, c);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr(garbage));

  r = ItemIndex::Read(TempPath("absent.faiss"), 2000, 8, c);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound) << r.status();

  r = ItemIndex::Read(path, 2001, 8, c);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("holds 2000 vectors of dim 8, expected 2001 of dim 8"));
  r = ItemIndex::Read(path, 2000, 16, c);
  EXPECT_THAT(r.status().message(), HasSubstr("expected 2000 of dim 16"));
  EXPECT_TRUE(ItemIndex::Read(path, 2000, 8, c).ok());
}

TEST(ItemIndex, FlatRowReplacementChangesOnlyThatRow) {
  auto index = ItemIndex::Build(kItems, 4, 2, config::ServingConfig());
  ASSERT_TRUE(index.ok());
  const std::vector<int64_t> rows = {0};
  auto replaced = (*index)->WithRowsReplaced(rows, std::vector<float>{10, 0});
  ASSERT_TRUE(replaced.ok()) << replaced.status();
  auto hits = (*replaced)->Search(kQuery, 1, 4);
  ASSERT_TRUE(hits.ok());
  EXPECT_THAT((*hits)[0].rows, ElementsAre(0, 2, 3, 1));
  EXPECT_THAT((*hits)[0].scores, ElementsAre(10.0f, 2.0f, 1.5f, 0.5f));
  hits = (*index)->Search(kQuery, 1, 4);  // the original is unchanged
  ASSERT_TRUE(hits.ok());
  EXPECT_THAT((*hits)[0].rows, ElementsAre(2, 3, 0, 1));
}

TEST(ItemIndex, IvfRowReplacementChangesOnlyThoseRows) {
  const auto items = Clustered(5000, 8, 9), queries = Clustered(100, 8, 10);
  auto index = ItemIndex::Build(items, 5000, 8, Forced(config::ServingConfig::IVF));
  ASSERT_TRUE(index.ok()) << index.status();
  auto before = (*index)->Search(queries, 100, 20);
  ASSERT_TRUE(before.ok());
  // Row 123 becomes a large multiple of query 0: the best item for it, wherever its cell.
  const int64_t row = 123;
  std::vector<float> v(queries.begin(), queries.begin() + 8);
  for (auto& x : v) x *= 50;
  const std::vector<int64_t> rows = {row};
  auto replaced = (*index)->WithRowsReplaced(rows, v);
  ASSERT_TRUE(replaced.ok()) << replaced.status();
  EXPECT_EQ((*replaced)->kind(), ItemIndex::Kind::kIvf);
  EXPECT_EQ((*replaced)->size(), 5000);
  auto after = (*replaced)->Search(queries, 100, 20);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ((*after)[0].rows[0], row);
  EXPECT_NE((*before)[0].rows[0], row);
  ExpectSameExcept(*before, *after, row);
  auto again = (*index)->Search(queries, 100, 20);  // the original is unchanged
  ASSERT_TRUE(again.ok());
  ExpectSameHits(*before, *again);
  // The replaced index survives a round trip (its row map is written with it).
  ASSERT_TRUE((*replaced)->Write(TempPath("replaced.faiss")).ok());
  auto read = ItemIndex::Read(TempPath("replaced.faiss"), 5000, 8, config::ServingConfig());
  ASSERT_TRUE(read.ok()) << read.status();
  auto reread = (*read)->Search(queries, 100, 20);
  ASSERT_TRUE(reread.ok());
  ExpectSameHits(*after, *reread);
}

TEST(ItemIndex, HnswRowReplacementIsUnimplemented) {
  const auto items = Clustered(500, 8, 11);
  auto index = ItemIndex::Build(items, 500, 8, Forced(config::ServingConfig::HNSW));
  ASSERT_TRUE(index.ok());
  const std::vector<int64_t> rows = {1};
  auto r = (*index)->WithRowsReplaced(rows, std::vector<float>(8, 1.0f));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnimplemented) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("HNSW"));
}

TEST(ItemIndex, KBeyondTheCatalogueAndEmptyQueries) {
  auto flat = ItemIndex::Build(kItems, 4, 2, config::ServingConfig());
  ASSERT_TRUE(flat.ok());
  auto hits = (*flat)->Search(kQuery, 1, 100);
  ASSERT_TRUE(hits.ok());
  EXPECT_THAT((*hits)[0].rows, ElementsAre(2, 3, 0, 1));
  hits = (*flat)->Search({}, 0, 5);
  ASSERT_TRUE(hits.ok()) << hits.status();
  EXPECT_TRUE(hits->empty());

  const auto items = Clustered(300, 8, 12), queries = Clustered(10, 8, 13);
  for (auto kind : {config::ServingConfig::IVF, config::ServingConfig::HNSW}) {
    auto index = ItemIndex::Build(items, 300, 8, Forced(kind));
    ASSERT_TRUE(index.ok()) << index.status();
    hits = (*index)->Search(queries, 10, 1000);
    ASSERT_TRUE(hits.ok()) << hits.status();
    for (const auto& h : *hits) {
      EXPECT_LE(h.rows.size(), 300u);
      EXPECT_GT(h.rows.size(), 0u);
      EXPECT_EQ(std::set<int64_t>(h.rows.begin(), h.rows.end()).size(), h.rows.size());
      for (int64_t r : h.rows) EXPECT_TRUE(r >= 0 && r < 300) << r;
      EXPECT_TRUE(std::is_sorted(h.scores.rbegin(), h.scores.rend()));
    }
  }
}

TEST(ItemIndex, BadArgumentsAreInvalidArgument) {
  auto flat = ItemIndex::Build(kItems, 4, 2, config::ServingConfig());
  ASSERT_TRUE(flat.ok());
  EXPECT_EQ((*flat)->Search(kQuery, 1, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*flat)->Search(kQuery, 2, 1).status().code(), absl::StatusCode::kInvalidArgument);
  const std::vector<int64_t> bad_row = {4};
  EXPECT_EQ((*flat)->WithRowsReplaced(bad_row, std::vector<float>{1, 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ItemIndex::Build(kItems, 3, 2, config::ServingConfig()).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<float> nan_items = kItems;
  nan_items[5] = std::nanf("");
  auto r = ItemIndex::Build(nan_items, 4, 2, config::ServingConfig());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("row 2"));
}

TEST(ItemIndex, ConcurrentSearchesAgreeWithOneAtATime) {
  const auto items = Clustered(5000, 8, 14), queries = Clustered(64, 8, 15);
  for (auto kind : {config::ServingConfig::IVF, config::ServingConfig::HNSW}) {
    auto index = ItemIndex::Build(items, 5000, 8, Forced(kind));
    ASSERT_TRUE(index.ok());
    auto want = (*index)->Search(queries, 64, 10);
    ASSERT_TRUE(want.ok());
    std::vector<std::vector<Hits>> got(4);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (int q = 0; q < 64; ++q) {
          auto h = (*index)->Search(absl::MakeConstSpan(&queries[q * 8], 8), 1, 10);
          if (h.ok()) got[t].push_back((*h)[0]);
        }
      });
    }
    for (auto& th : threads) th.join();
    for (const auto& g : got) ExpectSameHits(*want, g);
  }
}

// Needs two tables for the job config to load at all.
const char kJob[] = "tables { name: \"item_id\" dim: 2 }\ntables { name: \"item_tag\" dim: 2 }\n";

TEST(ServingConfig, DefaultsAndRanges) {
  auto c = config::ParseJobConfig(kJob, "job.textproto");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->serving().index_kind(), config::ServingConfig::IVF);
  EXPECT_EQ(c->serving().exact_max_items(), 100000);
  EXPECT_EQ(c->serving().ivf_lists(), 0);
  c = config::ParseJobConfig(std::string(kJob) + "serving {\n  index_kind: HNSW\n  hnsw_m: 16\n}\n", "job.textproto");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->serving().index_kind(), config::ServingConfig::HNSW);
  EXPECT_EQ(c->serving().hnsw_m(), 16);

  for (const auto& [text, want] : std::vector<std::pair<std::string, std::string>>{
           {"serving {\n  ivf_nprobe: 0\n}\n", "job.textproto:4: serving.ivf_nprobe: value 0 is out of range [1, "},
           {"serving { hnsw_m: 1 }\n", "serving.hnsw_m: value 1 is out of range [2, 512]"},
           {"serving { exact_max_items: -1 }\n", "serving.exact_max_items: value -1 is out of range [0, inf)"},
           {"serving { index_threads: -2 }\n", "serving.index_threads: value -2 is out of range [0, 1024]"},
           {"serving { ivf_lists: -1 }\n", "serving.ivf_lists: value -1"},
           {"serving { hnsw_ef_search: 0 }\n", "serving.hnsw_ef_search: value 0"},
           {"serving { index_kind: PQ }\n", "PQ"},
           {"serving { nprobe: 3 }\n", "nprobe"},
       }) {
    auto bad = config::ParseJobConfig(std::string(kJob) + text, "job.textproto");
    ASSERT_FALSE(bad.ok()) << text;
    EXPECT_THAT(bad.status().message(), HasSubstr(want)) << text;
  }
  auto bad = config::ParseJobConfig(kJob, "job.textproto", {"serving.ivf_nprobe=0"});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("--set serving.ivf_nprobe=0: serving.ivf_nprobe: value 0"));
}

}  // namespace
}  // namespace t2d::serving
