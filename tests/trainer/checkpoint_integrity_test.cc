// Checkpoints that cannot lie (issue 12), through the trainer's own entry points on a tiny
// in-process job: a file swapped in from another checkpoint, a manifest that lists fewer files,
// a checkpoint of another run (resumed, or overwritten by a fresh run), and retention with
// damaged checkpoints around.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "tests/trainer/inproc_job.h"

namespace t2d::trainer {
namespace {

namespace fs = std::filesystem;

class CheckpointIntegrityTest : public test_util::InProcJobTest {
 protected:
  std::string Ckpt(int64_t step) const { return absl::StrFormat("%s/ckpt/ckpt-%012d", dir_, step); }
  // A job checkpointing every 2 steps into <dir>/ckpt, keeping `keep_last`.
  config::JobConfig CkptJob(int64_t max_steps, int keep_last = 5, std::vector<std::string> more = {}) {
    more.insert(more.end(), {"checkpoint.dir=" + dir_ + "/ckpt", "checkpoint.every_steps=2",
                             absl::StrCat("checkpoint.keep_last=", keep_last),
                             absl::StrCat("training.max_steps=", max_steps)});
    return Job(more);
  }
};

// dense.t2dd ends with its own CRC-32, so a whole-file CRC is the same constant for every such
// file: a manifest of CRCs cannot see one swapped in from another checkpoint.
TEST_F(CheckpointIntegrityTest, DenseFileFromAnotherCheckpointIsNotLoaded) {
  const config::JobConfig job = CkptJob(4);
  PrepareData(job);
  ASSERT_TRUE(Run(job, false).ok());
  ASSERT_TRUE(fs::exists(Ckpt(2)) && fs::exists(Ckpt(4)));
  WriteAll(Ckpt(4) + "/dense.t2dd", ReadAll(Ckpt(2) + "/dense.t2dd"));
  auto step = LoadedStep(job);
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_EQ(*step, 2) << "the checkpoint with a swapped dense.t2dd was loaded";
}

TEST_F(CheckpointIntegrityTest, ManifestWithoutFileEntriesIsNotTrusted) {
  const config::JobConfig job = CkptJob(4);
  PrepareData(job);
  ASSERT_TRUE(Run(job, false).ok());
  // Keep the header lines only (no `files { ... }` entries), then damage the dense state.
  std::string header;
  const std::vector<std::string> lines = absl::StrSplit(ReadAll(Ckpt(4) + "/MANIFEST"), '\n', absl::SkipEmpty());
  for (const std::string& line : lines) {
    if (line[0] != ' ' && line.rfind("files", 0) != 0 && line != "}") absl::StrAppend(&header, line, "\n");
  }
  WriteAll(Ckpt(4) + "/MANIFEST", header);
  WriteAll(Ckpt(4) + "/dense.t2dd", "not a dense state");
  auto step = LoadedStep(job);
  EXPECT_TRUE(step.ok() && *step == 2) << "a header-only manifest verified: "
                                       << (step.ok() ? absl::StrCat("loaded step ", *step) : step.status().ToString());
}

TEST_F(CheckpointIntegrityTest, FreshRunRefusesAFolderHoldingCheckpoints) {
  const config::JobConfig job = CkptJob(4);
  PrepareData(job);
  ASSERT_TRUE(Run(job, false).ok());
  auto again = Run(job, false);
  ASSERT_FALSE(again.ok()) << "a fresh run wrote over the checkpoints of another";
  EXPECT_NE(again.status().message().find("--resume"), std::string::npos) << again.status();
  EXPECT_NE(again.status().message().find(dir_ + "/ckpt"), std::string::npos) << again.status();
  EXPECT_TRUE(fs::exists(Ckpt(2)) && fs::exists(Ckpt(4)));
}

TEST_F(CheckpointIntegrityTest, ResumeOfAnotherRunIsRefusedNamingTheDifference) {
  PrepareData(Job());
  ASSERT_TRUE(Run(CkptJob(4), false).ok());
  // Settings that may change between a run and its resume: the length, cadence and evaluation.
  auto same = Run(CkptJob(6, 3, {"training.log_every_steps=7", "eval.batch_size=16"}), true);
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ(same->steps, 6);
  auto other = Run(CkptJob(8, 5, {"training.learning_rate=0.5"}), true);
  ASSERT_FALSE(other.ok()) << "resumed another run's checkpoint";
  EXPECT_EQ(other.status().code(), absl::StatusCode::kFailedPrecondition) << other.status();
  EXPECT_NE(other.status().message().find("training.learning_rate"), std::string::npos) << other.status();
  EXPECT_NE(other.status().message().find(Ckpt(6)), std::string::npos) << other.status();
}

// A checkpoint written by an earlier version records the run identity of that version's schema
// (here: a manifest whose run_id is not today's hash). Its job.textproto defines the same run, so
// it resumes; serving settings never define a run.
TEST_F(CheckpointIntegrityTest, CheckpointOfAnEarlierVersionResumesByItsConfig) {
  PrepareData(Job());
  ASSERT_TRUE(Run(CkptJob(4), false).ok());
  FolderManifest m = test_util::ReadManifest(Ckpt(4));
  m.set_run_id(std::string(64, '0'));
  test_util::WriteManifest(Ckpt(4), m);
  auto resumed = Run(CkptJob(6, 3, {"serving.exact_max_items=5", "serving.index_kind=HNSW"}), true);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->steps, 6);
  // Its config still decides: another learning rate is another run.
  test_util::WriteManifest(Ckpt(6), [&] {
    FolderManifest old = test_util::ReadManifest(Ckpt(6));
    old.set_run_id(std::string(64, '0'));
    return old;
  }());
  auto other = Run(CkptJob(8, 5, {"training.learning_rate=0.5"}), true);
  ASSERT_FALSE(other.ok());
  EXPECT_NE(other.status().message().find("training.learning_rate"), std::string::npos) << other.status();
}

TEST_F(CheckpointIntegrityTest, FullSoftmaxOverTooLargeACatalogueIsRefused) {
  const config::JobConfig job = Job({"model.full_softmax_max_items=50"});
  PrepareData(job);
  auto r = Run(job, false);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_NE(r.status().message().find("model.full_softmax_max_items (50)"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("SAMPLED_SOFTMAX"), std::string::npos) << r.status();
  ASSERT_TRUE(Run(Job({"model.full_softmax_max_items=50", "model.loss=SAMPLED_SOFTMAX", "model.num_negatives=16",
                       "training.max_steps=2"}), false).ok());
}

TEST_F(CheckpointIntegrityTest, ResumeWithOnlyDamagedCheckpointsFailsAndKeepsThem) {
  const config::JobConfig job = CkptJob(4);
  PrepareData(job);
  ASSERT_TRUE(Run(job, false).ok());
  for (int64_t step : {2, 4}) WriteAll(Ckpt(step) + "/dense.t2dd", "damaged");
  auto r = Run(CkptJob(6, 1), true);
  ASSERT_FALSE(r.ok()) << "started fresh over damaged checkpoints";
  EXPECT_NE(r.status().message().find(Ckpt(4) + "/dense.t2dd"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find(Ckpt(2) + "/dense.t2dd"), std::string::npos) << r.status();
  EXPECT_TRUE(fs::exists(Ckpt(2)) && fs::exists(Ckpt(4)));
  // With no checkpoint at all, --resume starts fresh.
  auto fresh = Run(Job({"checkpoint.dir=" + dir_ + "/empty", "training.max_steps=2"}), true);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_EQ(fresh->steps, 2);
}

TEST_F(CheckpointIntegrityTest, RetentionCountsOnlyVerifiedCheckpointsOfThisRun) {
  PrepareData(Job());
  ASSERT_TRUE(Run(CkptJob(4, 1), false).ok());
  ASSERT_FALSE(fs::exists(Ckpt(2)));
  // A damaged checkpoint with a higher step than any this run will write.
  fs::copy(Ckpt(4), Ckpt(900), fs::copy_options::recursive);
  WriteAll(Ckpt(900) + "/dense.t2dd", "damaged");
  auto r = Run(CkptJob(8, 1), true);  // resumes from step 4, writes 6 and 8, keeps 1
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(fs::exists(Ckpt(8))) << "deleted the newest verified checkpoint";
  EXPECT_FALSE(fs::exists(Ckpt(4)));
  EXPECT_FALSE(fs::exists(Ckpt(6)));
  EXPECT_TRUE(fs::exists(Ckpt(900))) << "a damaged checkpoint is left in place";
  auto step = LoadedStep(CkptJob(8, 1));
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_EQ(*step, 8);
}

}  // namespace
}  // namespace t2d::trainer
