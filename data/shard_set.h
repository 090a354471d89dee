#pragma once
// Internal to data/: the writers of one prepared data set (splits x shards + items file) and
// the manifest bookkeeping shared by Prepare and the generator. A shard's files are opened on
// first use and closed by FinishShard (or Finish), so a streaming writer that completes shards
// one after another holds few open files and buffers. Different shards may be written (and
// finished) concurrently from different threads; one shard from one thread at a time.

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/data_config.pb.h"
#include "data/dataset.pb.h"
#include "data/sample_file.h"
#include "data/sequences.h"

namespace t2d::data {

// Checks the folder (refuses an existing data set unless force; then removes its files) and
// creates it.
absl::Status PrepareOutputDir(const std::string& dir, bool force);

class ShardSetWriter {
 public:
  // user_fields: profile keys per user record (0: none).
  static absl::StatusOr<std::unique_ptr<ShardSetWriter>> Create(const config::DataConfig& config, uint64_t dataset_id,
                                                                int user_fields);

  // The writer of (split, shard), created on first use.
  absl::StatusOr<SampleFileWriter*> writer(Split split, int shard);
  SampleFileWriter* items() { return items_.get(); }
  int num_shards() const { return num_shards_; }

  // Completes the three files of `shard` (creating empty ones where nothing was written).
  absl::Status FinishShard(int shard);
  // Finishes every remaining file and fills the splits and items file of `manifest`.
  absl::Status Finish(DatasetManifest* manifest);

 private:
  SampleFileHeader Header(Split split, int shard) const;

  std::string dir_;
  int num_shards_ = 0;
  int window_ = 0;
  size_t chunk_bytes_ = 0;
  uint64_t dataset_id_ = 0;
  int user_fields_ = 0;
  std::array<std::vector<std::unique_ptr<SampleFileWriter>>, kNumSplits> writers_;
  std::array<std::vector<int64_t>, kNumSplits> samples_;  // per finished shard
  std::vector<char> finished_;
  std::unique_ptr<SampleFileWriter> items_;
};

// Fills the manifest fields that come from the config.
void FillManifestOptions(const config::DataConfig& config, uint64_t dataset_id, DatasetManifest* manifest);

// Writes dataset_dir/manifest.textproto atomically.
absl::Status WriteManifest(const std::string& dir, const DatasetManifest& manifest);

// A fingerprint of the data options (stored in every file of the set).
uint64_t DatasetId(const config::DataConfig& config);

}  // namespace t2d::data
