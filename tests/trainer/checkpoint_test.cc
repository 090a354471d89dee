#include "trainer/checkpoint.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace t2d::trainer {
namespace {

namespace fs = std::filesystem;

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() / ("t2d_ckpt_" + std::to_string(::getpid()))).string();
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Write(int64_t step, const std::string& payload) {
    EXPECT_TRUE(PrepareStaging(dir_, step).ok());
    std::ofstream(fs::path(StagingDir(dir_, step)) / "dense.bin") << payload;
    fs::create_directories(fs::path(StagingDir(dir_, step)) / "shards");
    std::ofstream(fs::path(StagingDir(dir_, step)) / "shards" / "a.t2demb") << payload << payload;
    FolderManifest m;
    m.set_num_workers(2);
    auto path = Commit(dir_, step, m, 2);
    EXPECT_TRUE(path.ok()) << path.status();
    return path.ok() ? *path : "";
  }

  std::string dir_;
};

TEST_F(CheckpointTest, CommitVerifyAndKeepLast) {
  const std::string a = Write(100, "one");
  EXPECT_EQ(fs::path(a).filename(), "ckpt-000000000100");
  EXPECT_FALSE(fs::exists(StagingDir(dir_, 100)));
  auto m = VerifyFolder(a);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->step(), 100);
  EXPECT_EQ(m->num_workers(), 2);
  ASSERT_EQ(m->files_size(), 2);
  EXPECT_EQ(m->files(0).name(), "dense.bin");
  EXPECT_EQ(m->files(0).bytes(), 3);
  EXPECT_EQ(m->files(1).name(), "shards/a.t2demb");
  Write(200, "two");
  Write(300, "three");
  EXPECT_FALSE(fs::exists(a));  // keep_last = 2
  EXPECT_EQ(fs::path(*FindLatestCheckpoint(dir_)).filename(), "ckpt-000000000300");
}

TEST_F(CheckpointTest, DamagedNewestFallsBackToPrevious) {
  Write(1, "first");
  const std::string b = Write(2, "second");
  std::ofstream(fs::path(b) / "dense.bin", std::ios::trunc) << "SECOND";  // same size, other bytes
  auto v = VerifyFolder(b);
  EXPECT_EQ(v.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(v.status().message().find("dense.bin: checksum differs"), std::string::npos) << v.status();
  EXPECT_EQ(fs::path(*FindLatestCheckpoint(dir_)).filename(), "ckpt-000000000001");

  std::ofstream(fs::path(b) / "dense.bin", std::ios::trunc) << "second";
  EXPECT_TRUE(VerifyFolder(b).ok());
  fs::resize_file(fs::path(b) / "shards" / "a.t2demb", 1);
  EXPECT_NE(VerifyFolder(b).status().message().find("a.t2demb: size 1 differs"), std::string::npos);
  fs::remove(fs::path(b) / "MANIFEST");
  EXPECT_NE(VerifyFolder(b).status().message().find("MANIFEST: missing"), std::string::npos);
  // A staging folder (crash during a write) is never taken for a checkpoint.
  ASSERT_TRUE(PrepareStaging(dir_, 5).ok());
  EXPECT_EQ(fs::path(*FindLatestCheckpoint(dir_)).filename(), "ckpt-000000000001");
  fs::remove_all(fs::path(dir_) / "ckpt-000000000001");
  EXPECT_EQ(FindLatestCheckpoint(dir_).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace t2d::trainer
