#include "model/malloc_tuning.h"

#include <malloc.h>

namespace t2d::model {

bool ConfigureMallocForTensors() {
  bool ok = mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1;
  ok &= mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1;
  ok &= mallopt(M_TOP_PAD, 64 << 20) == 1;
  return ok;
}

}  // namespace t2d::model
