#include "comm/transport.h"

#include "absl/strings/str_cat.h"

namespace t2d::comm {

absl::Status CheckPeer(const Transport& t, int peer, bool allow_any, const char* what) {
  if (allow_any && peer == kAnySource) return absl::OkStatus();
  if (peer < 0 || peer >= t.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " on rank ", t.rank(), ": peer rank ", peer, " is outside 0..", t.size() - 1));
  }
  return absl::OkStatus();
}

absl::Status CheckTag(int tag, bool allow_any, const char* what) {
  if (allow_any && tag == kAnyTag) return absl::OkStatus();
  if (tag < 0 || tag > kMaxTag) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": tag ", tag, " is outside 0..", kMaxTag));
  }
  return absl::OkStatus();
}

std::string PeerName(int peer) { return peer == kAnySource ? std::string("any rank") : absl::StrCat("rank ", peer); }

}  // namespace t2d::comm
