#include "comm/faulty_transport.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace t2d::comm {

absl::Status FaultyTransport::Send(int dst, int tag, std::string bytes, absl::Time deadline) {
  const int64_t n = sends_++;
  if (options_.send_delay > absl::ZeroDuration()) absl::SleepFor(options_.send_delay);
  if (n == options_.fail_send_at) {
    return absl::UnavailableError(absl::StrCat("send ", n, " from rank ", rank(), " to rank ", dst, ": injected failure"));
  }
  if (options_.drop_sends_from >= 0 && n >= options_.drop_sends_from) return absl::OkStatus();
  return base_->Send(dst, tag, std::move(bytes), deadline);
}

}  // namespace t2d::comm
