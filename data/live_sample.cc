#include "data/live_sample.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "data/data_config.pb.h"
#include "data/sequences.h"

namespace t2d::data {

LiveSampleBuilder::LiveSampleBuilder(const DatasetManifest& manifest, const Catalogue* catalogue, int max_seq_len,
                                     int max_tags)
    : manifest_(manifest),
      catalogue_(catalogue),
      n_(max_seq_len > 0 ? max_seq_len : manifest.window()),
      t_(max_tags > 0 ? max_tags : std::max(1, manifest.max_tags_per_item())),
      time_order_(manifest.sequence_order() != "FILE") {
  config::DataConfig::SessionMode mode = config::DataConfig::LAST_K;
  config::DataConfig::SessionMode_Parse(manifest.session_mode(), &mode);
  session_mode_ = mode;
}

void LiveSampleBuilder::Reset(int size, SampleBatch* batch) const {
  ResizeSampleBatch(size, n_, t_, manifest_.user_feature_names_size(), batch);
}

absl::Status LiveSampleBuilder::Fill(const LiveRequest& r, int b, SampleBatch* batch) const {
  const size_t total = r.items.size();
  if (total == 0) return absl::InvalidArgumentError("items: empty history (give at least one item id)");
  const int fields = manifest_.user_feature_names_size();
  if (!r.user_features.empty() && static_cast<int>(r.user_features.size()) != fields) {
    return absl::InvalidArgumentError(absl::StrCat("user_features: ", r.user_features.size(), " values, this model's data set has ",
                                                   fields, " profile fields"));
  }
  std::vector<int64_t> positions;
  absl::Span<const int64_t> times = r.times;
  if (times.empty()) {
    if (manifest_.has_timestamps()) {
      return absl::InvalidArgumentError("times: missing (this model's data set has timestamps: give one per item)");
    }
    positions.resize(total);
    for (size_t i = 0; i < total; ++i) positions[i] = static_cast<int64_t>(i);
    times = positions;
  } else if (times.size() != total) {
    return absl::InvalidArgumentError(absl::StrCat("times: ", times.size(), " values for ", total, " items"));
  } else if (!manifest_.has_timestamps()) {
    return absl::InvalidArgumentError("times: this model's data set has no timestamps (time is the position); leave them out");
  }
  if (time_order_) {
    for (size_t i = 1; i < total; ++i) {
      if (times[i] < times[i - 1]) {
        return absl::InvalidArgumentError(
            absl::StrCat("times[", i, "] = ", times[i], " is before times[", i - 1, "] = ", times[i - 1],
                         " (behaviours are oldest first, in time order)"));
      }
    }
  }
  int64_t now = manifest_.has_timestamps() ? times[total - 1] : static_cast<int64_t>(total);
  if (r.time.has_value()) {
    if (!manifest_.has_timestamps()) {
      return absl::InvalidArgumentError("time: this model's data set has no timestamps; leave it out");
    }
    if (time_order_ && *r.time < times[total - 1]) {
      return absl::InvalidArgumentError(absl::StrCat("time ", *r.time, " is before the newest behaviour's time ",
                                                     times[total - 1]));
    }
    now = *r.time;
  }
  // The behaviours prepare would have kept for a target after them: the data set's window.
  const uint32_t target = static_cast<uint32_t>(total);
  const uint32_t window = static_cast<uint32_t>(std::max(1, manifest_.window()));
  const uint32_t window_begin = target > window ? target - window : 0;
  const uint32_t session = SessionBegin(times, window_begin, target,
                                        static_cast<config::DataConfig::SessionMode>(session_mode_),
                                        manifest_.session_gap_s(), manifest_.session_len());
  // The reader's history window: the newest n of them.
  const uint32_t wb = target - window_begin > static_cast<uint32_t>(n_) ? target - static_cast<uint32_t>(n_) : window_begin;
  std::vector<uint32_t> tag_begin;
  std::vector<int64_t> tags;
  tag_begin.reserve(target - wb + 1);
  for (uint32_t j = wb; j < target; ++j) {
    const int64_t index = catalogue_->IndexOf(r.items[j]);
    if (index < 0) {
      return absl::InvalidArgumentError(absl::StrCat("items[", j, "] = ", r.items[j], ": not in the model's catalogue"));
    }
    tag_begin.push_back(static_cast<uint32_t>(tags.size()));
    const auto& t = catalogue_->tags(index);
    tags.insert(tags.end(), t.begin(), t.end());
  }
  tag_begin.push_back(static_cast<uint32_t>(tags.size()));
  // Items before the window are checked too: an unknown id is a malformed request wherever it is.
  for (uint32_t j = 0; j < wb; ++j) {
    if (catalogue_->IndexOf(r.items[j]) < 0) {
      return absl::InvalidArgumentError(absl::StrCat("items[", j, "] = ", r.items[j], ": not in the model's catalogue"));
    }
  }
  HistoryWindow w;
  w.user = r.user;
  w.items = r.items.data() + wb;
  w.times = times.data() + wb;
  w.tag_begin = tag_begin.data();
  w.tags = tags.data();
  w.len = static_cast<int>(target - wb);
  w.session_begin = static_cast<int32_t>(std::max(session, wb) - wb);
  w.target_time = now;
  if (!r.user_features.empty()) w.user_feature = r.user_features.data();
  FillHistory(w, b, batch);
  batch->target_id[static_cast<size_t>(b)] = 0;
  batch->target_tag_count[static_cast<size_t>(b)] = 0;
  return absl::OkStatus();
}

}  // namespace t2d::data
