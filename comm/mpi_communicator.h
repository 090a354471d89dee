#pragma once
// MpiCommunicator: the Communicator over an MPI communicator (CPU; the default backend).
//
// Collectives are the non-blocking MPI ones (MPI_Iallreduce / MPI_Ibcast / MPI_Ibarrier) polled
// against the deadline. To name the ranks that did not join when a deadline passes, every
// collective also exchanges a small "arrived at collective n" token with each peer on a second
// private communicator: the tokens that have not come in name the missing ranks. (That costs
// 2 (size-1) tiny messages per collective; negligible next to the dense gradients.)
// After a deadline the MPI requests are left outstanding (MPI forbids cancelling collectives),
// the communicator is broken, and its communicators are not freed; the job is expected to end.
//
// Counts above INT_MAX are split into several collectives.
//
// When every member runs on one host, AllReduceSum goes through an MPI shared-memory window
// (MPI_Win_allocate_shared) instead: each member copies a chunk into its own segment, sums its
// 1/size slice of every segment (in rank order: deterministic), and copies the others' sums
// back; two arrival-token barriers per chunk, and no message copies. OpenMPI's shared-memory
// transport without single-copy (btl_vader_single_copy_mechanism=none, which containers that
// forbid process_vm_readv need) moved a 10 MB allreduce at a fifth of the memory's speed;
// bench_ps prints both paths in one run. The members agree at Create on the window's size and on
// whether /dev/shm has room for it (else every member keeps MPI_Iallreduce). The window lives
// until the process ends (freeing it is a blocking collective that a late or failed member
// would hang).
// Thread-safety: one thread at a time. Must be destroyed before MPI_Finalize.

#include <mpi.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/communicator.h"

namespace t2d::comm {

class MpiCommunicator : public Communicator {
 public:
  struct Options {
    // Bytes of each member's shared-memory segment (two halves that alternate between chunks,
    // so a chunk needs no barrier after its copy-out); 0 always uses MPI_Iallreduce.
    size_t shared_memory_bytes = size_t{2} << 20;
  };
  // Collective over `comm` (not owned; duplicated).
  static absl::StatusOr<std::unique_ptr<MpiCommunicator>> Create(MPI_Comm comm) { return Create(comm, Options()); }
  static absl::StatusOr<std::unique_ptr<MpiCommunicator>> Create(MPI_Comm comm, const Options& options);
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }
  using Communicator::AllReduceSum;
  absl::Status AllReduceSum(void* data, size_t count, DataType type, absl::Time deadline) override;
  absl::Status Broadcast(void* data, size_t bytes, int root, absl::Time deadline) override;
  absl::Status Barrier(absl::Time deadline) override;
  // Whether AllReduceSum goes through the shared-memory window.
  bool uses_shared_memory() const { return window_ != MPI_WIN_NULL; }

 private:
  MpiCommunicator(MPI_Comm data, MPI_Comm tokens, int rank, int size)
      : data_(data), tokens_(tokens), rank_(rank), size_(size) {}
  // Posts the arrival tokens, starts the collective with `start`, and waits for both.
  template <typename Start>
  absl::Status Collective(const char* name, Start start, absl::Time deadline);
  // The arrival tokens alone (a barrier that names missing ranks), fenced for the window.
  absl::Status WindowBarrier(absl::Time deadline);
  absl::Status SharedAllReduce(char* data, size_t count, DataType type, absl::Time deadline);

  struct TokenBuffers {
    uint64_t seq = 0;
    std::vector<uint64_t> in;
  };

  MPI_Comm data_;
  MPI_Comm tokens_;
  const int rank_;
  const int size_;
  uint64_t seq_ = 0;
  std::string broken_;  // non-empty: why the communicator is unusable
  std::vector<std::unique_ptr<TokenBuffers>> abandoned_;  // buffers of timed-out collectives
  // The shared-memory window (MPI_WIN_NULL: none) over node_ (= the members, same ranks).
  MPI_Comm node_ = MPI_COMM_NULL;
  MPI_Win window_ = MPI_WIN_NULL;
  size_t half_bytes_ = 0;          // bytes of one half of a segment
  std::vector<char*> segments_;    // every member's segment, mapped here
  int half_ = 0;                   // the half the next chunk uses
};

}  // namespace t2d::comm
