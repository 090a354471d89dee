#pragma once
// MpiSession: MPI_Init_thread in the constructor, MPI_Finalize in the destructor (RAII, the
// idea of Gloo's MPIScope). Created once, in main() (the composition root); everything that
// uses MPI gets communicators from it and must be destroyed before it.
//
// Thread level: Create() asks for `required` and fails (FailedPrecondition) if the library
// provides less. FUNNELED is enough for t2diff: each process calls MPI from one thread.
// World errors are set to MPI_ERRORS_RETURN so MPI failures become Status values.
//
// Failure policy: a rank that hits an unrecoverable error calls Abort(), which ends the whole
// job (MPI_Abort on MPI_COMM_WORLD) so that no other rank is left waiting.
//
// Thread-safety: not thread-safe; used by the main thread.

#include <mpi.h>

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/roles.h"

namespace t2d::comm {

class MpiSession {
 public:
  // Errors: FailedPrecondition (MPI already initialised in this process, or thread level
  // below `required`), Internal (MPI_Init_thread failed).
  static absl::StatusOr<std::unique_ptr<MpiSession>> Create(int* argc, char*** argv,
                                                            int required = MPI_THREAD_FUNNELED);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int thread_level() const { return provided_; }
  MPI_Comm world() const { return MPI_COMM_WORLD; }

  // Collective over the world: every rank must call it. Returns the communicator of the worker
  // ranks (ordered by worker index) on workers and MPI_COMM_NULL on servers. The session owns
  // the communicator and frees it before MPI_Finalize.
  absl::StatusOr<MPI_Comm> SplitWorkers(const RoleAssignment& roles);

  // Ends the whole job with `code` (MPI_Abort). Safe to call from any rank at any time.
  [[noreturn]] static void Abort(int code);

 private:
  MpiSession(int rank, int size, int provided) : rank_(rank), size_(size), provided_(provided) {}
  const int rank_;
  const int size_;
  const int provided_;
  std::vector<MPI_Comm> owned_;
};

}  // namespace t2d::comm
