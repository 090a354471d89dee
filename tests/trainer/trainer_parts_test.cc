// The trainer's parts over in-process twins (LocalEmbeddingStore, InProcGroup): the learning-rate
// schedule by hand, the evaluation history and worker-state files (round trip and damage), and
// whole runs of the Trainer: the prefetch path on the in-process store, resume equal to an
// uninterrupted run, and a damaged checkpoint file refused with its name.
#include <gtest/gtest.h>
#include <sched.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "comm/inproc_communicator.h"
#include "common/sealed_folder.h"
#include "configs/config_loader.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "configs/job_options.h"
#include "data/prepare.h"
#include "embedding/local_embedding_store.h"
#include "embedding/sharding.h"
#include "trainer/checkpoint.h"
#include "trainer/run_report.h"
#include "trainer/run_state.h"
#include "tests/trainer/inproc_job.h"
#include "trainer/train_step.h"
#include "trainer/trainer.h"

namespace t2d::trainer {
namespace {

namespace fs = std::filesystem;

TEST(LearningRateAt, WarmupThenScheduleByHand) {
  config::TrainingConfig t;
  t.set_learning_rate(0.1);
  t.set_lr_warmup_steps(4);
  t.set_lr_final_fraction(0.2);
  t.set_lr_schedule(config::TrainingConfig::LINEAR);
  // The config fields are float: compare to 1e-7.
  EXPECT_NEAR(LearningRateAt(t, 0, 14), 0.1 * 1 / 4, 1e-7);  // warm-up: (step + 1) / warmup
  EXPECT_NEAR(LearningRateAt(t, 3, 14), 0.1, 1e-7);
  // After warm-up: progress (step - 4) / (14 - 4 - 1), so step 13 is the end of the decay.
  EXPECT_NEAR(LearningRateAt(t, 13, 14), 0.1 * 0.2, 1e-7);
  EXPECT_NEAR(LearningRateAt(t, 7, 14), 0.1 * (1 - 0.8 * 3.0 / 9.0), 1e-7);
  t.set_lr_schedule(config::TrainingConfig::COSINE);
  EXPECT_NEAR(LearningRateAt(t, 13, 14), 0.1 * 0.2, 1e-7);
  EXPECT_NEAR(LearningRateAt(t, 4, 14), 0.1, 1e-7);
  EXPECT_NEAR(LearningRateAt(t, 7, 14), 0.1 * (0.2 + 0.8 * 0.5 * (1 + std::cos(M_PI * 3.0 / 9.0))), 1e-7);
  t.set_lr_schedule(config::TrainingConfig::CONSTANT);
  EXPECT_NEAR(LearningRateAt(t, 10, 14), 0.1, 1e-7);
}

class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = (fs::path(::testing::TempDir()) / (std::string("t2d_trainer_") + info->name() + "_" +
                                              std::to_string(::getpid()))).string();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_;
};

using TextProtoTest = TempDirTest;

TEST_F(TextProtoTest, DamagedFilesAreDataLossNamingThem) {
  WorkerState ws;
  ws.set_step(12);
  ws.mutable_cursor()->set_position(7);
  const std::string path = dir_ + "/worker-0.textproto";
  ASSERT_TRUE(WriteTextProto(path, ws).ok());
  WorkerState back;
  ASSERT_TRUE(ReadTextProto(path, &back).ok());
  EXPECT_EQ(back.step(), 12);
  EXPECT_EQ(back.cursor().position(), 7);
  std::ofstream(path) << "step: 12 cursor { position: nonsense }";
  auto s = ReadTextProto(path, &back);
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  EXPECT_NE(s.message().find(path), std::string::npos) << s;
  s = ReadTextProto(dir_ + "/missing.textproto", &back);
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  EXPECT_NE(s.message().find("missing.textproto"), std::string::npos) << s;
}

// The tiny in-process job of tests/trainer/inproc_job.h.
class InProcessJobTest : public test_util::InProcJobTest {
 protected:
  using test_util::InProcJobTest::Run;
  // Run, and `final_metrics` gets the test Recall@10 and MRR@10 of the newest checkpoint, loaded
  // back by a second trainer.
  absl::StatusOr<TrainResult> Run(const config::JobConfig& job, bool resume, std::vector<float>* final_metrics) {
    auto r = Run(job, resume);
    if (!r.ok()) return r;
    auto u = NewTrainer(job, false);
    if (!u.ok()) return u.status();
    if (auto s = (*u)->LoadLatestModel(); !s.ok()) return s;
    auto e = (*u)->Evaluate("test");
    if (!e.ok()) return e.status();
    final_metrics->assign({static_cast<float>(e->model.Recall(10)), static_cast<float>(e->model.Mrr(10))});
    return r;
  }
};

TEST_F(InProcessJobTest, PrefetchRunsOnTheInProcessStore) {
  // Async with a staleness bound: the trainer requests the next batch's rows before the current
  // step, through the same EmbeddingStore::Pull/Wait path as with parameter servers.
  config::JobConfig job = Job({"cluster.consistency=ASYNC", "cluster.staleness=1"});
  PrepareData(job);
  auto r = Run(job, false);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(r->steps, 2);
  EXPECT_LT(r->last_loss, r->first_loss);
  EXPECT_EQ(r->validation.size(), 2u);
  EXPECT_GT(r->test.model.count(), 0);
  // The steps' CPU time is this process's: positive, and no more than its threads could use.
  EXPECT_GT(r->step_cpu_seconds, 0);
  EXPECT_LE(r->step_cpu_seconds, r->step_seconds * (std::thread::hardware_concurrency() + 0.1));
  EXPECT_DOUBLE_EQ(SummaryJson(*r, job.eval())["step_cpu_seconds"].get<double>(), r->step_cpu_seconds);
}

TEST_F(InProcessJobTest, ResumeEqualsAnUninterruptedRun) {
  config::JobConfig full = Job({"checkpoint.dir=" + dir_ + "/full"});
  PrepareData(full);
  std::vector<float> want, got;
  auto a = Run(full, false, &want);
  ASSERT_TRUE(a.ok()) << a.status();
  config::JobConfig cut = Job({"checkpoint.dir=" + dir_ + "/cut", "training.max_steps=5"});
  ASSERT_TRUE(Run(cut, false).ok());
  cut.mutable_training()->clear_max_steps();
  auto b = Run(cut, true, &got);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->steps, a->steps);
  EXPECT_EQ(got, want);  // test Recall@10 and MRR@10 of the final checkpoints, exactly
  ASSERT_EQ(a->validation.size(), b->validation.size());
  for (size_t i = 0; i < a->validation.size(); ++i) {
    EXPECT_EQ(a->validation[i].model.Sums(), b->validation[i].model.Sums()) << "evaluation " << i;
  }
  // The summary JSON carries the selected evaluation and its metrics.
  const Json s = SummaryJson(*b, cut.eval());
  EXPECT_EQ(s["steps"], b->steps);
  EXPECT_EQ(s["best_epoch"], b->test.epoch);
  EXPECT_EQ(s["best_evaluation"], b->best_epoch + 1);
  EXPECT_DOUBLE_EQ(s["recall@10"].get<double>(), b->test.model.Recall(10));
  // The resumed run's history keeps each evaluation's epoch.
  for (size_t i = 0; i < a->validation.size(); ++i) EXPECT_EQ(a->validation[i].epoch, b->validation[i].epoch);
}

