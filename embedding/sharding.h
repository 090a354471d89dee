#pragma once
// Which parameter-server shard owns an id. Pure functions, thread-safe.
//
// The mapping is part of the checkpoint contract: shard files record num_shards, and loading
// into a different number of shards re-applies ShardOf to every row. Never change it.

#include <cstdint>
#include <vector>

#include "absl/numeric/int128.h"
#include "absl/types/span.h"
#include "common/hash.h"

namespace t2d::embedding {

// Owner of `id` among `num_shards` (REQUIRES num_shards >= 1). Ids are mixed first, so
// sequential ids spread evenly; the multiply-shift maps the 64-bit hash onto [0, num_shards).
inline int ShardOf(int64_t id, int num_shards) {
  const uint64_t h = Mix64(static_cast<uint64_t>(id) ^ 0x5ad0c0ffee5eedULL);
  return static_cast<int>(absl::Uint128High64(absl::uint128(h) * static_cast<uint64_t>(num_shards)));
}

// Ids grouped by owner. For shard s, ids[s][j] came from position positions[s][j] of the input,
// so results gathered per shard can be scattered back into the caller's order.
struct Partition {
  std::vector<std::vector<int64_t>> ids;
  std::vector<std::vector<uint32_t>> positions;
};
Partition PartitionByShard(absl::Span<const int64_t> ids, int num_shards);

}  // namespace t2d::embedding
