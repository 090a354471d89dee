#include "comm/mpi_communicator.h"

#include <sys/statvfs.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "comm/backoff.h"
#include "comm/mpi_util.h"
#include "common/status_macros.h"
#include "glog/logging.h"

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

// The sum over members of elements [lo, hi) of every segment's half at `off`, added in rank
// order, written to this member's segment (only this member reads that range of it). Blocked so
// that the inner loops vectorise and the sources are read before the destination is written.
template <typename T>
void SumSlice(const std::vector<char*>& segments, int self, size_t off, size_t lo, size_t hi) {
  constexpr size_t kBlock = 512;
  T acc[kBlock];
  for (size_t b = lo; b < hi; b += kBlock) {
    const size_t n = std::min(kBlock, hi - b);
    const T* first = reinterpret_cast<const T*>(segments[0] + off) + b;
    for (size_t i = 0; i < n; ++i) acc[i] = first[i];
    for (size_t r = 1; r < segments.size(); ++r) {
      const T* src = reinterpret_cast<const T*>(segments[r] + off) + b;
      for (size_t i = 0; i < n; ++i) acc[i] += src[i];
    }
    std::memcpy(reinterpret_cast<T*>(segments[static_cast<size_t>(self)] + off) + b, acc, n * sizeof(T));
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::Create(MPI_Comm comm, const Options& options) {
  MPI_Comm data = MPI_COMM_NULL, tokens = MPI_COMM_NULL;
  T2D_RETURN_IF_ERROR(MpiStatus(MPI_Comm_dup(comm, &data), "MPI_Comm_dup(communicator)"));
  T2D_RETURN_IF_ERROR(MpiStatus(MPI_Comm_dup(comm, &tokens), "MPI_Comm_dup(communicator tokens)"));
  MPI_Comm_set_errhandler(data, MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(tokens, MPI_ERRORS_RETURN);
  int rank = 0, size = 0;
  MPI_Comm_rank(data, &rank);
  MPI_Comm_size(data, &size);
  std::unique_ptr<MpiCommunicator> c(new MpiCommunicator(data, tokens, rank, size));
  if (size == 1) return c;
  MPI_Comm node = MPI_COMM_NULL;
  T2D_RETURN_IF_ERROR(MpiStatus(MPI_Comm_split_type(data, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node),
                                "MPI_Comm_split_type(node)"));
  int node_size = 0;
  MPI_Comm_size(node, &node_size);
  // The members agree on one window size (the smallest asked for; 0 if any member is on another
  // host) and on whether the shared-memory file system has room for it: OpenMPI maps the window
  // from a file there, and a file it cannot fill is a SIGBUS, not an error code. (Docker's
  // /dev/shm holds 64 MiB by default.)
  long long half = node_size == size ? static_cast<long long>(options.shared_memory_bytes / 2 / 64 * 64) : 0;
  struct statvfs fs {};
  const long long need = 4 * static_cast<long long>(size) * half;  // the window, twice over
  long long room = statvfs("/dev/shm", &fs) == 0 ? static_cast<long long>(fs.f_bavail) * static_cast<long long>(fs.f_frsize)
                                                 : 0;
  long long agree[2] = {half, room >= need ? 1 : 0};
  T2D_RETURN_IF_ERROR(
      MpiStatus(MPI_Allreduce(MPI_IN_PLACE, agree, 2, MPI_LONG_LONG, MPI_MIN, data), "MPI_Allreduce(window size)"));
  half = agree[0];
  if (half > 0 && agree[1] == 0) {
    LOG_IF(WARNING, rank == 0) << "shared-memory allreduce off: /dev/shm lacks room for " << need
                               << " bytes on some member; using MPI_Iallreduce";
    half = 0;
  }
  if (half == 0) {
    MPI_Comm_free(&node);
    return c;
  }
  MPI_Comm_set_errhandler(node, MPI_ERRORS_RETURN);
  char* base = nullptr;
  MPI_Win win = MPI_WIN_NULL;
  T2D_RETURN_IF_ERROR(MpiStatus(MPI_Win_allocate_shared(static_cast<MPI_Aint>(2 * half), 1, MPI_INFO_NULL, node,
                                                        &base, &win),
                                "MPI_Win_allocate_shared"));
  MPI_Win_set_errhandler(win, MPI_ERRORS_RETURN);
  std::vector<char*> segments(static_cast<size_t>(size), nullptr);
  for (int r = 0; r < size; ++r) {
    MPI_Aint bytes = 0;
    int disp = 0;
    T2D_RETURN_IF_ERROR(
        MpiStatus(MPI_Win_shared_query(win, r, &bytes, &disp, &segments[static_cast<size_t>(r)]), "MPI_Win_shared_query"));
  }
  T2D_RETURN_IF_ERROR(MpiStatus(MPI_Win_lock_all(MPI_MODE_NOCHECK, win), "MPI_Win_lock_all"));
  c->node_ = node;
  c->window_ = win;
  c->half_bytes_ = static_cast<size_t>(half);
  c->segments_ = std::move(segments);
  LOG_IF(INFO, rank == 0) << "allreduce through a shared-memory window: " << size << " ranks, " << 2 * half
                          << " bytes each";
  return c;
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized || !broken_.empty()) return;
  // The shared-memory window is not freed: MPI_Win_free is collective and blocks until every
  // member calls it, and members reach their destructors at different times (or never, after
  // a failure). OpenMPI unlinks the window's file once every member has mapped it, so the
  // memory goes with the process.
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

absl::Status MpiCommunicator::WindowBarrier(absl::Time deadline) {
  // The window is in the unified memory model and locked by every member: MPI_Win_sync orders
  // this member's loads and stores against the barrier.
  MPI_Win_sync(window_);
  T2D_RETURN_IF_ERROR(Collective(
      "allreduce", [](std::vector<MPI_Request>*) { return absl::OkStatus(); }, deadline));
  MPI_Win_sync(window_);
  return absl::OkStatus();
}

absl::Status MpiCommunicator::SharedAllReduce(char* data, size_t count, DataType type, absl::Time deadline) {
  const size_t elem = SizeOf(type);
  const size_t per_chunk = half_bytes_ / elem;
  for (size_t done = 0; done < count;) {
    const size_t n = std::min(count - done, per_chunk);
    const size_t off = static_cast<size_t>(half_) * half_bytes_;
    half_ ^= 1;
    std::memcpy(segments_[static_cast<size_t>(rank_)] + off, data + done * elem, n * elem);
    T2D_RETURN_IF_ERROR(WindowBarrier(deadline));
    const auto lo = [&](int r) { return n * static_cast<size_t>(r) / static_cast<size_t>(size_); };
    if (type == DataType::kFloat32) {
      SumSlice<float>(segments_, rank_, off, lo(rank_), lo(rank_ + 1));
    } else {
      SumSlice<double>(segments_, rank_, off, lo(rank_), lo(rank_ + 1));
    }
    T2D_RETURN_IF_ERROR(WindowBarrier(deadline));
    for (int r = 0; r < size_; ++r) {
      std::memcpy(data + (done + lo(r)) * elem, segments_[static_cast<size_t>(r)] + off + lo(r) * elem,
                  (lo(r + 1) - lo(r)) * elem);
    }
    // No barrier here: the next chunk writes the other half, and this half is written again
    // only after every member has passed the next chunk's barriers, i.e. finished this copy.
    done += n;
  }
  return absl::OkStatus();
}

absl::Status MpiCommunicator::AllReduceSum(void* data, size_t count, DataType type, absl::Time deadline) {
  if (window_ != MPI_WIN_NULL) {
    if (!broken_.empty()) return absl::FailedPreconditionError(absl::StrCat("communicator is broken: ", broken_));
    return SharedAllReduce(static_cast<char*>(data), count, type, deadline);
  }
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
