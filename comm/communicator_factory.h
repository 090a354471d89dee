#pragma once
// MakeCommunicator: the one place that chooses a Communicator implementation for the dense
// allreduce of the workers (the only file with an #if on the NCCL build option).
//
//   backend "mpi":  MpiCommunicator over `comm`.
//   backend "nccl": NcclCommunicator when this build has NCCL and every member has its own
//                   GPU (device = the member's rank among the members on its node), bootstrapped
//                   over MPI; otherwise (no NCCL in the build, no GPU, more ranks than GPUs on a
//                   node, NCCL creation failed anywhere) a warning and the MPI communicator, so a
//                   config written for GPU machines still runs on CPU-only ones.
// Errors: InvalidArgument for any other backend name; MPI/NCCL creation errors.
// Collective over `comm` (every member must call it with the same backend).

#include <mpi.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "comm/communicator.h"

namespace t2d::comm {

// True when this binary was built with the NCCL backend.
bool HaveNccl();

absl::StatusOr<std::unique_ptr<Communicator>> MakeCommunicator(const std::string& backend, MPI_Comm comm,
                                                               absl::Time deadline);

}  // namespace t2d::comm