// tables[].init_from: a fresh run starts the table from a shard set (any shard count); a resumed
// run reads its checkpoint and ignores it; a missing folder or a table of another shape is an
// error naming the field.
TEST_F(InProcessJobTest, WarmStartFillsATableFromAShardSet) {
  const std::string user_table =
      R"(tables { name: "user_id" dim: 3 optimizer { kind: ROWWISE_ADAGRAD learning_rate: 0.05 } })";
  config::JobConfig job = Job({"model.user_id_table=user_id", "training.max_steps=2"}, user_table);
  PrepareData(job);
  // The shard set: user 5000, in no sample, stored with a known row, written by 2 shards.
  const std::string warm = dir_ + "/warm";
  std::filesystem::create_directories(warm);
  std::vector<float> want(3);
  for (int shard = 0; shard < 2; ++shard) {
    auto s = *embedding::LocalEmbeddingStore::Create(config::TablesOf(job), shard, 2);
    if (embedding::ShardOf(5000, 2) == shard) {
      ASSERT_TRUE(s->ApplyGradients(2, {5000}, {1, -2, 3}).ok());
      ASSERT_TRUE(s->Lookup(2, {5000}, absl::MakeSpan(want)).ok());
    }
    ASSERT_TRUE(s->Save(warm).ok());
  }
  // Trains `job` and returns user 5000's row afterwards (empty when the run failed).
  auto row_after = [&](bool resume) {
    std::vector<float> row(3);
    auto t = NewTrainer(job, resume);
    EXPECT_TRUE(t.ok()) << t.status();
    if (!t.ok()) return std::vector<float>();
    auto r = (*t)->Train();
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok() || !last_store().Lookup(2, {5000}, absl::MakeSpan(row)).ok()) return std::vector<float>();
    return row;
  };
  const std::vector<float> initial = row_after(false);
  ASSERT_EQ(initial.size(), 3u);
  EXPECT_NE(initial, want);
  job.mutable_tables(2)->set_init_from(warm);
  job.mutable_checkpoint()->set_dir(dir_ + "/ckpt");
  EXPECT_EQ(row_after(false), want);
  // Resumed: the checkpoint's tables, and init_from is not read (it may even be gone).
  job.mutable_tables(2)->set_init_from(dir_ + "/gone");
  job.mutable_training()->set_max_steps(3);
  EXPECT_EQ(row_after(true), want);
  // A fresh run from a missing folder, and from a table of another width.
  job.clear_checkpoint();
  auto missing = Run(job, false);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("tables[2] (\"user_id\").init_from"), std::string::npos) << missing.status();
  EXPECT_NE(missing.status().message().find("gone"), std::string::npos) << missing.status();
  const std::string wide = dir_ + "/wide";
  std::filesystem::create_directories(wide);
  config::JobConfig other = job;
  other.mutable_tables(2)->set_dim(5);
  ASSERT_TRUE((*embedding::LocalEmbeddingStore::Create(config::TablesOf(other)))->Save(wide).ok());
  job.mutable_tables(2)->set_init_from(wide);
  auto shape = Run(job, false);
  ASSERT_FALSE(shape.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(shape.status())) << shape.status();
  EXPECT_NE(shape.status().message().find("dim 5"), std::string::npos) << shape.status();
}

