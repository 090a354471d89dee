#pragma once
// In-process Communicator: the members of an InProcGroup are threads of one process. Used by
// the threads-as-ranks tests and as a second, independent implementation in the conformance
// suite. AllReduceSum adds the members' buffers in rank order (0, 1, 2, ...), so results are
// bit-for-bit reproducible.
//
// A collective completes when all members have entered it. If the deadline of any member
// passes first, that member returns DeadlineExceeded naming the ranks that have not entered,
// the group is marked broken, and every member's current and later calls fail
// (FailedPrecondition) instead of waiting.
//
// Ownership: the group must outlive its members. Thread-safety: the group is thread-safe; each
// member is used by one thread at a time.

#include <memory>
#include <string>
#include <vector>

#include <condition_variable>
#include <mutex>
#include "comm/communicator.h"

namespace t2d::comm {

class InProcGroup {
 public:
  explicit InProcGroup(int size);
  InProcGroup(const InProcGroup&) = delete;
  InProcGroup& operator=(const InProcGroup&) = delete;

  int size() const { return size_; }
  // The member with `rank` (REQUIRES 0 <= rank < size()); the group must outlive it.
  std::unique_ptr<Communicator> Member(int rank);

 private:
  friend class InProcCommunicator;
  enum class Op { kAllReduce, kBroadcast, kBarrier };
  struct Call {
    Op op;
    void* data;
    size_t count;  // elements for allreduce, bytes for broadcast
    DataType type;
    int root;
  };
  // Runs one collective for `rank`; the shared protocol of every operation.
  absl::Status Run(int rank, uint64_t seq, const Call& call, absl::Time deadline);
  void Compute();  // REQUIRES mu_ held, all members arrived

  const int size_;
  std::mutex mu_;
  std::condition_variable changed_;
  // State below is protected by mu_.
  uint64_t seq_ = 0;          // the collective in progress
  bool scattering_ = false;   // all arrived; members copy the result out
  int arrived_ = 0;
  int departed_ = 0;
  bool broken_ = false;
  std::string broken_reason_;
  std::vector<const Call*> calls_;  // per rank, null until it arrives
  std::vector<char> result_;
  absl::Status call_status_;  // a mismatch found by Compute()
};

}  // namespace t2d::comm
