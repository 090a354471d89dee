#include "comm/inproc_transport.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/deadline_wait.h"
#include "common/status_macros.h"

namespace t2d::comm {

InProcHub::InProcHub(int size) : mailboxes_(static_cast<size_t>(size)), gone_(static_cast<size_t>(size), false) {}

std::unique_ptr<Transport> InProcHub::Connect(int rank) { return std::make_unique<InProcTransport>(this, rank); }

void InProcHub::MarkGone(int rank) {
  std::lock_guard<std::mutex> lock(mu_);
  gone_[static_cast<size_t>(rank)] = true;
  arrived_.notify_all();
}

bool InProcHub::IsGone(int rank) const {
  std::lock_guard<std::mutex> lock(mu_);
  return gone_[static_cast<size_t>(rank)];
}

absl::Status InProcTransport::Send(int dst, int tag, std::string bytes, absl::Time /*deadline*/) {
  T2D_RETURN_IF_ERROR(CheckPeer(*this, dst, false, "send"));
  T2D_RETURN_IF_ERROR(CheckTag(tag, false, "send"));
  std::lock_guard<std::mutex> lock(hub_->mu_);
  if (hub_->gone_[static_cast<size_t>(rank_)]) {
    return absl::UnavailableError(absl::StrCat("send from rank ", rank_, ": this rank is marked gone"));
  }
  if (hub_->gone_[static_cast<size_t>(dst)]) {
    return absl::UnavailableError(absl::StrCat("send from rank ", rank_, " to rank ", dst, ": peer is gone"));
  }
  hub_->mailboxes_[static_cast<size_t>(dst)].queue.push_back(Message{rank_, tag, std::move(bytes)});
  hub_->arrived_.notify_all();
  return absl::OkStatus();
}

absl::StatusOr<Message> InProcTransport::Recv(int src, int tag, absl::Time deadline) {
  T2D_RETURN_IF_ERROR(CheckPeer(*this, src, true, "recv"));
  T2D_RETURN_IF_ERROR(CheckTag(tag, true, "recv"));
  std::unique_lock<std::mutex> lock(hub_->mu_);
  auto& queue = hub_->mailboxes_[static_cast<size_t>(rank_)].queue;
  bool timed_out = false;
  while (true) {
    for (auto it = queue.begin(); it != queue.end(); ++it) {
      if ((src == kAnySource || it->source == src) && (tag == kAnyTag || it->tag == tag)) {
        Message m = std::move(*it);
        queue.erase(it);
        return m;
      }
    }
    if (hub_->gone_[static_cast<size_t>(rank_)]) {
      return absl::UnavailableError(absl::StrCat("recv on rank ", rank_, ": this rank is marked gone"));
    }
    if (src != kAnySource && hub_->gone_[static_cast<size_t>(src)]) {
      return absl::UnavailableError(absl::StrCat("recv on rank ", rank_, ": rank ", src, " is gone"));
    }
    if (timed_out) {
      return absl::DeadlineExceededError(absl::StrCat("recv on rank ", rank_, ": no message from ", PeerName(src),
                                                      " (tag ", tag, ") before the deadline"));
    }
    timed_out = WaitUntil(hub_->arrived_, lock, deadline);
  }
}

}  // namespace t2d::comm
