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

// The distinct ids of a batch grouped by owner, and where each input position went.
//
// ids[s] holds the distinct ids that shard s owns, in order of first occurrence in the input.
// This order is on the wire (ps/remote_embedding_store.h pushes ids[s] as is and pulls it in
// pieces of the same order), so never change it.
// Input position i is row row_of_position[i] of ids[shard_of_position[i]]: repeated ids share one
// row, so rows gathered per shard scatter back to every position that asked for them, and
// gradients of repeated ids sum into one row. Because rows are numbered in order of first
// occurrence, position i is the first occurrence of its id exactly when its row equals the
// number of distinct ids of that shard seen before i.
struct Partition {
  std::vector<std::vector<int64_t>> ids;
  std::vector<int> shard_of_position;
  std::vector<uint32_t> row_of_position;
};
// REQUIRES num_shards >= 1 and ids.size() <= UINT32_MAX.
Partition PartitionByShard(absl::Span<const int64_t> ids, int num_shards);

}  // namespace t2d::embedding
