#include "comm/communicator_factory.h"

#include "absl/strings/str_cat.h"
#include "comm/mpi_communicator.h"
#include "common/status_macros.h"
#include "glog/logging.h"
#if T2D_WITH_NCCL
#include "comm/nccl_communicator.h"
#endif

namespace t2d::comm {

bool HaveNccl() { return T2D_WITH_NCCL != 0; }

absl::StatusOr<std::unique_ptr<Communicator>> MakeCommunicator(const std::string& backend, MPI_Comm comm,
                                                               absl::Time deadline) {
  if (backend != "mpi" && backend != "nccl") {
    return absl::InvalidArgumentError(
        absl::StrCat("cluster.allreduce_backend: unknown backend \"", backend, "\" (expected \"mpi\" or \"nccl\")"));
  }
  T2D_ASSIGN_OR_RETURN(std::unique_ptr<MpiCommunicator> mpi, MpiCommunicator::Create(comm));
  if (backend == "mpi") return std::unique_ptr<Communicator>(std::move(mpi));
#if T2D_WITH_NCCL
  // Every member must take the same branch, so agree on GPU availability first.
  auto devices = CudaDeviceCount();
  double usable = devices.ok() ? 1.0 : 0.0;
  T2D_RETURN_IF_ERROR(mpi->AllReduceSum(absl::MakeSpan(&usable, 1), deadline));
  if (usable == mpi->size()) {
    return CreateNcclCommunicator(mpi.get(), mpi->rank() % *devices, deadline);
  }
  LOG(WARNING) << "allreduce_backend=nccl but not every worker has a usable GPU ("
               << (devices.ok() ? std::string("this rank has one") : devices.status().ToString())
               << "); using MPI";
#else
  (void)deadline;
  LOG(WARNING) << "allreduce_backend=nccl but this build has no NCCL (configure with -DT2D_WITH_NCCL=ON); using MPI";
#endif
  return std::unique_ptr<Communicator>(std::move(mpi));
}

}  // namespace t2d::comm
