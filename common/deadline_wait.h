#pragma once
// Waiting on a std::condition_variable until an absl::Time deadline. The in-process twins use the
// standard mutex and condition variable (not absl::Mutex) so that ThreadSanitizer, which
// understands pthreads but not an un-instrumented abseil, can check them (scripts/tsan.sh).
//
// Thread-safety: as std::condition_variable::wait_until. Errors: none.

#include <condition_variable>
#include <mutex>

#include "absl/time/time.h"

namespace t2d {

// Waits on `cv` (with `lock` held) until notified or until `deadline` (absl::InfiniteFuture():
// no deadline). Returns true when the deadline passed, like absl::CondVar::WaitWithDeadline;
// spurious wake-ups return false, so callers re-check their condition in a loop.
inline bool WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) {
    cv.wait(lock);
    return false;
  }
  return cv.wait_until(lock, absl::ToChronoTime(deadline)) == std::cv_status::timeout;
}

}  // namespace t2d
