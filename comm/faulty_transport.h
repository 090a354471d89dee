#pragma once
// FaultyTransport: a Transport decorator that misbehaves on purpose, for fault tests (the idea
// of LevelDB's SpecialEnv). Counting starts at 0 with the first Send through this object.
//   drop_sends_from = k:  sends number k, k+1, ... report success but are discarded (a peer
//                         that hangs without dying);
//   fail_send_at = k:     send number k returns Unavailable (a broken link);
//   send_delay:           every send sleeps this long first (a slow peer).
// Thread-safety: as the wrapped transport. Ownership: `base` is not owned and must outlive it.

#include <utility>

#include "comm/transport.h"

namespace t2d::comm {

struct FaultOptions {
  int64_t drop_sends_from = -1;  // -1: never
  int64_t fail_send_at = -1;     // -1: never
  absl::Duration send_delay = absl::ZeroDuration();
};

class FaultyTransport : public Transport {
 public:
  FaultyTransport(Transport* base, FaultOptions options) : base_(base), options_(options) {}

  int rank() const override { return base_->rank(); }
  int size() const override { return base_->size(); }
  absl::Status Send(int dst, int tag, std::string bytes, absl::Time deadline) override;
  absl::StatusOr<Message> Recv(int src, int tag, absl::Time deadline) override {
    return base_->Recv(src, tag, deadline);
  }
  absl::Status Flush(absl::Time deadline) override { return base_->Flush(deadline); }
  std::string NewBuffer(size_t bytes) override { return base_->NewBuffer(bytes); }
  void Recycle(std::string buffer) override { base_->Recycle(std::move(buffer)); }
  int64_t sends() const { return sends_; }

 private:
  Transport* const base_;
  const FaultOptions options_;
  int64_t sends_ = 0;
};

}  // namespace t2d::comm
