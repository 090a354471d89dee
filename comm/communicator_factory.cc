#include "comm/communicator_factory.h"

#include "absl/strings/str_cat.h"
#include "comm/mpi_communicator.h"
#include "comm/mpi_util.h"
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
  // One GPU per rank: device = rank among the ranks of this node. NCCL refuses two ranks on one
  // device, so a node with more ranks than GPUs uses MPI. Every member must take the same
  // branch, so the members agree first (and again after creating the NCCL communicator).
  MPI_Comm node = MPI_COMM_NULL;
  T2D_RETURN_IF_ERROR(MpiStatus(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node),
                                "MPI_Comm_split_type(node)"));
  int local_rank = 0, local_size = 1;
  MPI_Comm_rank(node, &local_rank);
  MPI_Comm_size(node, &local_size);
  MPI_Comm_free(&node);
  auto devices = CudaDeviceCount();
  std::string why;
  if (!devices.ok()) {
    why = std::string(devices.status().message());
  } else if (*devices < local_size) {
    why = absl::StrCat(local_size, " ranks share ", *devices, " GPU(s) on this node");
  }
  double usable = why.empty() ? 1.0 : 0.0;
  T2D_RETURN_IF_ERROR(mpi->AllReduceSum(absl::MakeSpan(&usable, 1), deadline));
  if (usable == mpi->size()) {
    auto nccl = CreateNcclCommunicator(mpi.get(), local_rank, deadline);
    double created = nccl.ok() ? 1.0 : 0.0;
    T2D_RETURN_IF_ERROR(mpi->AllReduceSum(absl::MakeSpan(&created, 1), deadline));
    if (created == mpi->size()) return nccl;
    why = nccl.ok() ? std::string("another rank could not create its NCCL communicator")
                    : std::string(nccl.status().message());
  } else if (why.empty()) {
    why = "another worker has no usable GPU";
  }
  LOG(WARNING) << "allreduce_backend=nccl unavailable (" << why << "); using MPI";
#else
  (void)deadline;
  LOG(WARNING) << "allreduce_backend=nccl but this build has no NCCL (configure with -DT2D_WITH_NCCL=ON); using MPI";
#endif
  return std::unique_ptr<Communicator>(std::move(mpi));
}

}  // namespace t2d::comm
