#pragma once
// MpiTransport: the Transport over an MPI communicator (one process per rank).
//
// It works on a private duplicate of the communicator it is given, so its tags never match
// anyone else's traffic. Nothing blocks: Send starts an MPI_Isend on bytes the transport now
// owns and returns; queued sends are tested (MPI_Test) during every later call and by Flush.
// Recv polls MPI_Improbe and then receives the matched message with MPI_Imrecv, each against
// the caller's deadline (see comm/backoff.h for the polling cadence). A send that misses its
// deadline is cancelled and reported. MPI cannot tell a dead peer from a slow one, so a dead
// peer shows as DeadlineExceeded naming it; mpirun itself ends the job when a process dies.
//
// Buffers of completed sends go to a pool that NewBuffer and Recv draw from.
// Messages are limited to INT_MAX bytes (MPI's count type).
// Thread-safety: one thread at a time (MPI_THREAD_FUNNELED is enough). Must be destroyed
// before MPI_Finalize (it frees its communicator); call Flush first.

#include <mpi.h>

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/buffer_pool.h"
#include "comm/transport.h"

namespace t2d::comm {

class MpiTransport : public Transport {
 public:
  // Collective over `comm` (every rank must call it). `comm` is not owned.
  static absl::StatusOr<std::unique_ptr<MpiTransport>> Create(MPI_Comm comm);
  ~MpiTransport() override;
  MpiTransport(const MpiTransport&) = delete;
  MpiTransport& operator=(const MpiTransport&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  absl::Status Send(int dst, int tag, std::string bytes, absl::Time deadline) override;
  absl::StatusOr<Message> Recv(int src, int tag, absl::Time deadline) override;
  absl::Status Flush(absl::Time deadline) override;
  // From the pool of completed sends' and recycled buffers (comm/buffer_pool.h); Recv takes its
  // buffers from the same pool.
  std::string NewBuffer(size_t bytes) override { return pool_.Take(bytes); }
  void Recycle(std::string buffer) override { pool_.Put(std::move(buffer)); }

 private:
  struct PendingSend {
    MPI_Request request = MPI_REQUEST_NULL;
    std::string bytes;  // owned until MPI is done with it; the object itself never moves
    int dst = 0;
    int tag = 0;
    absl::Time deadline;
  };
  MpiTransport(MPI_Comm comm, int rank, int size) : comm_(comm), rank_(rank), size_(size) {}
  // Tests the queued sends once, dropping the completed ones; DeadlineExceeded for the first
  // one past its deadline (which is cancelled).
  absl::Status Progress();

  MPI_Comm comm_;
  const int rank_;
  const int size_;
  std::vector<std::unique_ptr<PendingSend>> pending_;
  // Sends past their deadline, already reported. MPI cannot always cancel a send, so their
  // buffers stay alive until MPI is done with them (or are leaked at destruction).
  std::vector<std::unique_ptr<PendingSend>> abandoned_;
  BufferPool pool_;
};

}  // namespace t2d::comm
