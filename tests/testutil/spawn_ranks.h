#pragma once
// Threads as ranks (the idea of Gloo's BaseTest::spawn): runs `fn(rank)` on `n` threads and
// joins them. gtest assertions are thread-safe, so a failing EXPECT on any rank fails the test;
// every blocking call in comm/ and ps/ has a deadline, so a rank that returns early (ASSERT)
// makes its peers fail instead of hang.

#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "comm/inproc_communicator.h"
#include "comm/inproc_transport.h"

namespace t2d::testutil {

inline void SpawnThreads(int n, const std::function<void(int)>& fn) {
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) threads.emplace_back(fn, r);
  for (auto& t : threads) t.join();
}

// N ranks that share one in-process transport hub and one communicator group.
inline void SpawnRanks(int n, const std::function<void(int, comm::Transport&, comm::Communicator&)>& fn) {
  comm::InProcHub hub(n);
  comm::InProcGroup group(n);
  SpawnThreads(n, [&](int rank) {
    auto transport = hub.Connect(rank);
    auto communicator = group.Member(rank);
    fn(rank, *transport, *communicator);
  });
}

}  // namespace t2d::testutil
