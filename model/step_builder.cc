#include "model/step_builder.h"

#include <algorithm>
#include <climits>

#include "absl/strings/str_cat.h"
#include "common/hash.h"
#include "glog/logging.h"

namespace t2d::model {

StepBuilder::StepBuilder(const data::Catalogue* catalogue, const Options& options)
    : catalogue_(catalogue), options_(options) {}

void StepBuilder::RowIndex::Reset(std::vector<int64_t>* keys) {
  for (int64_t k : dense_keys_) dense_[static_cast<size_t>(k)] = -1;
  dense_keys_.clear();
  map_.clear();
  keys_ = keys;
  keys_->clear();
}

int32_t StepBuilder::RowIndex::Insert(int64_t key) {
  const int64_t row = static_cast<int64_t>(keys_->size());
  CHECK_LT(row, int64_t{INT32_MAX}) << "more distinct keys in one step than an int32 numbers";
  keys_->push_back(key);
  dense_keys_.push_back(key);
  return static_cast<int32_t>(row);
}

int64_t StepBuilder::RowIndex::RowOfSlow(int64_t key) {
  if (key >= 0 && key < kDenseKeys) {
    // Grow the array (doubling, so a batch of rising keys costs amortised O(1)) and retry.
    dense_.resize(static_cast<size_t>(std::min(kDenseKeys, std::max<int64_t>(key + 1, 2 * static_cast<int64_t>(dense_.size())))), -1);
    return RowOf(key);
  }
  auto [it, inserted] = map_.try_emplace(key, static_cast<int64_t>(keys_->size()));
  if (inserted) keys_->push_back(key);
  return it->second;
}

void StepBuilder::AddItem(ItemSlots* slots, int64_t id, const int64_t* tags, int count) {
  // The tag rows go straight into the slots (a scratch vector and its copy were a third of the work).
  slots->BeginSlot(id_rows_.RowOf(id));
  if (options_.use_tags) {
    for (int t = 0; t < count; ++t) slots->tag_rows.push_back(tag_rows_.RowOf(tags[t]));
  }
  slots->EndSlot();
}

void StepBuilder::SeedCatalogue(int64_t begin, int64_t end, StepInput* out) {
  id_rows_.Reset(&out->id_keys);
  tag_rows_.Reset(&out->tag_keys);
  out->candidates = Candidates();
  for (int64_t i = begin; i < end; ++i) {
    const auto& tags = catalogue_->tags(i);
    AddItem(&out->candidates.items, catalogue_->ids()[static_cast<size_t>(i)], tags.data(),
            static_cast<int>(tags.size()));
  }
}

absl::Status StepBuilder::FillHistory(const data::SampleBatch& in, StepInput* out) {
  const int n = in.max_seq_len, t = in.max_tags;
  Batch& b = out->batch;
  b = Batch();
  b.batch_size = in.size;
  b.seq_len = n;
  b.lengths.resize(static_cast<size_t>(in.size));
  const size_t slots = static_cast<size_t>(in.size) * static_cast<size_t>(n);
  b.history.id_rows.reserve(slots);
  b.history.tag_offsets.reserve(slots + 1);
  b.history.tag_rows.reserve(slots);
  user_rows_.Reset(&out->user_keys);
  if (options_.use_user_ids) {
    for (int s = 0; s < in.size; ++s) b.user_rows.push_back(user_rows_.RowOf(in.user_id[static_cast<size_t>(s)]));
  }
  user_feature_rows_.Reset(&out->user_feature_keys);
  if (options_.use_user_features) {
    const size_t count = static_cast<size_t>(in.size) * static_cast<size_t>(in.user_fields);
    if (in.user_feature.size() < count) {
      return absl::InvalidArgumentError(absl::StrCat("the batch has ", in.user_feature.size(), " profile keys for ",
                                                     in.size, " samples of ", in.user_fields, " fields"));
    }
    b.user_feature_rows.reserve(count);
    for (size_t i = 0; i < count; ++i) {
      const int64_t key = in.user_feature[i];
      b.user_feature_rows.push_back(key == 0 ? -1 : user_feature_rows_.RowOf(key));
    }
  }
  if (options_.time_lags) b.time_lags.assign(static_cast<size_t>(in.size) * static_cast<size_t>(n), 0.0f);
  for (int s = 0; s < in.size; ++s) {
    const int len = in.history_len[static_cast<size_t>(s)];
    if (len < 0 || len > n) {
      return absl::InvalidArgumentError(absl::StrCat("sample ", s, " of the batch has history length ", len,
                                                     " outside [0, ", n, "]"));
    }
    b.lengths[static_cast<size_t>(s)] = len;
    if (options_.time_gap_sessions) {
      // The data's session is [session_begin, len); an empty one (a gap right before the
      // target) keeps the newest behaviour, so the session attention always has a token.
      const int64_t sl = len - in.session_begin[static_cast<size_t>(s)];
      b.session_lengths.push_back(len == 0 ? 0 : std::clamp<int64_t>(sl, 1, len));
    }
    // Right-align: slot n - len + j holds behaviour j (oldest first).
    for (int j = 0; j < n - len; ++j) b.history.AddPadding();
    for (int j = 0; j < len; ++j) {
      const size_t pos = static_cast<size_t>(s) * static_cast<size_t>(n) + static_cast<size_t>(j);
      AddItem(&b.history, in.history_id[pos], in.history_tag.data() + pos * static_cast<size_t>(t),
              in.history_tag_count[pos]);
      if (options_.time_lags) {
        b.time_lags[static_cast<size_t>(s) * static_cast<size_t>(n) + static_cast<size_t>(n - len + j)] =
            in.time_lag[pos];
      }
    }
  }
  return absl::OkStatus();
}

absl::Status StepBuilder::BuildTraining(const data::SampleBatch& in, uint64_t seed, StepInput* out) {
  if (options_.full_softmax) {
    SeedCatalogue(0, catalogue_->size(), out);
  } else {
    id_rows_.Reset(&out->id_keys);
    tag_rows_.Reset(&out->tag_keys);
    out->candidates = Candidates();
  }
  if (auto s = FillHistory(in, out); !s.ok()) return s;
  Batch& b = out->batch;
  const int t = in.max_tags;
  for (int s = 0; s < in.size; ++s) {
    const int64_t id = in.target_id[static_cast<size_t>(s)];
    AddItem(&b.targets, id, in.target_tag.data() + static_cast<size_t>(s) * static_cast<size_t>(t),
            in.target_tag_count[static_cast<size_t>(s)]);
    const int64_t index = catalogue_->IndexOf(id);
    if (options_.full_softmax) {
      if (index < 0) {
        return absl::InvalidArgumentError(absl::StrCat("target item ", id, " of sample ", s,
                                                       " is not in the catalogue (items.t2ds)"));
      }
      b.target_candidates.push_back(index);
    } else {
      b.target_log_q.push_back(index < 0 ? 0.0f : catalogue_->log_share(index));
    }
  }
  if (!options_.full_softmax) {
    SplitMix64 rng(seed);
    for (int i = 0; i < options_.num_negatives; ++i) {
      const int64_t index = catalogue_->SampleByPopularity(rng.NextDouble());
      const auto& tags = catalogue_->tags(index);
      AddItem(&out->candidates.items, catalogue_->ids()[static_cast<size_t>(index)], tags.data(),
              static_cast<int>(tags.size()));
      out->candidates.log_q.push_back(catalogue_->log_share(index));
    }
  }
  return absl::OkStatus();
}

absl::Status StepBuilder::BuildUsers(const data::SampleBatch& in, StepInput* out) {
  id_rows_.Reset(&out->id_keys);
  tag_rows_.Reset(&out->tag_keys);
  out->candidates = Candidates();
  return FillHistory(in, out);
}

void StepBuilder::BuildCatalogue(int64_t begin, int64_t end, StepInput* out) {
  SeedCatalogue(begin, end, out);
  out->batch = Batch();
}

}  // namespace t2d::model
