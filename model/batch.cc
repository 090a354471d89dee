#include "model/batch.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace t2d::model {

void ItemSlots::Add(int64_t id_row, const std::vector<int64_t>& tags) {
  BeginSlot(id_row);
  tag_rows.insert(tag_rows.end(), tags.begin(), tags.end());
  EndSlot();
}

absl::Status ValidateSlots(const ItemSlots& slots, const char* what, int64_t num_id_rows, int64_t num_tag_rows,
                           bool allow_padding) {
  const int64_t s = slots.size();
  for (int64_t i = 0; i < s; ++i) {
    const int64_t r = slots.id_rows[static_cast<size_t>(i)];
    if (r >= num_id_rows || r < -1 || (r == -1 && !allow_padding)) {
      return absl::InvalidArgumentError(absl::StrCat(what, ".id_rows[", i, "] = ", r, " is outside [",
                                                     allow_padding ? -1 : 0, ", ", num_id_rows, ")"));
    }
  }
  if (slots.tag_offsets.empty()) {
    if (!slots.tag_rows.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": tag_rows given without tag_offsets"));
    }
    return absl::OkStatus();
  }
  if (static_cast<int64_t>(slots.tag_offsets.size()) != s + 1) {
    return absl::InvalidArgumentError(absl::StrCat(what, ".tag_offsets has ", slots.tag_offsets.size(),
                                                   " entries, expected ", s + 1));
  }
  if (slots.tag_offsets[0] != 0 || slots.tag_offsets.back() != static_cast<int64_t>(slots.tag_rows.size())) {
    return absl::InvalidArgumentError(absl::StrCat(what, ".tag_offsets must start at 0 and end at tag_rows.size() = ",
                                                   slots.tag_rows.size()));
  }
  for (int64_t i = 0; i < s; ++i) {
    const int64_t lo = slots.tag_offsets[static_cast<size_t>(i)], hi = slots.tag_offsets[static_cast<size_t>(i) + 1];
    if (hi < lo) return absl::InvalidArgumentError(absl::StrCat(what, ".tag_offsets decreases at ", i));
    if (hi > lo && slots.id_rows[static_cast<size_t>(i)] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": padding slot ", i, " has tags"));
    }
  }
  for (size_t i = 0; i < slots.tag_rows.size(); ++i) {
    if (slots.tag_rows[i] < 0 || slots.tag_rows[i] >= num_tag_rows) {
      return absl::InvalidArgumentError(absl::StrCat(what, ".tag_rows[", i, "] = ", slots.tag_rows[i],
                                                     " is outside [0, ", num_tag_rows, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateBatch(const Batch& batch, int64_t num_id_rows, int64_t num_tag_rows) {
  const int64_t b = batch.batch_size, n = batch.seq_len;
  if (b < 1 || n < 1) {
    return absl::InvalidArgumentError(absl::StrCat("batch: batch_size ", b, " and seq_len ", n, " must be >= 1"));
  }
  if (static_cast<int64_t>(batch.lengths.size()) != b) {
    return absl::InvalidArgumentError(absl::StrCat("batch.lengths has ", batch.lengths.size(), " entries, expected ", b));
  }
  if (batch.history.size() != b * n) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch.history has ", batch.history.size(), " slots, expected B * n = ", b * n));
  }
  if (batch.targets.size() != b) {
    return absl::InvalidArgumentError(absl::StrCat("batch.targets has ", batch.targets.size(), " slots, expected ", b));
  }
  if (num_tag_rows > 0 && (batch.history.tag_offsets.empty() || batch.targets.tag_offsets.empty())) {
    return absl::InvalidArgumentError("batch: tag rows were given but the batch has no tag_offsets");
  }
  if (!batch.session_lengths.empty() && static_cast<int64_t>(batch.session_lengths.size()) != b) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch.session_lengths has ", batch.session_lengths.size(), " entries, expected 0 or ", b));
  }
  for (int64_t i = 0; i < b; ++i) {
    const int64_t len = batch.lengths[static_cast<size_t>(i)];
    if (len < 0 || len > n) {
      return absl::InvalidArgumentError(absl::StrCat("batch.lengths[", i, "] = ", len, " is outside [0, ", n, "]"));
    }
    if (!batch.session_lengths.empty()) {
      const int64_t sl = batch.session_lengths[static_cast<size_t>(i)];
      if (sl < std::min<int64_t>(len, 1) || sl > len) {
        return absl::InvalidArgumentError(absl::StrCat("batch.session_lengths[", i, "] = ", sl, " is outside [",
                                                       std::min<int64_t>(len, 1), ", lengths[", i, "] = ", len, "]"));
      }
    }
    for (int64_t j = 0; j < n; ++j) {
      const bool pad = batch.history.id_rows[static_cast<size_t>(i * n + j)] < 0;
      if (pad != (j < n - len)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "batch.history: sample ", i, " slot ", j, (pad ? " is padding" : " is not padding"), " but lengths[", i,
            "] = ", len, " (sequences are right-aligned: the first n - length slots are padding)"));
      }
    }
  }
  T2D_RETURN_IF_ERROR(ValidateSlots(batch.history, "batch.history", num_id_rows, num_tag_rows, true));
  T2D_RETURN_IF_ERROR(ValidateSlots(batch.targets, "batch.targets", num_id_rows, num_tag_rows, false));
  if (!batch.time_lags.empty() && static_cast<int64_t>(batch.time_lags.size()) != b * n) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch.time_lags has ", batch.time_lags.size(), " entries, expected B * n = ", b * n));
  }
  for (size_t i = 0; i < batch.time_lags.size(); ++i) {
    if (!(batch.time_lags[i] >= 0) && batch.history.id_rows[i] >= 0) {
      return absl::InvalidArgumentError(absl::StrCat("batch.time_lags[", i, "] = ", batch.time_lags[i], " is not >= 0"));
    }
  }
  return absl::OkStatus();
}

}  // namespace t2d::model
