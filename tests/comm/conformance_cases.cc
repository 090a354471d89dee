#include "tests/comm/conformance_cases.h"

#include <gtest/gtest.h>

#include <cstring>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace t2d::testing {
namespace {

using comm::Communicator;
using comm::Transport;

absl::Time Soon() { return absl::Now() + absl::Seconds(20); }

std::string Text(int from, int to, int i) { return absl::StrCat("from ", from, " to ", to, " #", i); }

// Everybody sends one message to everybody (self included) and receives one from each.
void AllToAll(Transport& t, Communicator& c) {
  for (int p = 0; p < t.size(); ++p) {
    const std::string m = Text(t.rank(), p, 0);
    ASSERT_TRUE(t.Send(p, 7, m, Soon()).ok());
  }
  for (int p = 0; p < t.size(); ++p) {
    auto m = t.Recv(p, 7, Soon());
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->source, p);
    EXPECT_EQ(m->tag, 7);
    EXPECT_EQ(m->bytes, Text(p, t.rank(), 0));
  }
  ASSERT_TRUE(t.Flush(Soon()).ok());
  ASSERT_TRUE(c.Barrier(Soon()).ok());
}

// Same pair, same tag: send order is kept.
void FifoPerPair(Transport& t, Communicator& c) {
  const int next = (t.rank() + 1) % t.size();
  const int prev = (t.rank() + t.size() - 1) % t.size();
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(t.Send(next, 3, Text(t.rank(), next, i), Soon()).ok());
  for (int i = 0; i < 50; ++i) {
    auto m = t.Recv(prev, 3, Soon());
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->bytes, Text(prev, t.rank(), i));
  }
  ASSERT_TRUE(c.Barrier(Soon()).ok());
}

// Receiving by tag picks the matching message even when others came first.
void TagSelection(Transport& t, Communicator& c) {
  const int next = (t.rank() + 1) % t.size();
  const int prev = (t.rank() + t.size() - 1) % t.size();
  ASSERT_TRUE(t.Send(next, 10, "ten", Soon()).ok());
  ASSERT_TRUE(t.Send(next, 11, "eleven", Soon()).ok());
  auto b = t.Recv(prev, 11, Soon());
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->bytes, "eleven");
  auto a = t.Recv(prev, comm::kAnyTag, Soon());
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->bytes, "ten");
  EXPECT_EQ(a->tag, 10);
  ASSERT_TRUE(c.Barrier(Soon()).ok());
}

// Rank 0 collects one message from every other rank through kAnySource.
void AnySource(Transport& t, Communicator& c) {
  if (t.rank() != 0) {
    ASSERT_TRUE(t.Send(0, 5, std::to_string(t.rank()), Soon()).ok());
  } else {
    std::vector<int> seen(static_cast<size_t>(t.size()), 0);
    for (int i = 1; i < t.size(); ++i) {
      auto m = t.Recv(comm::kAnySource, 5, Soon());
      ASSERT_TRUE(m.ok()) << m.status();
      EXPECT_EQ(m->bytes, std::to_string(m->source));
      seen[static_cast<size_t>(m->source)]++;
    }
    for (int i = 1; i < t.size(); ++i) EXPECT_EQ(seen[static_cast<size_t>(i)], 1) << "rank " << i;
  }
  ASSERT_TRUE(c.Barrier(Soon()).ok());
}

// Empty and large (8 MiB) messages arrive intact.
void Sizes(Transport& t, Communicator& c) {
  const int next = (t.rank() + 1) % t.size();
  const int prev = (t.rank() + t.size() - 1) % t.size();
  std::string big(8u << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 131 + static_cast<size_t>(t.rank())) & 0xff);
  ASSERT_TRUE(t.Send(next, 1, "", Soon()).ok());
  ASSERT_TRUE(t.Send(next, 2, big, Soon()).ok());  // both directions queued: no deadlock
  auto e = t.Recv(prev, 1, Soon());
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_TRUE(e->bytes.empty());
  auto m = t.Recv(prev, 2, Soon());
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->bytes.size(), big.size());
  for (size_t i = 0; i < big.size(); i += 4099) {
    ASSERT_EQ(m->bytes[i], static_cast<char>((i * 131 + static_cast<size_t>(prev)) & 0xff)) << i;
  }
  ASSERT_TRUE(t.Flush(Soon()).ok());
  ASSERT_TRUE(c.Barrier(Soon()).ok());
}

