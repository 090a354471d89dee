#pragma once
// Transport: point-to-point delivery of tagged byte messages between the ranks of one job.
//
// This is the seam between the parameter-server protocol (ps/) and the wire. Implementations:
// MpiTransport (one process per rank, comm/mpi_transport.h), InProcTransport (ranks are threads
// of one process, for tests, comm/inproc_transport.h) and FaultyTransport
// (comm/faulty_transport.h, a decorator that drops, delays or fails messages, for fault tests).
//
// Semantics shared by every implementation (the shared cases in tests/comm/conformance_cases.cc
// check them over threads, tests/comm/comm_test.cc, and over MPI, tests/mpi/comm_mpi_test.cc):
//   * Messages between one (sender, receiver) pair with the same tag arrive in send order.
//   * Recv(src, tag) returns the oldest queued message matching src (or any source with
//     kAnySource) and tag (or any tag with kAnyTag).
//   * Every blocking call takes an absolute deadline and never waits past it: it returns
//     DeadlineExceeded naming the peer (or "any rank") it was waiting for. Unavailable means the
//     peer is known to be gone. InvalidArgument: bad rank or tag.
//   * Tags are in [0, kMaxTag]; rank numbers are 0..size()-1.
//
// Thread-safety: a Transport object is used by one thread at a time (the server loop, or the
// worker's step thread); different Transport objects of an in-process group may be used from
// different threads concurrently.

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace t2d::comm {

inline constexpr int kAnySource = -1;
inline constexpr int kAnyTag = -1;
// MPI guarantees at least 32767 for MPI_TAG_UB; staying below keeps every implementation equal.
inline constexpr int kMaxTag = 32767;

struct Message {
  int source = -1;
  int tag = -1;
  std::string bytes;
};

class Transport {
 public:
  virtual ~Transport() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Queues `bytes` for rank `dst` and returns without waiting for the receiver (so two ranks
  // that send each other large messages before receiving cannot deadlock). The transport owns
  // the bytes until they are delivered; queued sends make progress during every later call.
  // A queued send not taken by `deadline` is reported by a later Send, Recv or Flush
  // (DeadlineExceeded naming dst).
  // Errors: InvalidArgument (dst or tag out of range), Unavailable (dst gone), an earlier send's
  // DeadlineExceeded.
  virtual absl::Status Send(int dst, int tag, std::string bytes, absl::Time deadline) = 0;

  // Waits until every queued send has been taken by its receiver. Call before shutting down
  // (messages still queued at MPI_Finalize are lost). Errors: DeadlineExceeded naming the ranks
  // that did not take their messages.
  virtual absl::Status Flush(absl::Time deadline) = 0;

  // Receives the oldest message from `src` (or kAnySource) with `tag` (or kAnyTag).
  // Errors: DeadlineExceeded naming src, Unavailable (src gone), InvalidArgument.
  virtual absl::StatusOr<Message> Recv(int src, int tag, absl::Time deadline) = 0;

  // Buffer reuse (optional; the defaults keep nothing). NewBuffer returns a string of size()
  // `bytes` to build an outgoing message in, with unspecified contents (the caller overwrites
  // every byte): a transport may hand out the buffer of a completed send or of a received
  // message given back with Recycle, which spares the allocation and the zero fill of a fresh
  // one (comm/buffer_pool.h). Recycle takes a received message's buffer once the caller is done
  // with it.
  virtual std::string NewBuffer(size_t bytes) { return std::string(bytes, '\0'); }
  virtual void Recycle(std::string /*buffer*/) {}
};

// Range checks shared by the implementations; `what` is "send" or "recv".
absl::Status CheckPeer(const Transport& t, int peer, bool allow_any, const char* what);
absl::Status CheckTag(int tag, bool allow_any, const char* what);
// "rank 3" / "any rank", for error messages.
std::string PeerName(int peer);

}  // namespace t2d::comm
