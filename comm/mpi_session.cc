#include "comm/mpi_session.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "comm/mpi_util.h"
#include "glog/logging.h"

namespace t2d::comm {
namespace {
const char* LevelName(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE: return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED: return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED: return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE: return "MPI_THREAD_MULTIPLE";
    default: return "unknown";
  }
}
}  // namespace

absl::StatusOr<std::unique_ptr<MpiSession>> MpiSession::Create(int* argc, char*** argv, int required) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) return absl::FailedPreconditionError("MPI is already initialised in this process");
  int provided = MPI_THREAD_SINGLE;
  if (MPI_Init_thread(argc, argv, required, &provided) != MPI_SUCCESS) {
    return absl::InternalError("MPI_Init_thread failed");
  }
  if (provided < required) {
    MPI_Finalize();
    return absl::FailedPreconditionError(absl::StrCat("MPI provides thread level ", LevelName(provided), ", t2diff needs ",
                                                      LevelName(required)));
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return std::unique_ptr<MpiSession>(new MpiSession(rank, size, provided));
}

MpiSession::~MpiSession() {
  for (MPI_Comm& c : owned_) MPI_Comm_free(&c);
  MPI_Finalize();
}

absl::StatusOr<MPI_Comm> MpiSession::SplitWorkers(const RoleAssignment& roles) {
  if (roles.world_size != size_) {
    return absl::InvalidArgumentError(absl::StrCat("role assignment is for ", roles.world_size, " ranks, the job has ", size_));
  }
  const bool worker = roles.IsWorker(rank_);
  MPI_Comm comm = MPI_COMM_NULL;
  if (auto s = MpiStatus(MPI_Comm_split(MPI_COMM_WORLD, worker ? 1 : MPI_UNDEFINED, rank_, &comm), "MPI_Comm_split(workers)");
      !s.ok()) {
    return s;
  }
  if (comm != MPI_COMM_NULL) {
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    owned_.push_back(comm);
  }
  return comm;
}

void MpiSession::Abort(int code) {
  MPI_Abort(MPI_COMM_WORLD, code == 0 ? 1 : code);
  std::_Exit(code == 0 ? 1 : code);  // MPI_Abort does not return; this keeps [[noreturn]] honest
}

}  // namespace t2d::comm