// cluster.parallel_branches: the diffusion backward on its own thread trains the same model, to
// the bit (the in-process job's model is T2Diff).
TEST_F(InProcessJobTest, ParallelBranchesTrainTheSameModel) {
  config::JobConfig plain = Job({"checkpoint.dir=" + dir_ + "/plain", "cluster.parallel_branches=false"});
  PrepareData(plain);
  ASSERT_EQ(plain.model().kind(), config::ModelConfig::T2DIFF);
  std::vector<float> want, got;
  auto a = Run(plain, false, &want);
  ASSERT_TRUE(a.ok()) << a.status();
  config::JobConfig branches = Job({"checkpoint.dir=" + dir_ + "/branches", "cluster.parallel_branches=true"});
  auto b = Run(branches, false, &got);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_FALSE(a->parallel_branches);
  EXPECT_TRUE(b->parallel_branches);
  EXPECT_EQ(got, want);
  EXPECT_EQ(a->last_loss, b->last_loss);
  ASSERT_EQ(a->validation.size(), b->validation.size());
  for (size_t i = 0; i < a->validation.size(); ++i) {
    EXPECT_EQ(a->validation[i].model.Sums(), b->validation[i].model.Sums()) << "evaluation " << i;
  }
}

// cluster.parallel_branches unset: a single process with in-process tables turns it on where it
// may use twice torch_threads cores (the summary says which), and never where it may not.
TEST_F(InProcessJobTest, ParallelBranchesUnsetFollowTheCores) {
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  ASSERT_EQ(sched_getaffinity(0, sizeof(cpus), &cpus), 0);
  const int cores = CPU_COUNT(&cpus);
  config::JobConfig one = Job({"checkpoint.dir=" + dir_ + "/one", "training.max_steps=2"});
  PrepareData(one);
  ASSERT_FALSE(one.cluster().has_parallel_branches());
  auto a = Run(one, false);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->parallel_branches, cores >= 2) << cores << " cores";
  EXPECT_EQ(SummaryJson(*a, one.eval())["parallel_branches"].get<bool>(), a->parallel_branches);
  config::JobConfig wide = Job({"checkpoint.dir=" + dir_ + "/wide", "training.max_steps=2",
                                absl::StrCat("cluster.torch_threads=", cores)});
  auto b = Run(wide, false);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_FALSE(b->parallel_branches) << "torch_threads " << cores << " already use every core";
}

