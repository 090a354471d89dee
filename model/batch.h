#pragma once
// The batch layout the model consumes: plain vectors of row indices, no tensors, so the data
// pipeline and the trainer can build it without torch.
//
// With a user feature, each sample also names one row of a third matrix, user rows [U_user,
// D_user] (Batch::user_rows); with user profile fields, F rows of a fourth, profile value rows
// [U_f, D_f] (Batch::user_feature_rows, -1 for a missing value).
//
// Rows: the trainer pulls, for the ids of a batch, one embedding row per unique id from the
// embedding store and hands them to the model as two matrices, id rows [U, D_id] and tag rows
// [U_tag, D_tag] (model/model.h, Rows). Everything below refers to items by their row index in
// those matrices, never by raw id.
//
// An item slot is one item: its id row and a bag of tag rows (mean-pooled; an empty bag is a
// zero tag vector). A padding slot has id row -1 and an empty tag bag.
//
// Sequences are RIGHT-ALIGNED: sample b's history occupies slots [b * n, (b + 1) * n); the
// newest behaviour x_n is at slot b * n + n - 1, and the first n - lengths[b] slots are
// padding. Right alignment keeps x_n, the session (the last k slots) and the U-Net's pooling
// grid at fixed places, which is what makes outputs independent of the amount of padding.
//
// Ownership: plain values. Thread-safety: none needed (values).
// Errors: ValidateBatch() names the first inconsistent field and index.

#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace t2d::model {

// A list of item slots. tag_offsets is CSR: slot s's tags are
// tag_rows[tag_offsets[s] .. tag_offsets[s + 1]); it is empty when there is no tag feature.
struct ItemSlots {
  std::vector<int64_t> id_rows;      // [S], row in Rows::id_rows or -1 for a padding slot
  std::vector<int64_t> tag_offsets;  // [S + 1] or empty
  std::vector<int64_t> tag_rows;     // [tag_offsets[S]], rows in Rows::tag_rows

  int64_t size() const { return static_cast<int64_t>(id_rows.size()); }
  // Appends one slot (id_row -1 with no tags for padding).
  void Add(int64_t id_row, const std::vector<int64_t>& tags = {});
  // Add in two halves, for builders that append a slot's tag rows to tag_rows themselves
  // instead of gathering them first: BeginSlot(id_row), tag_rows.push_back(...), EndSlot().
  void BeginSlot(int64_t id_row) {
    if (tag_offsets.empty()) tag_offsets.push_back(0);
    id_rows.push_back(id_row);
  }
  void EndSlot() { tag_offsets.push_back(static_cast<int64_t>(tag_rows.size())); }
  void AddPadding() { Add(-1); }
};

struct Batch {
  int64_t batch_size = 0;         // B
  int64_t seq_len = 0;            // n, the same for every sample of the batch
  std::vector<int64_t> lengths;   // [B], valid behaviours per sample, 0..n
  ItemSlots history;              // [B * n], right-aligned (see the file comment)
  ItemSlots targets;              // [B], x_{n+1}; every target is a real item (id row >= 0)
  // With a user feature (model.user_id_table): [B], each sample's row in Rows::user_rows.
  // Empty without one.
  std::vector<int64_t> user_rows;
  // With user profile fields (model.user_feature_table, F fields): [B * F] row-major, sample b's
  // value of field f at b * F + f, as a row of Rows::user_feature_rows or -1 when the sample has
  // no value for the field (its slot of the profile input is then a zero vector). Empty without.
  std::vector<int64_t> user_feature_rows;
  // Optional [B * n]: seconds between the target's time and each behaviour (>= 0), for the
  // time-lag feature. Values at padding slots are ignored.
  std::vector<float> time_lags;
  // Optional [B]: behaviours in each sample's current session (sessions cut by time gaps,
  // data.session_mode = TIME_GAP), 1..lengths[b]; at most the model's session cap k is used.
  // The session is the newest session_lengths[b] behaviours, everything before it is history.
  // Empty: the session is always the newest k behaviours (data.session_mode = LAST_K).
  std::vector<int64_t> session_lengths;
  // FULL_SOFTMAX: [B], the index of each target in the candidate list passed with the batch.
  std::vector<int64_t> target_candidates;
  // SAMPLED_SOFTMAX with logQ: [B], log of each target's probability of being drawn as an
  // in-batch candidate (e.g. log of its share of the training positives).
  std::vector<float> target_log_q;
};

// The items scored against e_u: the whole catalogue (FULL_SOFTMAX) or the shared random
// negatives of a batch (SAMPLED_SOFTMAX, with log_q = log of each negative's sampling
// probability, needed when logq_correction is on).
struct Candidates {
  ItemSlots items;
  std::vector<float> log_q;
};

// Checks the batch against itself and against the row counts it will be used with
// (num_id_rows = U, num_tag_rows = U_tag, 0 when there is no tag table).
absl::Status ValidateBatch(const Batch& batch, int64_t num_id_rows, int64_t num_tag_rows);
absl::Status ValidateSlots(const ItemSlots& slots, const char* what, int64_t num_id_rows,
                           int64_t num_tag_rows, bool allow_padding);

}  // namespace t2d::model
