#pragma once
// Backoff: the pause between two polls of a non-blocking operation (MPI_Test, MPI_Iprobe,
// cudaStreamQuery). For the first kSpin of waiting it polls with sched_yield in between, so a
// reply that is about to arrive costs microseconds and a rank sharing the core still gets it;
// then it sleeps with growing intervals (capped at 100 us) so that idle ranks cost nothing.
// (A request/reply round trip of a 4096-row pull takes a few hundred microseconds; sleeping
// earlier added up to a sleep interval of latency to every round trip.)
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
    if (spinning_) {
      if (++polls_ % 64 != 0 || absl::Now() - start_ < kSpin) {
        sched_yield();
        return;
      }
      spinning_ = false;
    }
    absl::SleepFor(sleep_);
    sleep_ = std::min(sleep_ * 2, absl::Microseconds(100));
  }

 private:
  static constexpr absl::Duration kSpin = absl::Milliseconds(1);
  const absl::Time start_ = absl::Now();
  bool spinning_ = true;
  int polls_ = 0;
  absl::Duration sleep_ = absl::Microseconds(5);
};

}  // namespace t2d::comm
