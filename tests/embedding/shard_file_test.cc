#include "embedding/shard_file.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <map>

#include "common/file_util.h"
#include "embedding/sharding.h"
#include "tests/embedding/test_tables.h"

namespace t2d::embedding {
namespace {

namespace fs = std::filesystem;
using config::InitializerConfig;
using config::SparseOptimizerConfig;

class ShardFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("t2d_shard_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    spec_ = testing::Spec("item", 3, SparseOptimizerConfig::ADAM, 0.1f, InitializerConfig::NORMAL);
    spec_.set_admission_min_count(2);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Shard `s` of `n` of a table fed a fixed history of gradients.
  std::unique_ptr<EmbeddingTable> Fill(int s, int n) {
    auto t = *EmbeddingTable::Create(spec_);
    for (int step = 0; step < 4; ++step) {
      std::vector<int64_t> ids;
      std::vector<float> g;
      for (int64_t id = -20; id < 60; ++id) {
        if (ShardOf(id, n) != s) continue;
        if (id > 50 && step > 0) continue;  // ids 51..59 are seen once: pending admission
        ids.push_back(id);
        for (int j = 0; j < 3; ++j) g.push_back(0.01f * static_cast<float>(id + j + step));
      }
      EXPECT_TRUE(t->ApplyGradients(ids, g).ok());
    }
    return t;
  }

  std::vector<std::string> Save(int n) {
    std::vector<std::string> paths;
    for (int s = 0; s < n; ++s) {
      auto t = Fill(s, n);
      paths.push_back((dir_ / ShardFileName("item", s, n)).string());
      EXPECT_TRUE(WriteShardFile(paths.back(), *t, s, n).ok());
    }
    return paths;
  }

  static std::map<int64_t, std::vector<float>> Rows(const EmbeddingTable& t) {
    std::map<int64_t, std::vector<float>> rows;
    t.ForEachRow([&](const EmbeddingTable::RowView& r) {
      std::vector<float> v(r.values, r.values + t.dim() + t.state_floats());
      v.push_back(static_cast<float>(r.aux));
      v.push_back(static_cast<float>(r.last_update));
      rows[r.id] = v;
    });
    return rows;
  }
  static std::map<int64_t, uint32_t> Pending(const EmbeddingTable& t) {
    std::map<int64_t, uint32_t> p;
    t.ForEachPending([&](int64_t id, uint32_t c) { p[id] = c; });
    return p;
  }

  fs::path dir_;
  config::TableConfig spec_;
};

TEST_F(ShardFileTest, RoundTrip) {
  auto t = Fill(0, 1);
  const std::string path = (dir_ / ShardFileName("item", 0, 1)).string();
  EXPECT_EQ(fs::path(path).filename(), "item.shard-00000-of-00001.t2demb");
  ASSERT_TRUE(WriteShardFile(path, *t, 0, 1).ok());
  auto back = *EmbeddingTable::Create(spec_);
  ASSERT_TRUE(LoadShardFiles({path}, 0, 1, back.get()).ok());
  EXPECT_EQ(Rows(*back), Rows(*t));
  EXPECT_EQ(Pending(*back), Pending(*t));
  EXPECT_EQ(Pending(*t).size(), 9u);
  EXPECT_EQ(back->step(), 4);
  EXPECT_EQ(back->counters().admitted, t->counters().admitted);
  EXPECT_EQ(back->counters().rejected, t->counters().rejected);
  auto header = ReadShardHeader(path);
  ASSERT_TRUE(header.ok());
  EXPECT_EQ(header->num_rows(), t->size());
  EXPECT_EQ(header->table().name(), "item");
}

TEST_F(ShardFileTest, RepartitionTwoShardsIntoOneAndThree) {
  const auto paths = Save(2);
  std::map<int64_t, std::vector<float>> all;
  std::map<int64_t, uint32_t> pending;
  for (int s = 0; s < 2; ++s) {
    auto part = *EmbeddingTable::Create(spec_);
    ASSERT_TRUE(LoadShardFiles(paths, s, 2, part.get()).ok());
    for (auto& [id, v] : Rows(*part)) all[id] = v;
    for (auto& [id, c] : Pending(*part)) pending[id] = c;
  }
  for (int n : {1, 3}) {
    std::map<int64_t, std::vector<float>> merged;
    std::map<int64_t, uint32_t> merged_pending;
    for (int s = 0; s < n; ++s) {
      auto part = *EmbeddingTable::Create(spec_);
      ASSERT_TRUE(LoadShardFiles(paths, s, n, part.get()).ok());
      for (auto& [id, v] : Rows(*part)) {
        EXPECT_EQ(ShardOf(id, n), s);
        EXPECT_TRUE(merged.emplace(id, v).second) << "row " << id << " loaded twice";
      }
      for (auto& [id, c] : Pending(*part)) merged_pending[id] = c;
    }
    EXPECT_EQ(merged, all) << "n=" << n;
    EXPECT_EQ(merged_pending, pending) << "n=" << n;
  }
  EXPECT_EQ(all.size(), 71u);  // ids -20..50 were seen 4 times; 51..59 once
}

TEST_F(ShardFileTest, EveryTruncationIsDetected) {
  const auto paths = Save(1);
  const std::string bytes = *ReadFileToString(paths[0]);
  const std::string cut = (dir_ / ShardFileName("item", 0, 1)).string();
  // Every proper prefix of the file must be refused with DataLoss naming the file.
  for (size_t len = 0; len < bytes.size(); len += (len < 200 ? 1 : 97)) {
    ASSERT_TRUE(WriteFileAtomic(cut, bytes.substr(0, len)).ok());
    auto t = *EmbeddingTable::Create(spec_);
    auto s = LoadShardFiles({cut}, 0, 1, t.get());
    ASSERT_FALSE(s.ok()) << "prefix of " << len << " bytes accepted";
    EXPECT_NE(s.message().find(cut), std::string::npos) << s;
  }
}

TEST_F(ShardFileTest, CorruptionCases) {
  const auto paths = Save(1);
  const std::string good = *ReadFileToString(paths[0]);
  auto load = [&](const std::string& contents) {
    EXPECT_TRUE(WriteFileAtomic(paths[0], contents).ok());
    auto t = *EmbeddingTable::Create(spec_);
    return LoadShardFiles(paths, 0, 1, t.get());
  };
  auto expect = [&](const absl::Status& s, absl::StatusCode code, const std::string& text) {
    EXPECT_EQ(s.code(), code) << s;
    EXPECT_NE(s.message().find(text), std::string::npos) << s;
    EXPECT_NE(s.message().find(paths[0]), std::string::npos) << s;
  };
  std::string bad = good;
  bad[0] = 'X';
  expect(load(bad), absl::StatusCode::kDataLoss, "bad magic");
  bad = good;
  bad[8] = 9;  // version
  expect(load(bad), absl::StatusCode::kFailedPrecondition, "unsupported format version 9");
  bad = good;
  bad[20] ^= 0x40;  // inside the header
  expect(load(bad), absl::StatusCode::kDataLoss, "header checksum mismatch");
  bad = good;
  bad[good.size() - 100] ^= 0x01;  // inside the last rows/pending payload
  expect(load(bad), absl::StatusCode::kDataLoss, "checksum mismatch in chunk");
  expect(load(good + "junk"), absl::StatusCode::kDataLoss, "after the end chunk");
  EXPECT_TRUE(load(good).ok());
}

TEST_F(ShardFileTest, MismatchedSpecOrIncompleteSetIsRefused) {
  const auto paths = Save(3);
  auto t = *EmbeddingTable::Create(spec_);
  auto s = LoadShardFiles({paths[0], paths[2]}, 0, 1, t.get());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("item.shard-00001-of-00003.t2demb is missing"), std::string::npos) << s;
  s = LoadShardFiles({paths[0], paths[1], paths[2], paths[1]}, 0, 1, t.get());
  EXPECT_NE(s.message().find("given twice"), std::string::npos) << s;
  const auto other = Save(1);
  s = LoadShardFiles({paths[0], paths[1], paths[2], other[0]}, 0, 1, t.get());
  EXPECT_NE(s.message().find("one of 1 shards"), std::string::npos) << s;

