// In-process tests of comm/: the conformance cases over threads-as-ranks for 2..4 ranks, plus
// the in-process specifics (deadlines naming ranks, broken groups, gone peers, fault injection)
// and the pure role split.

#include <gtest/gtest.h>

#include <atomic>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm/buffer_pool.h"
#include "comm/faulty_transport.h"
#include "comm/inproc_communicator.h"
#include "comm/inproc_transport.h"
#include "comm/roles.h"
#include "tests/comm/conformance_cases.h"
#include "tests/testutil/spawn_ranks.h"

namespace t2d::comm {
namespace {

using ::t2d::testing::CommunicatorCases;
using ::t2d::testing::NamedCase;
using ::t2d::testing::TransportCases;

absl::Time Soon() { return absl::Now() + absl::Seconds(20); }

std::vector<std::tuple<std::string, int>> AllCases() {
  std::vector<std::tuple<std::string, int>> out;
  for (int n : {1, 2, 3, 4}) {
    for (const auto& c : TransportCases()) out.emplace_back(c.name, n);
    for (const auto& c : CommunicatorCases()) out.emplace_back(c.name, n);
  }
  return out;
}

class InProcConformance : public ::testing::TestWithParam<std::tuple<std::string, int>> {};

TEST_P(InProcConformance, Case) {
  const auto& [name, n] = GetParam();
  const NamedCase* found = nullptr;
  for (const auto* list : {&TransportCases(), &CommunicatorCases()}) {
    for (const auto& c : *list) {
      if (c.name == name) found = &c;
    }
  }
  ASSERT_NE(found, nullptr);
  testutil::SpawnRanks(n, [&](int, Transport& t, Communicator& c) { found->run(t, c); });
}

INSTANTIATE_TEST_SUITE_P(All, InProcConformance, ::testing::ValuesIn(AllCases()),
                         [](const auto& param_info) { return absl::StrCat(std::get<0>(param_info.param), "_np", std::get<1>(param_info.param)); });

TEST(InProcCommunicator, DeadlineNamesMissingRanksAndBreaksGroup) {
  InProcGroup group(3);
  std::atomic<bool> first_done{false};
  testutil::SpawnThreads(3, [&](int rank) {
    auto c = group.Member(rank);
    if (rank == 2) {
      // Joins only after the others gave up: must fail fast, not wait.
      while (!first_done.load()) absl::SleepFor(absl::Milliseconds(5));
      absl::SleepFor(absl::Milliseconds(50));
      absl::Status s = c->Barrier(Soon());
      EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
      return;
    }
    const absl::Time start = absl::Now();
    absl::Status s = c->Barrier(start + absl::Milliseconds(200));
    EXPECT_LT(absl::Now() - start, absl::Seconds(2));
    if (rank == 0) {
      // The first to time out names the missing rank; the other sees the broken group.
      EXPECT_TRUE(absl::IsDeadlineExceeded(s) || absl::IsFailedPrecondition(s)) << s;
      EXPECT_NE(std::string(s.message()).find("rank(s) 2"), std::string::npos) << s;
    } else {
      EXPECT_FALSE(s.ok());
    }
    absl::SleepFor(absl::Milliseconds(20));
    first_done = true;
    EXPECT_TRUE(absl::IsFailedPrecondition(c->Barrier(Soon())));
  });
}

TEST(InProcCommunicator, MismatchedCallsAreInvalidArgument) {
  InProcGroup group(2);
  testutil::SpawnThreads(2, [&](int rank) {
    auto c = group.Member(rank);
    std::vector<float> v(rank == 0 ? 4 : 5, 1.0f);
    EXPECT_TRUE(absl::IsInvalidArgument(c->AllReduceSum(absl::MakeSpan(v), Soon())));
    // The group stays usable after a detected mismatch.
    std::vector<float> w(3, 2.0f);
    ASSERT_TRUE(c->AllReduceSum(absl::MakeSpan(w), Soon()).ok());
    EXPECT_EQ(w[2], 4.0f);
  });
}

TEST(InProcCommunicator, SumIsInRankOrder) {
  // 1e8 + 1 - 1e8 in float depends on the order; rank order gives (1e8 + 1) - 1e8 = 0.
  InProcGroup group(3);
  const float inputs[3] = {1e8f, 1.0f, -1e8f};
  testutil::SpawnThreads(3, [&](int rank) {
    auto c = group.Member(rank);
    float x = inputs[rank];
    ASSERT_TRUE(c->AllReduceSum(absl::MakeSpan(&x, 1), Soon()).ok());
    EXPECT_EQ(x, (1e8f + 1.0f) + -1e8f);
  });
}

TEST(InProcTransport, GonePeerIsUnavailable) {
  InProcHub hub(2);
  auto t0 = hub.Connect(0);
  auto t1 = hub.Connect(1);
  ASSERT_TRUE(t1->Send(0, 1, "last words", Soon()).ok());
  hub.MarkGone(1);
  EXPECT_TRUE(absl::IsUnavailable(t0->Send(1, 1, "x", Soon())));
  auto queued = t0->Recv(1, 1, Soon());  // what it sent before dying is still delivered
  ASSERT_TRUE(queued.ok());
  EXPECT_EQ(queued->bytes, "last words");
  auto s = t0->Recv(1, 1, Soon());
  EXPECT_TRUE(absl::IsUnavailable(s.status())) << s.status();
  EXPECT_NE(std::string(s.status().message()).find("rank 1"), std::string::npos);
  EXPECT_TRUE(absl::IsUnavailable(t1->Recv(0, 1, Soon()).status()));
}

TEST(InProcTransport, RecvWakesUpForLateMessage) {
  InProcHub hub(2);
  testutil::SpawnThreads(2, [&](int rank) {
    auto t = hub.Connect(rank);
    if (rank == 1) {
      absl::SleepFor(absl::Milliseconds(50));
      ASSERT_TRUE(t->Send(0, 9, "late", Soon()).ok());
    } else {
      auto m = t->Recv(1, 9, Soon());
      ASSERT_TRUE(m.ok()) << m.status();
      EXPECT_EQ(m->bytes, "late");
    }
  });
}

TEST(FaultyTransport, DropsAndFailsTheChosenSends) {
  InProcHub hub(2);
  auto t0 = hub.Connect(0);
  auto t1 = hub.Connect(1);
  FaultyTransport faulty(t0.get(), FaultOptions{/*drop_sends_from=*/2, /*fail_send_at=*/1, absl::ZeroDuration()});
  EXPECT_TRUE(faulty.Send(1, 1, "a", Soon()).ok());
  EXPECT_TRUE(absl::IsUnavailable(faulty.Send(1, 1, "b", Soon())));
  EXPECT_TRUE(faulty.Send(1, 1, "c", Soon()).ok());  // dropped silently
  EXPECT_EQ(faulty.sends(), 3);
  auto m = t1->Recv(0, 1, Soon());
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->bytes, "a");
  EXPECT_TRUE(absl::IsDeadlineExceeded(t1->Recv(0, 1, absl::Now() + absl::Milliseconds(50)).status()));
}

// A buffer put back comes out again with its bytes (not zero-filled), when its capacity fits.
TEST(BufferPool, ReusesFittingBuffersWithoutFilling) {
  BufferPool pool;
  std::string a(256 << 10, 'a');
  const char* a_data = a.data();
  pool.Put(std::move(a));
  ASSERT_EQ(pool.size(), 1u);
  // Too small a message for a 256 KiB buffer (over 2n + 64 KiB): a fresh, zero-filled one.
  std::string small = pool.Take(8 << 10);
  EXPECT_EQ(small, std::string(8 << 10, '\0'));
  EXPECT_EQ(pool.size(), 1u);
  // A fitting size: the same allocation, its old bytes kept, shrunk without a fill.
  std::string b = pool.Take((256 << 10) - 100);
  EXPECT_EQ(b.data(), a_data);
  EXPECT_EQ(b.size(), (256u << 10) - 100);
  EXPECT_EQ(b, std::string((256 << 10) - 100, 'a'));
  EXPECT_EQ(pool.size(), 0u);
  // Growing within the capacity fills only the new bytes.
  pool.Put(std::move(b));
  std::string c = pool.Take(256 << 10);
  EXPECT_EQ(c.data(), a_data);
  EXPECT_EQ(c.substr(0, 10), std::string(10, 'a'));
  EXPECT_EQ(c.substr((256 << 10) - 100), std::string(100, '\0'));
  // Larger than any pooled capacity: a new allocation.
  pool.Put(std::move(c));
  EXPECT_NE(pool.Take(300 << 10).data(), a_data);
}

TEST(BufferPool, PrefersTheLargestSizeAndKeepsItsBounds) {
  BufferPool pool;
  std::string shorter(100 << 10, 's');
  shorter.reserve(200 << 10);
  std::string longer(150 << 10, 'l');
  pool.Put(std::move(shorter));
  pool.Put(std::move(longer));
  EXPECT_EQ(pool.Take(120 << 10)[0], 'l');  // less to fill
  pool.Put(std::string(100, 'x'));           // under 4 KiB: not worth keeping
  EXPECT_EQ(pool.size(), 1u);
  for (size_t i = 0; i < BufferPool::kMaxBuffers + 5; ++i) pool.Put(std::string(8 << 10, static_cast<char>('a' + i)));
  EXPECT_EQ(pool.size(), BufferPool::kMaxBuffers);  // the oldest went first
  pool.Put(std::string(BufferPool::kMaxBytes + 1, 'h'));  // over the byte bound: dropped
  EXPECT_EQ(pool.size(), BufferPool::kMaxBuffers);
  // Three buffers of a third of the byte bound each: the small ones before them are dropped to
  // stay within it, and the three stay.
  for (int i = 0; i < 3; ++i) pool.Put(std::string(BufferPool::kMaxBytes / 3, 'm'));
  EXPECT_LE(pool.bytes(), BufferPool::kMaxBytes);
  EXPECT_GE(pool.bytes(), 3 * (BufferPool::kMaxBytes / 3));
  EXPECT_LT(pool.size(), BufferPool::kMaxBuffers);
  EXPECT_EQ(pool.Take(BufferPool::kMaxBytes / 3)[0], 'm');
}

TEST(Roles, ServersFirstThenWorkers) {
  auto r = AssignRoles(5, 2);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->num_workers, 3);
  EXPECT_TRUE(r->IsServer(0));
  EXPECT_TRUE(r->IsServer(1));
  EXPECT_FALSE(r->IsServer(2));
  EXPECT_TRUE(r->IsWorker(2));
  EXPECT_TRUE(r->IsWorker(4));
  EXPECT_FALSE(r->IsWorker(5));
  EXPECT_EQ(r->WorkerIndex(4), 2);
  EXPECT_EQ(r->WorkerRank(0), 2);
  EXPECT_EQ(r->ServerRank(1), 1);
  // Messages name world ranks with the role beside them.
  EXPECT_EQ(r->Describe(3), "world rank 3 (worker 1)");
  EXPECT_EQ(r->Describe(1), "world rank 1 (server 1)");
  EXPECT_EQ(r->DescribeRanks({2, 4}), "world ranks 2 (worker 0), 4 (worker 2)");
  EXPECT_EQ(r->DescribeRanks({0}), "world rank 0 (server 0)");
}

TEST(Roles, RejectsJobsWithoutWorkersOrServers) {
  auto no_workers = AssignRoles(2, 2);
  EXPECT_TRUE(absl::IsInvalidArgument(no_workers.status()));
  EXPECT_NE(std::string(no_workers.status().message()).find("needs at least 3"), std::string::npos)
      << no_workers.status();
  EXPECT_TRUE(absl::IsInvalidArgument(AssignRoles(4, 0).status()));
}

}  // namespace
}  // namespace t2d::comm
