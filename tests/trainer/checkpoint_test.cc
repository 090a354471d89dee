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
    job_.add_tables()->set_name("item_id");
    job_.mutable_checkpoint()->set_keep_last(2);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A checkpoint of job_ by 2 workers, 1 shard per table, whose files hold `payload`.
  std::string Write(int64_t step, const std::string& payload) {
    EXPECT_TRUE(PrepareStaging(dir_, step).ok());
    const fs::path staging = StagingDir(dir_, step);
    fs::create_directories(staging / "sparse");
    for (const std::string& name : CheckpointFiles(job_, 2, 1)) std::ofstream(staging / name) << payload << name;
    FolderManifest m;
    m.set_num_workers(2);
    m.set_num_servers(1);
    auto path = Commit(dir_, step, m, job_);
    EXPECT_TRUE(path.ok()) << path.status();
    return path.ok() ? *path : "";
  }
  std::string Latest() {
    auto latest = FindLatestCheckpoint(dir_, job_);
    return latest.ok() ? fs::path(latest->folder).filename().string() : latest.status().ToString();
  }

  std::string dir_;
  config::JobConfig job_;
};

TEST_F(CheckpointTest, CommitVerifyAndKeepLast) {
  EXPECT_EQ(CheckpointFiles(job_, 2, 1),
            (std::vector<std::string>{"dense.t2dd", "evals.textproto", "job.textproto",
                                      "sparse/item_id.shard-00000-of-00001.t2demb", "worker-0.textproto",
                                      "worker-1.textproto"}));
  const std::string a = Write(100, "one");
  EXPECT_EQ(fs::path(a).filename(), "ckpt-000000000100");
  EXPECT_FALSE(fs::exists(StagingDir(dir_, 100)));
  auto m = VerifyCheckpoint(a, job_);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->kind(), FolderManifest::CHECKPOINT);
  EXPECT_EQ(m->step(), 100);
  EXPECT_EQ(m->num_workers(), 2);
  EXPECT_EQ(m->run_id(), RunId(job_));
  ASSERT_EQ(m->files_size(), 6);
  EXPECT_EQ(m->files(0).name(), "dense.t2dd");
  EXPECT_EQ(m->files(0).bytes(), 3 + 10);
  Write(200, "two");
  Write(300, "three");
  EXPECT_FALSE(fs::exists(a));  // keep_last = 2
  EXPECT_EQ(Latest(), "ckpt-000000000300");
}

TEST_F(CheckpointTest, DamagedNewestFallsBackToPrevious) {
  Write(1, "first");
  const std::string b = Write(2, "second");
  std::ofstream(fs::path(b) / "dense.t2dd", std::ios::trunc) << "SECONDdense.t2dd";  // same size, other bytes
  auto v = VerifyCheckpoint(b, job_);
  EXPECT_EQ(v.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(v.status().message().find("dense.t2dd: checksum differs"), std::string::npos) << v.status();
  EXPECT_EQ(Latest(), "ckpt-000000000001");

  std::ofstream(fs::path(b) / "dense.t2dd", std::ios::trunc) << "seconddense.t2dd";
  EXPECT_TRUE(VerifyCheckpoint(b, job_).ok());
  fs::resize_file(fs::path(b) / "worker-1.textproto", 1);
  EXPECT_NE(VerifyCheckpoint(b, job_).status().message().find("worker-1.textproto: size 1 differs"), std::string::npos);
  fs::remove(fs::path(b) / "MANIFEST");
  EXPECT_NE(VerifyCheckpoint(b, job_).status().message().find("MANIFEST: missing"), std::string::npos);
  // A staging folder (crash during a write) is never taken for a checkpoint.
  ASSERT_TRUE(PrepareStaging(dir_, 5).ok());
  EXPECT_EQ(Latest(), "ckpt-000000000001");
  // A checkpoint folder renamed to another step is not that step's.
  fs::rename(fs::path(dir_) / "ckpt-000000000001", fs::path(dir_) / "ckpt-000000000003");
  EXPECT_NE(Latest().find("the manifest says step 1"), std::string::npos) << Latest();
  // Checkpoints present but none verifies: DataLoss with every reason, not NotFound.
  EXPECT_EQ(FindLatestCheckpoint(dir_, job_).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(Latest().find("MANIFEST: missing"), std::string::npos) << Latest();
  fs::remove_all(fs::path(dir_) / "ckpt-000000000003");
  fs::remove_all(b);
  EXPECT_EQ(FindLatestCheckpoint(dir_, job_).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(CheckNoCheckpoints(dir_).ok());
}

TEST_F(CheckpointTest, RunIdentityLeavesOutWhatAResumeMayChange) {
  config::JobConfig same = job_;
  same.mutable_training()->set_max_steps(99);
  same.mutable_training()->set_epochs(30);
  same.mutable_training()->set_output_dir("/elsewhere");
  same.mutable_checkpoint()->set_keep_last(9);
  same.mutable_cluster()->set_num_servers(4);
  same.mutable_eval()->set_batch_size(7);
  same.mutable_model()->set_inference_samples(8);
  same.mutable_data()->set_dataset_dir("/moved");
  same.mutable_training()->set_seed(1);  // set to its default
  same.mutable_tables(0)->set_init_from("/warm/start");
  EXPECT_EQ(RunId(same), RunId(job_));
  config::JobConfig other = job_;
  other.mutable_training()->set_learning_rate(0.5f);
  EXPECT_NE(RunId(other), RunId(job_));

  Write(4, "run");
  ASSERT_TRUE(VerifyCheckpoint(fs::path(dir_) / "ckpt-000000000004", same).ok());
  auto v = VerifyCheckpoint((fs::path(dir_) / "ckpt-000000000004").string(), other);
  EXPECT_EQ(v.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(v.status().message().find("another run"), std::string::npos) << v.status();
  EXPECT_EQ(fs::path(Latest()).filename(), "ckpt-000000000004");
  auto s = CheckNoCheckpoints(dir_);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("--resume"), std::string::npos) << s;
}

}  // namespace
}  // namespace t2d::trainer
