#include "launcher/launch.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "launcher/run_job.h"
#include "launcher/supervise.h"

namespace t2d::launcher {
namespace {

TEST(Launch, SingleMachineCommand) {
  config::JobConfig c;
  c.mutable_cluster()->set_num_servers(2);
  c.mutable_cluster()->set_num_workers(3);
  LaunchOptions o;
  o.binary = "/opt/t2diff";
  o.args = {"train", "--config", "my job.textproto"};
  o.as_root = true;
  const auto argv = BuildMpirunCommand(c, o);
  EXPECT_EQ(ShellJoin(argv),
            "mpirun -n 5 --allow-run-as-root --oversubscribe --mca btl self,vader --mca oob_tcp_if_include lo "
            "--bind-to none /opt/t2diff train --config 'my job.textproto'");
}

TEST(Launch, HostfileReplacesOversubscribe) {
  config::JobConfig c;
  c.mutable_cluster()->set_hostfile("hosts.txt");
  LaunchOptions o;
  o.binary = "t2diff";
  EXPECT_EQ(ShellJoin(BuildMpirunCommand(c, o)), "mpirun -n 3 --hostfile hosts.txt --bind-to none t2diff");
  EXPECT_EQ(ShellJoin({"a'b", ""}), "'a'\\''b' ''");
}

TEST(Launch, FarMoreRanksThanSlotsNeedTheFlag) {
  config::JobConfig c;  // 1 server + 2 workers
  EXPECT_TRUE(CheckRankCount(c, 1, false).ok());
  c.mutable_cluster()->set_num_servers(4096);
  c.mutable_cluster()->set_num_workers(65536);
  const absl::Status s = CheckRankCount(c, 2, false);
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_NE(std::string(s.message()).find("69632 ranks"), std::string::npos) << s;
  EXPECT_NE(std::string(s.message()).find("2 cores"), std::string::npos) << s;
  EXPECT_NE(std::string(s.message()).find("--many-ranks"), std::string::npos) << s;
  EXPECT_TRUE(CheckRankCount(c, 2, true).ok());
  c.mutable_cluster()->set_num_servers(1);
  c.mutable_cluster()->set_num_workers(8 * 16 - 1);
  EXPECT_TRUE(CheckRankCount(c, 16, false).ok());
  c.mutable_cluster()->set_hostfile("hosts.txt");
  c.mutable_cluster()->set_num_workers(8 * 16);
  EXPECT_NE(std::string(CheckRankCount(c, 16, false).message()).find("16 slots of hosts.txt"), std::string::npos);
  EXPECT_EQ(HostfileSlots("# cluster\nnode1 slots=4\n\nnode2 slots=8 max_slots=8  # big\nnode3\n", 2), 14);
}

TEST(Launch, UnwritableCheckpointFolderIsFoundAtStart) {
  const std::string root = ::testing::TempDir() + "/launch_test_folders";
  std::filesystem::remove_all(root);
  std::filesystem::create_directories(root);
  { std::ofstream(root + "/file") << "x"; }
  config::JobConfig c;
  c.mutable_checkpoint()->set_dir(root + "/file/ckpt");  // under a plain file: cannot be created
  const absl::Status s = CheckCheckpointFolder(c);
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_NE(std::string(s.message()).find("checkpoint.dir \"" + root + "/file/ckpt\""), std::string::npos) << s;
  c.mutable_checkpoint()->set_dir(root + "/a/ckpt");
  EXPECT_TRUE(CheckCheckpointFolder(c).ok());
  EXPECT_TRUE(std::filesystem::is_directory(root + "/a/ckpt"));
  EXPECT_TRUE(std::filesystem::is_empty(root + "/a/ckpt"));  // the probe is gone
  c.mutable_checkpoint()->set_dir("");
  EXPECT_TRUE(CheckCheckpointFolder(c).ok());  // no checkpoints
}

TEST(Supervise, HeartbeatsAreWrittenAndRead) {
  const std::string dir = ::testing::TempDir() + "/launch_test_beats";
  std::filesystem::remove_all(dir);
  {
    auto writer = HeartbeatWriter::Start(dir, 1);
    ASSERT_TRUE(writer.ok()) << writer.status();
    std::vector<Heartbeat> beats = ReadHeartbeats(dir, 3);
    ASSERT_EQ(beats.size(), 3u);
    EXPECT_FALSE(beats[0].present);
    EXPECT_TRUE(beats[1].present);
    EXPECT_FALSE(beats[1].done);
    EXPECT_EQ(beats[1].pid, ::getpid());
    EXPECT_LT(absl::Now() - beats[1].time, absl::Seconds(2));
    // The thread keeps the file fresh.
    absl::SleepFor(absl::Milliseconds(2500));
    EXPECT_LT(absl::Now() - ReadHeartbeats(dir, 3)[1].time, absl::Milliseconds(1500));
    (*writer)->MarkDone();
  }
  EXPECT_TRUE(ReadHeartbeats(dir, 3)[1].done);
}

TEST(Supervise, StallsAreOldOrMissingBeats) {
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  std::vector<Heartbeat> beats(3);
  for (auto& b : beats) {
    b.present = true;
    b.time = t0 + absl::Seconds(20);
  }
  const absl::Duration beat = absl::Seconds(3), startup = absl::Seconds(60);
  EXPECT_EQ(FindStalledRank(beats, t0 + absl::Seconds(22), t0, beat, startup), std::nullopt);
  beats[2].time = t0 + absl::Seconds(18);
  EXPECT_EQ(FindStalledRank(beats, t0 + absl::Seconds(22), t0, beat, startup), 2);
  beats[2].done = true;  // finished: no longer watched
  EXPECT_EQ(FindStalledRank(beats, t0 + absl::Seconds(22), t0, beat, startup), std::nullopt);
  beats[0].present = false;  // not started yet: stalled only after the start-up allowance
  EXPECT_EQ(FindStalledRank(beats, t0 + absl::Seconds(22), t0, beat, startup), std::nullopt);
  EXPECT_EQ(FindStalledRank(beats, t0 + absl::Seconds(61), t0, beat, startup), 0);
}

TEST(Supervise, CausesFromMpirunAndTheRestartCommand) {
  const comm::RoleAssignment roles{3, 1, 2};
  EXPECT_EQ(CauseFromMpirunLine("mpirun noticed that process rank 2 with PID 0 on node vm exited on signal 9 (Killed).",
                                roles),
            "world rank 2 (worker 1) was killed by signal 9 (Killed)");
  EXPECT_EQ(CauseFromMpirunLine("MPI_ABORT was invoked on rank 0 in communicator MPI_COMM_WORLD", roles),
            "world rank 0 (server 0) ended the job (MPI_Abort)");
  EXPECT_EQ(CauseFromMpirunLine("I1202 [worker 0] trainer.cc:10] step 3", roles), std::nullopt);
  EXPECT_EQ(RestartCommand({"mpirun", "t2diff", "train", "-c", "j"}),
            (std::vector<std::string>{"mpirun", "t2diff", "train", "-c", "j", "--resume"}));
  EXPECT_EQ(RestartCommand({"mpirun", "t2diff", "train", "--resume"}),
            (std::vector<std::string>{"mpirun", "t2diff", "train", "--resume"}));
}

}  // namespace
}  // namespace t2d::launcher
