#pragma once
// Internal to data/: the writers of one prepared data set (splits x shards + items file) and
// the manifest bookkeeping shared by Prepare and the generator. Each (split, shard) writer
// may be used by one thread at a time; different shards may be written concurrently.

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "configs/job_config.pb.h"
#include "data/dataset.pb.h"
#include "data/sample_file.h"
#include "data/sequences.h"

namespace t2d::data {

// Checks the folder (refuses an existing data set unless force; then removes its files) and
// creates it.
absl::Status PrepareOutputDir(const std::string& dir, bool force);

class ShardSetWriter {
 public:
  static absl::StatusOr<std::unique_ptr<ShardSetWriter>> Create(const config::DataConfig& config, uint64_t dataset_id);

  SampleFileWriter* writer(Split split, int shard) { return writers_[split][shard].get(); }
  SampleFileWriter* items() { return items_.get(); }
  int num_shards() const { return num_shards_; }

  // Finishes every file and fills the splits, items file and format fields of `manifest`.
  absl::Status Finish(DatasetManifest* manifest);

 private:
  std::string dir_;
  int num_shards_ = 0;
  std::array<std::vector<std::unique_ptr<SampleFileWriter>>, kNumSplits> writers_;
  std::unique_ptr<SampleFileWriter> items_;
};

// Fills the manifest fields that come from the config.
void FillManifestOptions(const config::DataConfig& config, uint64_t dataset_id, DatasetManifest* manifest);

// Writes dataset_dir/manifest.textproto atomically.
absl::Status WriteManifest(const std::string& dir, const DatasetManifest& manifest);

// A fingerprint of the data options (stored in every file of the set).
uint64_t DatasetId(const config::DataConfig& config);

}  // namespace t2d::data
