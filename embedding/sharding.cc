#include "embedding/sharding.h"

#include "absl/container/flat_hash_map.h"

namespace t2d::embedding {

Partition PartitionByShard(absl::Span<const int64_t> ids, int num_shards) {
  Partition p;
  p.ids.resize(static_cast<size_t>(num_shards));
  p.shard_of_position.resize(ids.size());
  p.row_of_position.resize(ids.size());
  absl::flat_hash_map<int64_t, uint32_t> first;  // id -> position of its first occurrence
  first.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    auto [it, inserted] = first.try_emplace(ids[i], static_cast<uint32_t>(i));
    if (inserted) {
      const int s = ShardOf(ids[i], num_shards);
      std::vector<int64_t>& owned = p.ids[static_cast<size_t>(s)];
      p.shard_of_position[i] = s;
      p.row_of_position[i] = static_cast<uint32_t>(owned.size());
      owned.push_back(ids[i]);
    } else {
      p.shard_of_position[i] = p.shard_of_position[it->second];
      p.row_of_position[i] = p.row_of_position[it->second];
    }
  }
  return p;
}

}  // namespace t2d::embedding
