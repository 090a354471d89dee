#pragma once
// Turns a batch of samples (data/sample_reader.h: raw ids, left-aligned) into what one model
// call needs (model/batch.h: row indices, right-aligned), plus the unique ids whose embedding
// rows must be pulled, in row order:
//   id_keys[r]  is the item id whose row is row r of model::Rows::id_rows,
//   tag_keys[r] is the tag id whose row is row r of model::Rows::tag_rows.
// FULL_SOFTMAX steps put the whole catalogue first (rows 0..N-1 in catalogue order, so
// candidates are the catalogue and a target's candidate index is its catalogue index);
// SAMPLED_SOFTMAX steps pull the batch's items plus `num_negatives` shared negatives drawn by
// popularity (with their log-probabilities for the logQ correction).
//
// Thread-safety: not thread-safe (reuses its maps); one builder per thread.
// Errors: InvalidArgument for a target outside the catalogue (FULL_SOFTMAX) or a malformed batch.

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "data/sample_reader.h"
#include "model/batch.h"
#include "data/catalogue.h"

namespace t2d::model {

struct StepInput {
  Batch batch;
  Candidates candidates;
  std::vector<int64_t> id_keys;
  std::vector<int64_t> tag_keys;
  std::vector<int64_t> user_keys;  // with Options::use_user_ids: the batch's distinct users
  // With Options::use_user_features: the batch's distinct profile value keys (never 0, the
  // missing value), in row order of model::Rows::user_feature_rows.
  std::vector<int64_t> user_feature_keys;
};

class StepBuilder {
 public:
  struct Options {
    bool full_softmax = true;
    int num_negatives = 0;  // SAMPLED_SOFTMAX only
    bool use_tags = true;   // false: no tag table
    bool use_user_ids = false;  // fill Batch::user_rows and StepInput::user_keys (user-id table)
    // Fill Batch::user_feature_rows and StepInput::user_feature_keys from the samples' profile
    // keys (data::SampleBatch::user_feature; model.user_feature_table).
    bool use_user_features = false;
    bool time_lags = false; // fill Batch::time_lags
    // Sessions were cut by time gaps (data.session_mode = TIME_GAP): pass each sample's
    // session length (from data::SampleBatch::session_begin) instead of the fixed last k.
    bool time_gap_sessions = false;
  };
  // `catalogue` is not owned and must outlive the builder.
  StepBuilder(const data::Catalogue* catalogue, const Options& options);

  // A training step; `seed` draws the shared negatives.
  absl::Status BuildTraining(const data::SampleBatch& in, uint64_t seed, StepInput* out);
  // User-tower input only (evaluation, serving): no targets, no candidates.
  absl::Status BuildUsers(const data::SampleBatch& in, StepInput* out);
  // Catalogue items [begin, end) as candidate slots (for item vectors), with their rows.
  void BuildCatalogue(int64_t begin, int64_t end, StepInput* out);

 private:
  // Numbers the distinct keys of one step in first-seen order (the row order of the pull).
  // Keys in [0, kDenseKeys) (item, tag and user ids of most data sets) are numbered through a
  // direct array, which grows to the largest such key seen; the rest through a hash map. A
  // batch looks up every slot's id and tags, about 75,000 keys for ML-1M's batches of 512 x 50,
  // and the hash lookups were most of the batch building.
  class RowIndex {
   public:
    static constexpr int64_t kDenseKeys = int64_t{1} << 21;  // at most 8 MiB of row numbers
    void Reset(std::vector<int64_t>* keys);
    int64_t RowOf(int64_t key) {
      if (key >= 0 && key < static_cast<int64_t>(dense_.size())) {
        int32_t& row = dense_[static_cast<size_t>(key)];
        if (row < 0) row = Insert(key);
        return row;
      }
      return RowOfSlow(key);
    }

   private:
    int32_t Insert(int64_t key);
    int64_t RowOfSlow(int64_t key);
    std::vector<int32_t> dense_;   // key -> row, -1: not seen this step
    std::vector<int64_t> dense_keys_;  // the keys set in dense_ this step, to clear them
    absl::flat_hash_map<int64_t, int64_t> map_;
    std::vector<int64_t>* keys_ = nullptr;
  };

  absl::Status FillHistory(const data::SampleBatch& in, StepInput* out);
  void AddItem(ItemSlots* slots, int64_t id, const int64_t* tags, int count);
  void SeedCatalogue(int64_t begin, int64_t end, StepInput* out);

  const data::Catalogue* catalogue_;
  Options options_;
  RowIndex id_rows_, tag_rows_, user_rows_, user_feature_rows_;
};

}  // namespace t2d::model
