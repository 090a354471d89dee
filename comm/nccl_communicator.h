#pragma once
// NcclCommunicator: the Communicator on GPUs through NCCL (built only with -DT2D_WITH_NCCL=ON).
//
// Buffers are host memory (Debian's libtorch is CPU-only): each call copies the data to a
// device buffer owned by this object, runs the NCCL collective on the object's own CUDA stream,
// and copies the result back. The NCCL communicator is created from an ncclUniqueId that rank 0
// broadcasts over a bootstrap Communicator (MPI), in non-blocking mode, so that creation and
// every collective are polled against the deadline; on expiry the NCCL communicator is aborted
// (ncclCommAbort) and this object is broken. NCCL cannot tell which rank did not join, so the
// error says that instead of naming ranks.
//
// Thread-safety: one thread at a time.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "comm/communicator.h"

namespace t2d::comm {

// Number of visible CUDA devices; an error when the CUDA runtime has no usable driver/device.
absl::StatusOr<int> CudaDeviceCount();

// Collective over `bootstrap` (not owned; used only during creation). `device`: the CUDA
// device of this rank. Errors: Unavailable (no usable GPU), Internal (CUDA/NCCL failures),
// DeadlineExceeded.
absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(Communicator* bootstrap, int device,
                                                                     absl::Time deadline);

}  // namespace t2d::comm
