#include "launcher/launch.h"

#include <gtest/gtest.h>

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
            "mpirun -n 5 --allow-run-as-root --oversubscribe --bind-to none /opt/t2diff train --config 'my job.textproto'");
}

TEST(Launch, HostfileReplacesOversubscribe) {
  config::JobConfig c;
  c.mutable_cluster()->set_hostfile("hosts.txt");
  LaunchOptions o;
  o.binary = "t2diff";
  EXPECT_EQ(ShellJoin(BuildMpirunCommand(c, o)), "mpirun -n 3 --hostfile hosts.txt --bind-to none t2diff");
  EXPECT_EQ(ShellJoin({"a'b", ""}), "'a'\\''b' ''");
}

}  // namespace
}  // namespace t2d::launcher