// eval.every_epochs = 2: summary.json's best_epoch is the selected evaluation's epoch (a multiple
// of 2), not its number; eval.write_ranks keeps exactly that evaluation's per-sample ranks, and
// they reproduce its metrics.
TEST_F(InProcessJobTest, SelectedEpochAndItsRanks) {
  config::JobConfig job = Job({"training.epochs=6", "eval.every_epochs=2", "eval.write_ranks=true",
                               "training.output_dir=" + dir_ + "/out"});
  PrepareData(job);
  auto r = Run(job, false);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->validation.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(r->validation[i].epoch, 2 * static_cast<int>(i + 1));
  const Json s = SummaryJson(*r, job.eval());
  EXPECT_EQ(s["best_epoch"], 2 * (r->best_epoch + 1));
  EXPECT_EQ(s["best_evaluation"], r->best_epoch + 1);
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(dir_ + "/out/ranks")) files.push_back(e.path().filename());
  ASSERT_EQ(files, (std::vector<std::string>{absl::StrCat("test.", r->best_epoch + 1, ".w0.tsv")}));
  std::ifstream in(dir_ + "/out/ranks/" + files[0]);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "user\ttarget\ttime\trank");
  int64_t rows = 0, hits10 = 0;
  std::set<int64_t> users;
  while (std::getline(in, line)) {
    std::vector<std::string> f = absl::StrSplit(line, '\t');
    ASSERT_EQ(f.size(), 4u) << line;
    ++rows;
    users.insert(std::stoll(f[0]));
    hits10 += std::stoll(f[3]) <= 10;
  }
  EXPECT_EQ(rows, r->test.model.count());
  EXPECT_EQ(static_cast<int64_t>(users.size()), rows);  // LAST_ITEM: one test target per user
  EXPECT_DOUBLE_EQ(static_cast<double>(hits10) / static_cast<double>(rows), r->test.model.Recall(10));
}

// A ranks file that cannot be created fails the run with an error naming it (reported after the
// evaluation's collective calls, so other workers are not left waiting).
TEST_F(InProcessJobTest, UnwritableRanksFileIsAnError) {
  config::JobConfig job = Job({"eval.write_ranks=true", "training.output_dir=" + dir_ + "/out"});
  PrepareData(job);
  std::filesystem::create_directories(dir_ + "/out");
  WriteAll(dir_ + "/out/ranks", "a file where the folder should be");
  auto r = Run(job, false);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("out/ranks/test.1.w0.tsv: cannot create"), std::string::npos) << r.status();
}

TEST_F(InProcessJobTest, DamagedRunStateIsRefusedNamingTheFile) {
  config::JobConfig job = Job({"checkpoint.dir=" + dir_ + "/ckpt", "training.max_steps=3"});
  PrepareData(job);
  ASSERT_TRUE(Run(job, false).ok());
  // Corrupt the evaluation history of the only checkpoint, and reseal it so that the manifest
  // agrees: the content itself must be refused (it used to abort the process).
  std::string folder;
  for (const auto& e : fs::directory_iterator(dir_ + "/ckpt")) folder = e.path().string();
  std::ofstream(folder + "/evals.textproto") << "evaluations { split: \"valid\" model_sums: 1e }";
  const auto manifest = test_util::ReadManifest(folder);
  const auto files = CheckpointFiles(job, 1, 1);
  ASSERT_TRUE(t2d::SealFolder(folder, manifest, files).ok());
  job.mutable_training()->clear_max_steps();
  auto r = Run(job, true);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsDataLoss(r.status())) << r.status();
  EXPECT_NE(r.status().message().find("evals.textproto"), std::string::npos) << r.status();
  // History that does not match eval.k is refused too.
  std::ofstream(folder + "/evals.textproto") << "evaluations { split: \"valid\" model_sums: [1, 2] popularity_sums: [1, 2] }";
  ASSERT_TRUE(t2d::SealFolder(folder, manifest, files).ok());
  r = Run(job, true);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("eval.k"), std::string::npos) << r.status();
}

}  // namespace
}  // namespace t2d::trainer
