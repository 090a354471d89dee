#include "model/malloc_tuning.h"

#include <malloc.h>

namespace t2d::model {

bool ConfigureMallocForTensors() {
  // mmap() is capped at 32 MiB thresholds, and larger activations (the industrial-size model
  // allocates blocks of hundreds of MiB per step) would still be mapped and faulted in afresh
  // on every step: serve everything from the heap instead. And never give the heap's top back
  // (-1 disables trimming): with a 1 GiB threshold the industrial step freed more than that at
  // its end and faulted it in again the next step (474k page faults a step; the step 1.21x
  // faster on one thread without trimming in a paired bench_model run on an AMD EPYC). A process
  // keeps its peak heap, as torch's own caching allocators do.
  bool ok = mallopt(M_MMAP_MAX, 0) == 1;
  ok &= mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1;
  ok &= mallopt(M_TRIM_THRESHOLD, -1) == 1;
  ok &= mallopt(M_TOP_PAD, 64 << 20) == 1;
  return ok;
}

}  // namespace t2d::model
