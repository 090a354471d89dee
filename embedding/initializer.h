#pragma once
// Initial values of embedding rows: a pure function of (table seed, id).
//
// Because nothing else enters, a row reads the same whichever shard owns it, whenever it is
// first touched, and after any restart; a Lookup of a never-stored id can simply compute it.
// Thread-safe (immutable after construction).

#include <cstdint>

#include "absl/types/span.h"
#include "embedding/table_config.pb.h"

namespace t2d::embedding {

class RowInitializer {
 public:
  explicit RowInitializer(const config::InitializerConfig& config);

  // Writes the initial values of row `id` to `out` (all out.size() elements).
  void Fill(int64_t id, absl::Span<float> out) const;

 private:
  config::InitializerConfig::Kind kind_;
  float stddev_;
  float range_;
  uint64_t seed_;
};

}  // namespace t2d::embedding
