#pragma once
// In-process Transport: the ranks of a job are threads of one process sharing an InProcHub
// (one mailbox per rank). It is the workhorse of the threads-as-ranks tests (tests/testutil/
// spawn_ranks.h): the same server and client code that runs over MPI runs here without mpirun.
//
// Ownership: the hub is shared by its transports and must outlive them.
// Thread-safety: the hub is thread-safe; each InProcTransport is used by one thread at a time
// (the Transport contract), different ranks' transports concurrently.
// Fault injection: MarkGone(rank) makes sends to that rank and receives from it (once nothing
// of it is queued) fail with Unavailable, as a crashed process would.

#include <deque>
#include <memory>
#include <vector>

#include <condition_variable>
#include <mutex>
#include "comm/transport.h"

namespace t2d::comm {

class InProcHub {
 public:
  explicit InProcHub(int size);
  InProcHub(const InProcHub&) = delete;
  InProcHub& operator=(const InProcHub&) = delete;

  int size() const { return static_cast<int>(mailboxes_.size()); }
  // A transport for `rank` (REQUIRES 0 <= rank < size()); the hub must outlive it.
  std::unique_ptr<Transport> Connect(int rank);
  void MarkGone(int rank);
  bool IsGone(int rank) const;

 private:
  friend class InProcTransport;
  struct Mailbox {
    std::deque<Message> queue;
  };
  mutable std::mutex mu_;
  std::condition_variable arrived_;
  // State below is protected by mu_.
  std::vector<Mailbox> mailboxes_;
  std::vector<bool> gone_;
};

class InProcTransport : public Transport {
 public:
  InProcTransport(InProcHub* hub, int rank) : hub_(hub), rank_(rank) {}  // hub: not owned

  int rank() const override { return rank_; }
  int size() const override { return hub_->size(); }
  absl::Status Send(int dst, int tag, std::string bytes, absl::Time deadline) override;
  absl::StatusOr<Message> Recv(int src, int tag, absl::Time deadline) override;
  // Sends are delivered to the mailbox at once; nothing is ever queued here.
  absl::Status Flush(absl::Time) override { return absl::OkStatus(); }

 private:
  InProcHub* const hub_;
  const int rank_;
};

}  // namespace t2d::comm
