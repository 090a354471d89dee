#pragma once
// `t2diff prepare`: turns a raw source (or the synthetic generator) into a prepared data set
// in DataConfig.dataset_dir:
//   manifest.textproto                 DatasetManifest: options, shard list, summary
//   items.t2ds                         the item catalogue (id, tags, count)
//   {train,valid,test}-SSSSS-of-NNNNN.t2ds   user records of each split, N = data.num_shards
// A user's records of all splits go to shard Mix64(seed ^ user) % N (the generator: by user id).
// The manifest is written last, so a folder with a manifest holds a complete data set.
// A raw log is grouped by user through an external sort (data/user_sort.h) in at most
// data.prepare_buffer_mb of memory plus per-item state and, under PAPER, 8 bytes a user: its
// scratch files (".prepare-*.tmp") live in dataset_dir while it runs.
//
// Errors: a folder that already holds a data set (manifest or .t2ds files) is AlreadyExists
// unless `force`; with `force` only this layout's files are removed. Config problems are
// InvalidArgument naming the field; input problems come from the readers (sources.h). An input
// without a data row, or whose users are all filtered out (no positives, min_seq_len, too short
// for the split), is InvalidArgument naming the input files, and nothing is written.
// Thread-safety: free functions; do not prepare into the same folder concurrently.

#include <string>

#include "absl/status/statusor.h"
#include "data/data_config.pb.h"
#include "data/dataset.pb.h"

namespace t2d::data {

inline constexpr char kManifestFile[] = "manifest.textproto";
inline constexpr char kItemsFile[] = "items.t2ds";
// Scratch files of a running prepare (sort runs, times) start with this and end in ".tmp"; a
// prepare removes those a killed one left.
inline constexpr char kScratchPrefix[] = ".prepare-";

// "train-00003-of-00008.t2ds"
std::string ShardFileName(const std::string& split, int shard, int num_shards);

// Prepares `config` (a job's data section) into config.dataset_dir. Returns the summary (also in the
// manifest).
absl::StatusOr<PrepareSummary> Prepare(const config::DataConfig& config, bool force);

// Reads and checks dataset_dir/manifest.textproto.
absl::StatusOr<DatasetManifest> ReadManifest(const std::string& dataset_dir);

// A few human-readable lines (users, items, samples per split, length histogram, bad lines).
std::string FormatSummary(const PrepareSummary& summary);

}  // namespace t2d::data
