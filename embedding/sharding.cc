#include "embedding/sharding.h"

namespace t2d::embedding {

Partition PartitionByShard(absl::Span<const int64_t> ids, int num_shards) {
  Partition p;
  p.ids.resize(static_cast<size_t>(num_shards));
  p.positions.resize(static_cast<size_t>(num_shards));
  for (size_t i = 0; i < ids.size(); ++i) {
    const auto s = static_cast<size_t>(ShardOf(ids[i], num_shards));
    p.ids[s].push_back(ids[i]);
    p.positions[s].push_back(static_cast<uint32_t>(i));
  }
  return p;
}

}  // namespace t2d::embedding
