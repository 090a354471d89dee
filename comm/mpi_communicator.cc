#include "comm/mpi_communicator.h"

#include <climits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "comm/backoff.h"
#include "comm/mpi_util.h"
#include "common/status_macros.h"

namespace t2d::comm {
namespace {

// The MPI_COMM_WORLD ranks of `ranks` of `comm`: messages name the job's ranks, which a
// communicator over a subset (the workers) numbers differently.
std::vector<int> WorldRanks(MPI_Comm comm, const std::vector<int>& ranks) {
  std::vector<int> world(ranks.size(), MPI_UNDEFINED);
  MPI_Group group = MPI_GROUP_NULL, world_group = MPI_GROUP_NULL;
  if (MPI_Comm_group(comm, &group) == MPI_SUCCESS && MPI_Comm_group(MPI_COMM_WORLD, &world_group) == MPI_SUCCESS) {
    MPI_Group_translate_ranks(group, static_cast<int>(ranks.size()), ranks.data(), world_group, world.data());
  }
  if (group != MPI_GROUP_NULL) MPI_Group_free(&group);
  if (world_group != MPI_GROUP_NULL) MPI_Group_free(&world_group);
  return world;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::Create(MPI_Comm comm) {
  MPI_Comm data = MPI_COMM_NULL, tokens = MPI_COMM_NULL;
  T2D_RETURN_IF_ERROR(MpiStatus(MPI_Comm_dup(comm, &data), "MPI_Comm_dup(communicator)"));
  T2D_RETURN_IF_ERROR(MpiStatus(MPI_Comm_dup(comm, &tokens), "MPI_Comm_dup(communicator tokens)"));
  MPI_Comm_set_errhandler(data, MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(tokens, MPI_ERRORS_RETURN);
  int rank = 0, size = 0;
  MPI_Comm_rank(data, &rank);
  MPI_Comm_size(data, &size);
  return std::unique_ptr<MpiCommunicator>(new MpiCommunicator(data, tokens, rank, size));
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized || !broken_.empty()) return;
  MPI_Comm_free(&data_);
  MPI_Comm_free(&tokens_);
}

template <typename Start>
absl::Status MpiCommunicator::Collective(const char* name, Start start, absl::Time deadline) {
  if (!broken_.empty()) return absl::FailedPreconditionError(absl::StrCat("communicator is broken: ", broken_));
  const uint64_t seq = seq_++;
  const int token_tag = static_cast<int>(seq % 30000);
  // Arrival tokens: one tiny message to and from every peer.
  std::vector<MPI_Request> token_requests;
  // Heap-held so that, after a deadline, late peers' tokens land in memory that stays alive.
  auto buffers = std::make_unique<TokenBuffers>();
  buffers->seq = seq;
  buffers->in.assign(static_cast<size_t>(size_), 0);
  std::vector<uint64_t>& token_in = buffers->in;
  std::vector<int> peers;
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) continue;
    peers.push_back(p);
    MPI_Request r = MPI_REQUEST_NULL;
    T2D_RETURN_IF_ERROR(MpiStatus(MPI_Irecv(&token_in[static_cast<size_t>(p)], 1, MPI_UINT64_T, p, token_tag, tokens_, &r),
                                  "MPI_Irecv(token)"));
    token_requests.push_back(r);
  }
  for (int p : peers) {
    MPI_Request r = MPI_REQUEST_NULL;
    T2D_RETURN_IF_ERROR(MpiStatus(MPI_Isend(&buffers->seq, 1, MPI_UINT64_T, p, token_tag, tokens_, &r), "MPI_Isend(token)"));
    token_requests.push_back(r);
  }
  std::vector<MPI_Request> op_requests;
  T2D_RETURN_IF_ERROR(start(&op_requests));
  // Poll the collective and the tokens together.
  Backoff backoff;
  while (true) {
    int ops_done = 0, tokens_done = 0;
    T2D_RETURN_IF_ERROR(MpiStatus(
        MPI_Testall(static_cast<int>(op_requests.size()), op_requests.data(), &ops_done, MPI_STATUSES_IGNORE), name));
    T2D_RETURN_IF_ERROR(MpiStatus(MPI_Testall(static_cast<int>(token_requests.size()), token_requests.data(),
                                              &tokens_done, MPI_STATUSES_IGNORE),
                                  "tokens"));
    if (ops_done && tokens_done) break;
    if (absl::Now() >= deadline) {
      std::vector<int> missing;
      for (size_t i = 0; i < peers.size(); ++i) {
        int done = 0;
        MPI_Test(&token_requests[i], &done, MPI_STATUS_IGNORE);
        if (!done) missing.push_back(peers[i]);
      }
      broken_ = absl::StrCat(name, " ", seq, " timed out");
      abandoned_.push_back(std::move(buffers));
      return absl::DeadlineExceededError(absl::StrCat(
          name, " (collective ", seq, ", rank ", rank_, " of ", size_, ") did not complete before the deadline; ",
          missing.empty() ? std::string("every rank had joined (slow network?)")
                          : absl::StrCat("rank(s) ", absl::StrJoin(missing, ", "), " did not join (world rank(s) ",
                                         absl::StrJoin(WorldRanks(data_, missing), ", "), ")")));
    }
    backoff.Pause();
  }
  for (int p : peers) {
    if (token_in[static_cast<size_t>(p)] != seq) {
      broken_ = "collective sequence mismatch";
      return absl::InternalError(absl::StrCat(name, ": rank ", p, " is at collective ", token_in[static_cast<size_t>(p)],
                                              ", this rank at ", seq, " (members called different collectives)"));
    }
  }
  return absl::OkStatus();
}

absl::Status MpiCommunicator::AllReduceSum(void* data, size_t count, DataType type, absl::Time deadline) {
  const MPI_Datatype mpi_type = type == DataType::kFloat32 ? MPI_FLOAT : MPI_DOUBLE;
  const size_t elem = SizeOf(type);
  return Collective(
      "allreduce",
      [&](std::vector<MPI_Request>* requests) -> absl::Status {
        char* p = static_cast<char*>(data);
        for (size_t done = 0; done < count;) {
          const size_t n = std::min(count - done, static_cast<size_t>(INT_MAX));
          MPI_Request r = MPI_REQUEST_NULL;
          T2D_RETURN_IF_ERROR(MpiStatus(
              MPI_Iallreduce(MPI_IN_PLACE, p + done * elem, static_cast<int>(n), mpi_type, MPI_SUM, data_, &r),
              "MPI_Iallreduce"));
          requests->push_back(r);
          done += n;
        }
        return absl::OkStatus();
      },
      deadline);
}

absl::Status MpiCommunicator::Broadcast(void* data, size_t bytes, int root, absl::Time deadline) {
  if (root < 0 || root >= size_) {
    return absl::InvalidArgumentError(absl::StrCat("broadcast root ", root, " is outside 0..", size_ - 1));
  }
  return Collective(
      "broadcast",
      [&](std::vector<MPI_Request>* requests) -> absl::Status {
        char* p = static_cast<char*>(data);
        for (size_t done = 0; done < bytes;) {
          const size_t n = std::min(bytes - done, static_cast<size_t>(INT_MAX));
          MPI_Request r = MPI_REQUEST_NULL;
          T2D_RETURN_IF_ERROR(MpiStatus(MPI_Ibcast(p + done, static_cast<int>(n), MPI_BYTE, root, data_, &r), "MPI_Ibcast"));
          requests->push_back(r);
          done += n;
        }
        return absl::OkStatus();
      },
      deadline);
}

absl::Status MpiCommunicator::Barrier(absl::Time deadline) {
  return Collective(
      "barrier",
      [&](std::vector<MPI_Request>* requests) -> absl::Status {
        MPI_Request r = MPI_REQUEST_NULL;
        T2D_RETURN_IF_ERROR(MpiStatus(MPI_Ibarrier(data_, &r), "MPI_Ibarrier"));
        requests->push_back(r);
        return absl::OkStatus();
      },
      deadline);
}

}  // namespace t2d::comm
