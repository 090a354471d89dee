#pragma once
// A tiny synthetic job run in process (LocalEmbeddingStore, InProcGroup of one worker), shared by
// the checkpoint-integrity tests and the corruption sweep. Each test gets its own temporary
// folder; the data set is prepared into <dir>/data.

#include <google/protobuf/text_format.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/inproc_communicator.h"
#include "common/checksum.h"
#include "common/manifest.pb.h"
#include "configs/config_loader.h"
#include "configs/job_options.h"
#include "data/prepare.h"
#include "embedding/local_embedding_store.h"
#include "trainer/trainer.h"

namespace t2d::trainer::test_util {

class InProcJobTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = (std::filesystem::path(::testing::TempDir()) /
            (std::string("t2d_job_") + info->name() + "_" + std::to_string(::getpid()))).string();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // `extra`: more config text (for example another table), merged before the overrides.
  config::JobConfig Job(const std::vector<std::string>& overrides = {}, const std::string& extra = "") {
    const std::string text = absl::StrCat(R"(
      cluster { num_servers: 1 num_workers: 1 timeout_s: 30 }
      tables { name: "item_id" dim: 4 optimizer { kind: ADAGRAD learning_rate: 0.05 } }
      tables { name: "item_tag" dim: 4 optimizer { kind: ADAGRAD learning_rate: 0.05 } }
      data { source: SYNTHETIC dataset_dir: ")", dir_, R"(/data" max_seq_len: 12 session_len: 4 split: LAST_ITEM
             num_shards: 2 generator { num_users: 120 num_items: 60 mean_seq_len: 15 } }
      model { diffusion_steps: 5 }
      training { batch_size: 32 epochs: 2 log_every_steps: 100 replica_check_steps: 2 }
      eval { k: [5, 10] main_k: 10 batch_size: 64 }
    )", extra);
    auto job = config::ParseJobConfig(text, "test.textproto", overrides);
    EXPECT_TRUE(job.ok()) << job.status();
    return *job;
  }
  void PrepareData(const config::JobConfig& job) {
    auto s = data::Prepare(job.data(), false);
    ASSERT_TRUE(s.ok()) << s.status();
  }
  // A trainer over a fresh in-process store; the store and group live in the fixture.
  absl::StatusOr<std::unique_ptr<Trainer>> NewTrainer(const config::JobConfig& job, bool resume) {
    auto store = embedding::LocalEmbeddingStore::Create(config::TablesOf(job));
    if (!store.ok()) return store.status();
    stores_.push_back(*std::move(store));
    groups_.push_back(std::make_unique<comm::InProcGroup>(1));
    members_.push_back(groups_.back()->Member(0));
    TrainerContext ctx;
    ctx.config = job;
    ctx.store = stores_.back().get();
    ctx.workers = members_.back().get();
    ctx.resume = resume;
    return Trainer::Create(ctx);
  }
  absl::StatusOr<TrainResult> Run(const config::JobConfig& job, bool resume) {
    auto t = NewTrainer(job, resume);
    if (!t.ok()) return t.status();
    return (*t)->Train();
  }
  // The step of the checkpoint that LoadLatestModel loads, or its error.
  absl::StatusOr<int64_t> LoadedStep(const config::JobConfig& job) {
    auto t = NewTrainer(job, false);
    if (!t.ok()) return t.status();
    if (auto s = (*t)->LoadLatestModel(); !s.ok()) return s;
    return (*t)->step();
  }

  static std::string ReadAll(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  static void WriteAll(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  }

  // The store of the newest trainer NewTrainer made.
  embedding::LocalEmbeddingStore& last_store() { return *stores_.back(); }

  std::string dir_;

 private:
  std::vector<std::unique_ptr<embedding::LocalEmbeddingStore>> stores_;
  std::vector<std::unique_ptr<comm::InProcGroup>> groups_;
  std::vector<std::unique_ptr<comm::Communicator>> members_;
};

// The MANIFEST of `folder` as it is (parsed without any check), and writing one back the way
// SealFolder does (with its closing SHA-256 line) but without looking at the files: what a tool
// that edits manifests would do.
inline FolderManifest ReadManifest(const std::string& folder) {
  std::ifstream in(folder + "/MANIFEST", std::ios::binary);
  FolderManifest m;
  google::protobuf::TextFormat::ParseFromString(std::string(std::istreambuf_iterator<char>(in), {}), &m);
  return m;
}
inline void WriteManifest(const std::string& folder, const FolderManifest& m) {
  std::string text;
  google::protobuf::TextFormat::PrintToString(m, &text);
  std::ofstream(folder + "/MANIFEST", std::ios::binary | std::ios::trunc)
      << text << "# sha256: " << Sha256Hex(text.data(), text.size()) << "\n";
}

}  // namespace t2d::trainer::test_util
