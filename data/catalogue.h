#pragma once
// The item catalogue of a prepared data set (items.t2ds): every item id with its tags and its
// number of training positives. Evaluation ranks against all of it; the full softmax uses it
// as the candidate set; the sampled softmax draws negatives from its popularity.
//
// Thread-safety: immutable after Load; const methods are thread-safe.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace t2d::data {

class Catalogue {
 public:
  // Reads <dataset_dir>/items.t2ds. Errors name the file (NotFound, DataLoss).
  static absl::StatusOr<std::unique_ptr<Catalogue>> Load(const std::string& dataset_dir);
  // For tests: items with their tags and counts.
  static std::unique_ptr<Catalogue> FromItems(std::vector<int64_t> ids, std::vector<std::vector<int64_t>> tags,
                                              std::vector<int64_t> counts);

  int64_t size() const { return static_cast<int64_t>(ids_.size()); }
  const std::vector<int64_t>& ids() const { return ids_; }
  const std::vector<int64_t>& tags(int64_t index) const { return tags_[static_cast<size_t>(index)]; }
  // Distinct tag ids over all items, ascending.
  const std::vector<int64_t>& all_tags() const { return all_tags_; }
  // Index of `id` in ids(), or -1.
  int64_t IndexOf(int64_t id) const {
    auto it = index_.find(id);
    return it == index_.end() ? -1 : it->second;
  }
  // Popularity: positives per item, and log of each item's share of them (items with no count
  // get a count of 1 so the share stays positive).
  const std::vector<int64_t>& counts() const { return counts_; }
  float log_share(int64_t index) const { return log_share_[static_cast<size_t>(index)]; }
  // Item index drawn in proportion to counts() from a uniform u in [0, 1).
  int64_t SampleByPopularity(double u) const;
  // Item indices in decreasing popularity (ties: smaller id first).
  std::vector<int64_t> ByPopularity() const;
  // Replaces the counts (the items file's are the training targets, written by prepare and the
  // generator: no pass over the samples is needed to know them).
  void SetCounts(std::vector<int64_t> counts);

 private:
  Catalogue() = default;
  void Finish();

  std::vector<int64_t> ids_;
  std::vector<std::vector<int64_t>> tags_;
  std::vector<int64_t> counts_;
  std::vector<float> log_share_;
  std::vector<double> cdf_;
  std::vector<int64_t> all_tags_;
  absl::flat_hash_map<int64_t, int64_t> index_;
};

}  // namespace t2d::data
