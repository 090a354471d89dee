#include "embedding/local_embedding_store.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "tests/embedding/test_tables.h"
#include "tests/testutil/embedding_store_cases.h"

namespace t2d::embedding {
namespace {

namespace fs = std::filesystem;
using config::SparseOptimizerConfig;

std::unique_ptr<LocalEmbeddingStore> MakeStore() {
  return *LocalEmbeddingStore::Create({testing::Spec("a", 2, SparseOptimizerConfig::SGD, 1.0f),
                                       testing::Spec("b", 3, SparseOptimizerConfig::ADAGRAD, 0.1f)});
}

TEST(LocalEmbeddingStore, LookupApplyAndStats) {
  auto store = MakeStore();
  EXPECT_EQ(store->num_tables(), 2);
  EXPECT_EQ(store->dim(1), 3);
  ASSERT_TRUE(store->ApplyGradients(0, {1, 2, 1}, {1, 1, 2, 2, 1, 1}).ok());
  std::vector<float> out(4);
  ASSERT_TRUE(store->Lookup(0, {1, 2}, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, (std::vector<float>{-2, -2, -2, -2}));
  auto stats = store->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ((*stats)[0].name, "a");
  EXPECT_EQ((*stats)[0].rows, 2);
  EXPECT_EQ((*stats)[0].step, 1);
  EXPECT_EQ((*stats)[1].rows, 0);
  EXPECT_EQ(store->Lookup(2, {1}, absl::MakeSpan(out)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->ApplyGradients(-1, {1}, {1, 1}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(LocalEmbeddingStore::Create({}, 2, 2).ok());
}

TEST(LocalEmbeddingStore, SaveLoadAndFailedLoadKeepsContents) {
  const fs::path dir = fs::temp_directory_path() / ("t2d_store_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  auto store = MakeStore();
  ASSERT_TRUE(store->ApplyGradients(0, {1}, {1, 1}).ok());
  ASSERT_TRUE(store->ApplyGradients(1, {7}, {1, 1, 1}).ok());
  ASSERT_TRUE(store->Save(dir.string()).ok());
  EXPECT_TRUE(fs::exists(dir / "a.shard-00000-of-00001.t2demb"));

  auto fresh = MakeStore();
  ASSERT_TRUE(fresh->Load(dir.string()).ok());
  std::vector<float> out(3);
  ASSERT_TRUE(fresh->Lookup(1, {7}, absl::MakeSpan(out)).ok());
  EXPECT_NEAR(out[0], -0.1, 1e-6);

  // One table alone: table "a" keeps what it had.
  auto partial = MakeStore();
  ASSERT_TRUE(partial->ApplyGradients(0, {1}, {3, 3}).ok());
  ASSERT_TRUE(partial->LoadTable(1, dir.string()).ok());
  std::vector<float> a(2);
  ASSERT_TRUE(partial->Lookup(0, {1}, absl::MakeSpan(a)).ok());
  EXPECT_EQ(a, (std::vector<float>{-3, -3}));
  ASSERT_TRUE(partial->Lookup(1, {7}, absl::MakeSpan(out)).ok());
  EXPECT_NEAR(out[0], -0.1, 1e-6);
  EXPECT_TRUE(absl::IsInvalidArgument(partial->LoadTable(2, dir.string())));
  fs::create_directories(dir / "empty");
  auto none = partial->LoadTable(1, (dir / "empty").string());
  EXPECT_FALSE(none.ok());
  EXPECT_NE(none.message().find("\"b\""), std::string::npos) << none;

  // A damaged file: the load fails naming it, and the store keeps what it had.
  fs::resize_file(dir / "b.shard-00000-of-00001.t2demb", 30);
  auto s = fresh->Load(dir.string());
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("b.shard-00000-of-00001.t2demb"), std::string::npos) << s;
  ASSERT_TRUE(fresh->Lookup(1, {7}, absl::MakeSpan(out)).ok());
  EXPECT_NEAR(out[0], -0.1, 1e-6);
  fs::remove_all(dir);
}

TEST(LocalEmbeddingStore, ConcurrentReadersAndWriters) {
  auto store = MakeStore();
  std::vector<std::thread> threads;
  for (int w = 0; w < 4; ++w) {
    threads.emplace_back([&, w] {
      std::vector<float> out(2 * 64);
      std::vector<int64_t> ids(64);
      for (int i = 0; i < 64; ++i) ids[static_cast<size_t>(i)] = i;
      std::vector<float> g(2 * 64, 1.0f);
      for (int it = 0; it < 200; ++it) {
        if (w % 2 == 0) {
          ASSERT_TRUE(store->ApplyGradients(0, ids, g).ok());
        } else if (w == 1) {
          ASSERT_TRUE(store->Lookup(0, ids, absl::MakeSpan(out)).ok());
        } else {
          auto ticket = store->Pull(0, ids);
          ASSERT_TRUE(ticket.ok());
          ASSERT_TRUE(store->Wait(*ticket, absl::MakeSpan(out)).ok());
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  std::vector<float> out(2);
  ASSERT_TRUE(store->Lookup(0, {5}, absl::MakeSpan(out)).ok());
  EXPECT_FLOAT_EQ(out[0], -400.0f);  // 2 writers x 200 SGD steps of lr 1, grad 1
}

// The EmbeddingStore conformance cases (shared with RemoteEmbeddingStore in ps_test).
class LocalStoreConformance : public ::testing::TestWithParam<t2d::testutil::NamedStoreCase> {};

TEST_P(LocalStoreConformance, Case) {
  auto store = LocalEmbeddingStore::Create(t2d::testutil::Tables());
  ASSERT_TRUE(store.ok()) << store.status();
  GetParam().run(**store);
}

INSTANTIATE_TEST_SUITE_P(All, LocalStoreConformance, ::testing::ValuesIn(t2d::testutil::EmbeddingStoreCases()),
                         [](const auto& param_info) { return param_info.param.name; });

}  // namespace
}  // namespace t2d::embedding