// A receive from a silent peer returns DeadlineExceeded naming it, within about the deadline.
void RecvDeadline(Transport& t, Communicator& c) {
  const int peer = (t.rank() + 1) % t.size();
  const absl::Time start = absl::Now();
  auto m = t.Recv(peer, 99, start + absl::Milliseconds(200));
  const absl::Duration took = absl::Now() - start;
  EXPECT_TRUE(absl::IsDeadlineExceeded(m.status())) << m.status();
  EXPECT_NE(std::string(m.status().message()).find(absl::StrCat("rank ", peer)), std::string::npos) << m.status();
  EXPECT_GE(took, absl::Milliseconds(190));
  EXPECT_LT(took, absl::Seconds(2));
  ASSERT_TRUE(c.Barrier(Soon()).ok());
}

// Out-of-range ranks and tags are InvalidArgument, not a crash.
void BadArguments(Transport& t, Communicator& c) {
  EXPECT_TRUE(absl::IsInvalidArgument(t.Send(t.size(), 1, "x", Soon())));
  EXPECT_TRUE(absl::IsInvalidArgument(t.Send(-1, 1, "x", Soon())));
  EXPECT_TRUE(absl::IsInvalidArgument(t.Send(0, comm::kMaxTag + 1, "x", Soon())));
  EXPECT_TRUE(absl::IsInvalidArgument(t.Send(0, -5, "x", Soon())));
  EXPECT_TRUE(absl::IsInvalidArgument(t.Recv(t.size() + 3, 1, Soon()).status()));
  EXPECT_TRUE(t.Flush(Soon()).ok());
  ASSERT_TRUE(c.Barrier(Soon()).ok());
}

// Float sum: rank r contributes r + i/8 (exact in binary), so the expected sums are exact.
void AllReduceFloat(Transport&, Communicator& c) {
  const size_t n = 1000;
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(c.rank()) + static_cast<float>(i) / 8.0f;
  ASSERT_TRUE(c.AllReduceSum(absl::MakeSpan(v), Soon()).ok());
  const int p = c.size();
  for (size_t i = 0; i < n; ++i) {
    const float want = static_cast<float>(p * (p - 1) / 2) + static_cast<float>(p) * static_cast<float>(i) / 8.0f;
    ASSERT_EQ(v[i], want) << i;
  }
}

// Double sum over a large buffer, identical on every rank (checked through a second allreduce).
void AllReduceDoubleLarge(Transport&, Communicator& c) {
  const size_t n = 1 << 20;
  std::vector<double> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<double>((i % 97) * (c.rank() + 1));
  ASSERT_TRUE(c.AllReduceSum(absl::MakeSpan(v), Soon()).ok());
  const double ranks = c.size() * (c.size() + 1) / 2.0;
  for (size_t i = 0; i < n; i += 997) ASSERT_EQ(v[i], static_cast<double>(i % 97) * ranks) << i;
  double zero = 0;
  ASSERT_TRUE(c.AllReduceSum(absl::MakeSpan(&zero, 0), Soon()).ok());  // count 0 is fine
}

void BroadcastEveryRoot(Transport&, Communicator& c) {
  for (int root = 0; root < c.size(); ++root) {
    std::vector<int32_t> v(333, c.rank() == root ? 1000 + root : -1);
    ASSERT_TRUE(c.Broadcast(v.data(), v.size() * sizeof(int32_t), root, Soon()).ok());
    for (int32_t x : v) ASSERT_EQ(x, 1000 + root);
  }
  EXPECT_TRUE(absl::IsInvalidArgument(c.Broadcast(nullptr, 0, c.size(), Soon())));
}

// After a barrier, every message sent before it by any rank has been sent.
void BarrierOrders(Transport& t, Communicator& c) {
  if (t.rank() != 0) {
    ASSERT_TRUE(t.Send(0, 4, "before", Soon()).ok());
  }
  ASSERT_TRUE(c.Barrier(Soon()).ok());
  if (t.rank() == 0) {
    for (int i = 1; i < t.size(); ++i) {
      auto m = t.Recv(comm::kAnySource, 4, absl::Now() + absl::Seconds(5));
      ASSERT_TRUE(m.ok()) << m.status();
    }
  }
  ASSERT_TRUE(c.Barrier(Soon()).ok());
}

}  // namespace

const std::vector<NamedCase>& TransportCases() {
  static const auto* cases = new std::vector<NamedCase>{
      {"AllToAll", AllToAll},   {"FifoPerPair", FifoPerPair},   {"TagSelection", TagSelection},
      {"AnySource", AnySource}, {"Sizes", Sizes},               {"RecvDeadline", RecvDeadline},
      {"BadArguments", BadArguments}};
  return *cases;
}

const std::vector<NamedCase>& CommunicatorCases() {
  static const auto* cases = new std::vector<NamedCase>{{"AllReduceFloat", AllReduceFloat},
                                                        {"AllReduceDoubleLarge", AllReduceDoubleLarge},
                                                        {"BroadcastEveryRoot", BroadcastEveryRoot},
                                                        {"BarrierOrders", BarrierOrders}};
  return *cases;
}

}  // namespace t2d::testing
