#pragma once
// Embedding shard files: one file per (table, shard), written by servers at checkpoints and
// read back into any number of shards.
//
// Layout (all integers little-endian; the framing is common/chunk_file.h, the full description
// docs/formats.md):
//   "T2DSHARD" | u32 format_version | u32 header_bytes | ShardHeader (protobuf) | u32 crc32(header)
//   chunk* :   u32 'CHNK' | u32 kind | u32 count | u32 payload_bytes | u32 crc32(payload) | payload
//              kind 1 (rows):    count x { i64 id | u32 last_update | u32 aux | f32 values[dim + state] }
//              kind 2 (pending): count x { i64 id | u32 admission count }
//              kind 3 (end):     payload = i64 rows | i64 pending; must be the last chunk
// A file without its end chunk is truncated; every reader error names the file and what is wrong.
//
// Thread-safety: free functions; the table passed in must not be used concurrently.

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "embedding/embedding_table.h"
#include "embedding/shard_file.pb.h"

namespace t2d::embedding {

inline constexpr uint32_t kShardFormatVersion = 1;

// "<table>.shard-00001-of-00004.t2demb"
std::string ShardFileName(const std::string& table, int shard_index, int num_shards);

// Writes `table` as shard `shard_index` of `num_shards` to `path` (via a temporary file and a
// rename, so `path` is either the old file or the complete new one).
absl::Status WriteShardFile(const std::string& path, const EmbeddingTable& table, int shard_index, int num_shards);

// Reads and checks only the header.
absl::StatusOr<ShardHeader> ReadShardHeader(const std::string& path);

// Loads into `table` the rows and pending admission counts of `paths` that belong to shard
// `shard_index` of `num_shards`. `paths` must be one complete set of shard files of one table
// (same num_shards, every index once), written with the same name, dim and optimizer kind as
// `table` has; the files may have been written by a different number of shards (the rows are
// re-partitioned with ShardOf). The table's step becomes the largest step in the set; counters
// are taken from the file when the partitioning is unchanged and start from zero otherwise.
// Errors (DataLoss for damaged files, InvalidArgument/FailedPrecondition for mismatches) name
// the file; on error the table may hold part of the rows.
absl::Status LoadShardFiles(const std::vector<std::string>& paths, int shard_index, int num_shards,
                            EmbeddingTable* table);

// All shard files of `table` in `dir`, sorted by shard index. NotFound if there are none.
absl::StatusOr<std::vector<std::string>> FindShardFiles(const std::string& dir, const std::string& table);

}  // namespace t2d::embedding
