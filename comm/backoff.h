#pragma once
// Backoff: the pause between two polls of a non-blocking operation (MPI_Test, MPI_Iprobe,
// cudaStreamQuery). Spins with sched_yield for the first polls, so that a reply that is about
// to arrive costs microseconds, then sleeps with growing intervals (capped at 200 us) so that
// oversubscribed ranks (several ranks per core) give the CPU to the peer they wait for.
//
// Thread-safety: one object per waiting loop.

#include <sched.h>

#include <algorithm>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace t2d::comm {

class Backoff {
 public:
  void Pause() {
    if (++polls_ <= kSpinPolls) {
      sched_yield();
      return;
    }
    absl::SleepFor(sleep_);
    sleep_ = std::min(sleep_ * 2, absl::Microseconds(200));
  }

 private:
  static constexpr int kSpinPolls = 200;
  int polls_ = 0;
  absl::Duration sleep_ = absl::Microseconds(5);
};

}  // namespace t2d::comm