  auto wrong = spec_;
  wrong.set_dim(4);
  auto t4 = *EmbeddingTable::Create(wrong);
  s = LoadShardFiles(paths, 0, 1, t4.get());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("dim 3"), std::string::npos) << s;
  wrong = spec_;
  wrong.mutable_optimizer()->set_kind(SparseOptimizerConfig::SGD);
  auto tsgd = *EmbeddingTable::Create(wrong);
  EXPECT_EQ(LoadShardFiles(paths, 0, 1, tsgd.get()).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(LoadShardFiles({(dir_ / "nope").string()}, 0, 1, t.get()).code(), absl::StatusCode::kNotFound);
}

// Found by tests/fuzz/shard_file_fuzz: a header claiming about 2^31 shards made the set check
// allocate a slot per claimed shard (8 GiB) before finding the set incomplete.
TEST_F(ShardFileTest, HugeShardCountInHeaderIsRefusedWithoutAllocating) {
  const int huge = std::numeric_limits<int32_t>::max();
  const std::string path = (dir_ / ShardFileName("item", 0, huge)).string();
  ASSERT_TRUE(WriteShardFile(path, *EmbeddingTable::Create(spec_).value(), 0, huge).ok());
  auto t = *EmbeddingTable::Create(spec_);
  const absl::Status s = LoadShardFiles({path}, 0, 1, t.get());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("item.shard-00001-of-2147483647.t2demb is missing"), std::string::npos) << s;
}

TEST_F(ShardFileTest, FindShardFiles) {
  Save(2);
  auto files = FindShardFiles(dir_.string(), "item");
  ASSERT_TRUE(files.ok());
  ASSERT_EQ(files->size(), 2u);
  EXPECT_NE((*files)[0].find("00000-of-00002"), std::string::npos);
  EXPECT_EQ(FindShardFiles(dir_.string(), "user").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace t2d::embedding
