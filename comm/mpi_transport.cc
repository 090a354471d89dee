#include "comm/mpi_transport.h"

#include <climits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "comm/backoff.h"
#include "comm/mpi_util.h"
#include "common/status_macros.h"
#include "glog/logging.h"

namespace t2d::comm {

absl::StatusOr<std::unique_ptr<MpiTransport>> MpiTransport::Create(MPI_Comm comm) {
  MPI_Comm dup = MPI_COMM_NULL;
  T2D_RETURN_IF_ERROR(MpiStatus(MPI_Comm_dup(comm, &dup), "MPI_Comm_dup(transport)"));
  MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
  int rank = 0, size = 0;
  MPI_Comm_rank(dup, &rank);
  MPI_Comm_size(dup, &size);
  return std::unique_ptr<MpiTransport>(new MpiTransport(dup, rank, size));
}

MpiTransport::~MpiTransport() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  (void)Progress();
  if (!pending_.empty()) {
    LOG(WARNING) << pending_.size() << " message(s) still queued when the transport was destroyed (not flushed)";
  }
  // MPI may still read these buffers: cancel where possible and leak the rest on purpose (the
  // process is ending, and a freed buffer could be read by a late transfer).
  for (auto* list : {&pending_, &abandoned_}) {
    for (auto& p : *list) {
      int done = 0;
      MPI_Test(&p->request, &done, MPI_STATUS_IGNORE);
      if (done) continue;
      MPI_Cancel(&p->request);
      MPI_Request_free(&p->request);
      p.release();  // NOLINT: intentional leak, see above
    }
  }
  MPI_Comm_free(&comm_);
}

absl::Status MpiTransport::Progress() {
  for (size_t i = 0; i < abandoned_.size();) {
    int done = 0;
    MPI_Test(&abandoned_[i]->request, &done, MPI_STATUS_IGNORE);
    if (done) {
      abandoned_[i] = std::move(abandoned_.back());
      abandoned_.pop_back();
    } else {
      ++i;
    }
  }
  for (size_t i = 0; i < pending_.size();) {
    PendingSend& p = *pending_[i];
    int done = 0;
    T2D_RETURN_IF_ERROR(MpiStatus(MPI_Test(&p.request, &done, MPI_STATUS_IGNORE), "MPI_Test(send)"));
    if (done) {
      pool_.Put(std::move(p.bytes));
      pending_[i] = std::move(pending_.back());
      pending_.pop_back();
      continue;
    }
    if (absl::Now() >= p.deadline) {
      const std::string what = absl::StrCat("send of ", p.bytes.size(), " bytes from rank ", rank_, " to rank ", p.dst,
                                            " (tag ", p.tag, "): rank ", p.dst, " did not take it before the deadline");
      MPI_Cancel(&p.request);  // completes the request if MPI could cancel it
      abandoned_.push_back(std::move(pending_[i]));
      pending_[i] = std::move(pending_.back());
      pending_.pop_back();
      return absl::DeadlineExceededError(what);
    }
    ++i;
  }
  return absl::OkStatus();
}

absl::Status MpiTransport::Send(int dst, int tag, std::string bytes, absl::Time deadline) {
  T2D_RETURN_IF_ERROR(CheckPeer(*this, dst, false, "send"));
  T2D_RETURN_IF_ERROR(CheckTag(tag, false, "send"));
  if (bytes.size() > static_cast<size_t>(INT_MAX)) {
    return absl::InvalidArgumentError(absl::StrCat("send to rank ", dst, ": message of ", bytes.size(),
                                                   " bytes exceeds MPI's limit of ", INT_MAX));
  }
  VLOG(2) << "send dst=" << dst << " tag=" << tag << " bytes=" << bytes.size();
  auto p = std::make_unique<PendingSend>();
  p->bytes = std::move(bytes);
  p->dst = dst;
  p->tag = tag;
  p->deadline = deadline;
  T2D_RETURN_IF_ERROR(MpiStatus(
      MPI_Isend(p->bytes.data(), static_cast<int>(p->bytes.size()), MPI_BYTE, dst, tag, comm_, &p->request),
      absl::StrCat("MPI_Isend to rank ", dst)));
  pending_.push_back(std::move(p));
  return Progress();
}

absl::Status MpiTransport::Flush(absl::Time deadline) {
  Backoff backoff;
  while (true) {
    T2D_RETURN_IF_ERROR(Progress());
    if (pending_.empty()) return absl::OkStatus();
    if (absl::Now() >= deadline) {
      std::vector<int> ranks;
      for (const auto& p : pending_) ranks.push_back(p->dst);
      return absl::DeadlineExceededError(absl::StrCat("flush on rank ", rank_, ": rank(s) ", absl::StrJoin(ranks, ", "),
                                                      " did not take their messages before the deadline"));
    }
    backoff.Pause();
  }
}

absl::StatusOr<Message> MpiTransport::Recv(int src, int tag, absl::Time deadline) {
  T2D_RETURN_IF_ERROR(CheckPeer(*this, src, true, "recv"));
  T2D_RETURN_IF_ERROR(CheckTag(tag, true, "recv"));
  const int mpi_src = src == kAnySource ? MPI_ANY_SOURCE : src;
  const int mpi_tag = tag == kAnyTag ? MPI_ANY_TAG : tag;
  Backoff backoff;
  MPI_Message matched = MPI_MESSAGE_NULL;
  MPI_Status status;
  while (true) {
    T2D_RETURN_IF_ERROR(Progress());
    int found = 0;
    T2D_RETURN_IF_ERROR(MpiStatus(MPI_Improbe(mpi_src, mpi_tag, comm_, &found, &matched, &status), "MPI_Improbe"));
    if (found) break;
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat("recv on rank ", rank_, ": no message from ", PeerName(src),
                                                      " (tag ", tag, ") before the deadline"));
    }
    backoff.Pause();
  }
  int count = 0;
  MPI_Get_count(&status, MPI_BYTE, &count);
  Message m;
  m.source = status.MPI_SOURCE;
  m.tag = status.MPI_TAG;
  m.bytes = pool_.Take(static_cast<size_t>(count));
  MPI_Request request = MPI_REQUEST_NULL;
  const std::string what = absl::StrCat("recv of ", count, " bytes on rank ", rank_, " from rank ", m.source);
  T2D_RETURN_IF_ERROR(MpiStatus(MPI_Imrecv(m.bytes.data(), count, MPI_BYTE, &matched, &request), what));
  Backoff backoff2;
  while (true) {
    int done = 0;
    T2D_RETURN_IF_ERROR(MpiStatus(MPI_Test(&request, &done, MPI_STATUS_IGNORE), what));
    if (done) break;
    T2D_RETURN_IF_ERROR(Progress());  // our own queued sends may be what the peer waits for
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(what, ": rank ", m.source, " stopped sending before the deadline"));
    }
    backoff2.Pause();
  }
  VLOG(2) << "recv src=" << m.source << " tag=" << m.tag << " bytes=" << count;
  return m;
}

}  // namespace t2d::comm
