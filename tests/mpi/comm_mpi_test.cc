// comm/ under mpiexec: the conformance cases over MpiTransport + MpiCommunicator on the world,
// the MPI-specific deadline report, the worker split and the communicator factory.

#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstring>
#include <functional>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm/communicator_factory.h"
#include "comm/mpi_communicator.h"
#include "comm/mpi_session.h"
#include "comm/mpi_transport.h"
#include "comm/roles.h"
#include "tests/comm/conformance_cases.h"
#include "tests/mpi/mpi_test_main.h"

namespace t2d::comm {
namespace {

absl::Time Soon() { return absl::Now() + absl::Seconds(20); }

std::vector<std::string> CaseNames() {
  std::vector<std::string> out;
  for (const auto& c : ::t2d::testing::TransportCases()) out.push_back(c.name);
  for (const auto& c : ::t2d::testing::CommunicatorCases()) out.push_back(c.name);
  return out;
}

class MpiConformance : public ::testing::TestWithParam<std::string> {};

TEST_P(MpiConformance, Case) {
  auto transport = MpiTransport::Create(MPI_COMM_WORLD);
  ASSERT_TRUE(transport.ok()) << transport.status();
  auto comm = MpiCommunicator::Create(MPI_COMM_WORLD);
  ASSERT_TRUE(comm.ok()) << comm.status();
  for (const auto* list : {&::t2d::testing::TransportCases(), &::t2d::testing::CommunicatorCases()}) {
    for (const auto& c : *list) {
      if (c.name == GetParam()) c.run(**transport, **comm);
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

INSTANTIATE_TEST_SUITE_P(Mpi, MpiConformance, ::testing::ValuesIn(CaseNames()),
                         [](const auto& param_info) { return param_info.param; });

// The collectives again with the shared-memory window off (MPI_Iallreduce) and with a window of
// 4 KiB (halves of 2 KiB), so that every allreduce runs in several chunks whose slices do not
// divide evenly.
std::vector<std::string> ModeCaseNames() {
  std::vector<std::string> out;
  for (const char* mode : {"NoWindow", "SmallWindow"}) {
    for (const auto& c : ::t2d::testing::CommunicatorCases()) out.push_back(absl::StrCat(mode, "_", c.name));
  }
  return out;
}

class MpiCommunicatorModes : public ::testing::TestWithParam<std::string> {};

TEST_P(MpiCommunicatorModes, Case) {
  auto transport = MpiTransport::Create(MPI_COMM_WORLD);
  ASSERT_TRUE(transport.ok()) << transport.status();
  const bool window = GetParam().rfind("SmallWindow_", 0) == 0;
  MpiCommunicator::Options options;
  options.shared_memory_bytes = window ? 4096 : 0;
  auto comm = MpiCommunicator::Create(MPI_COMM_WORLD, options);
  ASSERT_TRUE(comm.ok()) << comm.status();
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  EXPECT_EQ((*comm)->uses_shared_memory(), window && size > 1);  // the ranks of this test share a host
  for (const auto& c : ::t2d::testing::CommunicatorCases()) {
    if (GetParam().substr(GetParam().find('_') + 1) == c.name) c.run(**transport, **comm);
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

INSTANTIATE_TEST_SUITE_P(Mpi, MpiCommunicatorModes, ::testing::ValuesIn(ModeCaseNames()),
                         [](const auto& param_info) { return param_info.param; });

TEST(MpiCommunicator, WindowAndMessagesGiveTheSameSums) {
  int size = 0, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (size < 2) GTEST_SKIP() << "needs 2 ranks";
  auto window = MpiCommunicator::Create(MPI_COMM_WORLD);
  MpiCommunicator::Options off;
  off.shared_memory_bytes = 0;
  auto messages = MpiCommunicator::Create(MPI_COMM_WORLD, off);
  ASSERT_TRUE(window.ok() && messages.ok());
  ASSERT_TRUE((*window)->uses_shared_memory());
  // Several chunks of the default window (1 MiB halves), values that round.
  std::vector<float> a(1500000);
  for (size_t i = 0; i < a.size(); ++i) a[i] = 1.0f / static_cast<float>(i % 1000 + rank + 3);
  std::vector<float> b = a;
  ASSERT_TRUE((*window)->AllReduceSum(absl::MakeSpan(a), Soon()).ok());
  ASSERT_TRUE((*messages)->AllReduceSum(absl::MakeSpan(b), Soon()).ok());
  for (size_t i = 0; i < a.size(); i += 101) {
    // Two members: a + b either way round is the same float; more: the order may differ.
    if (size == 2) {
      ASSERT_EQ(a[i], b[i]) << i;
    } else {
      ASSERT_NEAR(a[i], b[i], 1e-6f * std::abs(b[i])) << i;
    }
  }
  // Every member holds the same bits.
  std::vector<float> first = a;
  ASSERT_TRUE((*messages)->Broadcast(first.data(), first.size() * sizeof(float), 0, Soon()).ok());
  EXPECT_EQ(std::memcmp(first.data(), a.data(), a.size() * sizeof(float)), 0);
  MPI_Barrier(MPI_COMM_WORLD);
}

// A window larger than /dev/shm can hold is refused on every member alike (OpenMPI would map it
// from a file there and fault when it fills); the communicator falls back to MPI_Iallreduce.
TEST(MpiCommunicator, WindowWithoutRoomFallsBackToMessages) {
  MpiCommunicator::Options huge;
  huge.shared_memory_bytes = size_t{1} << 50;
  auto comm = MpiCommunicator::Create(MPI_COMM_WORLD, huge);
  ASSERT_TRUE(comm.ok()) << comm.status();
  EXPECT_FALSE((*comm)->uses_shared_memory());
  double x = 1;
  ASSERT_TRUE((*comm)->AllReduceSum(absl::MakeSpan(&x, 1), Soon()).ok());
  EXPECT_EQ(x, static_cast<double>((*comm)->size()));
  MPI_Barrier(MPI_COMM_WORLD);
}

// The last rank joins a collective 700 ms late; the others' 300 ms deadline passes and names it
// (and its world rank), and their communicator is broken from then on. `op` runs the collective
// with a deadline; the barrier goes through MPI_Ibarrier, the allreduce through the
// shared-memory window's token barriers.
void ExpectDeadlineNamesTheLateRank(const std::function<absl::Status(MpiCommunicator&, absl::Time)>& op) {
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size < 2) GTEST_SKIP() << "needs 2 ranks";
  auto comm = MpiCommunicator::Create(MPI_COMM_WORLD);
  ASSERT_TRUE(comm.ok());
  ASSERT_TRUE((*comm)->uses_shared_memory());
  const int late = size - 1;
  if (rank == late) {
    absl::SleepFor(absl::Milliseconds(700));
    // Joins late; a barrier completes once the others drive MPI progress in the world barrier
    // below, the allreduce's second token barrier runs into its deadline.
    (void)op(**comm, absl::Now() + absl::Seconds(2));
  } else {
    const absl::Time start = absl::Now();
    absl::Status s = op(**comm, start + absl::Milliseconds(300));
    EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
    EXPECT_NE(std::string(s.message()).find(absl::StrCat("rank(s) ", late, " did not join")), std::string::npos) << s;
    // A communicator's ranks need not be the job's: the world ranks are named too.
    EXPECT_NE(std::string(s.message()).find(absl::StrCat("did not join (world rank(s) ", late, ")")), std::string::npos)
        << s;
    EXPECT_LT(absl::Now() - start, absl::Seconds(2));
    EXPECT_TRUE(absl::IsFailedPrecondition(op(**comm, Soon())));
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(MpiCommunicator, BarrierDeadlineNamesTheRankThatDidNotJoin) {
  ExpectDeadlineNamesTheLateRank([](MpiCommunicator& c, absl::Time deadline) { return c.Barrier(deadline); });
}

TEST(MpiCommunicator, WindowAllReduceDeadlineNamesTheRankThatDidNotJoin) {
  ExpectDeadlineNamesTheLateRank([](MpiCommunicator& c, absl::Time deadline) {
    std::vector<float> v(1000, 1.0f);
    return c.AllReduceSum(absl::MakeSpan(v), deadline);
  });
}

TEST(MpiTransport, UntakenSendIsReportedNamingTheReceiver) {
  auto t = MpiTransport::Create(MPI_COMM_WORLD);
  ASSERT_TRUE(t.ok());
  if ((*t)->size() < 2) GTEST_SKIP() << "needs 2 ranks";
  constexpr int kTag = 4321;
  if ((*t)->rank() == 0) {
    // 8 MiB goes by rendezvous: it stays queued until rank 1 receives, which it does late.
    ASSERT_TRUE((*t)->Send(1, kTag, std::string(8u << 20, 'x'), absl::Now() + absl::Milliseconds(200)).ok());
    absl::Status s = (*t)->Flush(absl::Now() + absl::Seconds(5));
    EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
    EXPECT_NE(std::string(s.message()).find("rank 1 did not take it"), std::string::npos) << s;
  } else if ((*t)->rank() == 1) {
    absl::SleepFor(absl::Milliseconds(600));
    // Whether MPI managed to cancel the send decides if it still arrives; both are fine.
    (void)(*t)->Recv(0, kTag, absl::Now() + absl::Seconds(1));
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(MpiSession, SecondSessionIsRefused) {
  int argc = 0;
  char** argv = nullptr;
  EXPECT_TRUE(absl::IsFailedPrecondition(MpiSession::Create(&argc, &argv).status()));
}

TEST(MpiSession, WorkerSplitExcludesServers) {
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  auto roles = AssignRoles(size, 1);
  ASSERT_TRUE(roles.ok()) << roles.status();
  EXPECT_TRUE(absl::IsInvalidArgument(
      ::t2d::testing::TestSession().SplitWorkers(RoleAssignment{size + 1, 1, size}).status()));
  auto split = ::t2d::testing::TestSession().SplitWorkers(*roles);
  ASSERT_TRUE(split.ok()) << split.status();
  MPI_Comm workers = *split;  // owned by the session
  if (roles->IsServer(rank)) {
    EXPECT_EQ(workers, MPI_COMM_NULL);
    return;
  }
  ASSERT_NE(workers, MPI_COMM_NULL);
  auto comm = MpiCommunicator::Create(workers);
  ASSERT_TRUE(comm.ok());
  EXPECT_EQ((*comm)->size(), size - 1);
  EXPECT_EQ((*comm)->rank(), roles->WorkerIndex(rank));
  double one = 1;
  ASSERT_TRUE((*comm)->AllReduceSum(absl::MakeSpan(&one, 1), Soon()).ok());
  EXPECT_EQ(one, size - 1.0);
}

TEST(Factory, BackendsAndFallback) {
  EXPECT_TRUE(absl::IsInvalidArgument(MakeCommunicator("gloo", MPI_COMM_WORLD, Soon()).status()));
  auto mpi = MakeCommunicator("mpi", MPI_COMM_WORLD, Soon());
  ASSERT_TRUE(mpi.ok()) << mpi.status();
  EXPECT_EQ((*mpi)->backend(), "mpi");
  // Without a GPU (or without NCCL in the build) "nccl" falls back to MPI and still works.
  auto nccl = MakeCommunicator("nccl", MPI_COMM_WORLD, Soon());
  ASSERT_TRUE(nccl.ok()) << nccl.status();
  float x = 1;
  ASSERT_TRUE((*nccl)->AllReduceSum(absl::MakeSpan(&x, 1), Soon()).ok());
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  EXPECT_EQ(x, static_cast<float>(size));
}

}  // namespace
}  // namespace t2d::comm

int main(int argc, char** argv) { return t2d::testing::RunMpiTests(argc, argv); }
