#pragma once
// Samples built from live requests (serving) by the same code that builds evaluation samples
// from prepared files (data/sample_reader.h, FillHistory): a request that carries the same
// behaviours (item ids and times) as an evaluation sample, and the target's time as its
// request time, becomes the same model input, whatever the session mode.
//
// The request's behaviours are cut the way `prepare` and the reader cut a user's sequence: the
// newest data-set window of them is kept, the current session is found by data::SessionBegin
// with the data set's session options (manifest: window, session_len, session_mode,
// session_gap_s), and the newest max_seq_len behaviours form the history window. Item tags come
// from the catalogue, capped at max_tags per item as the reader caps them.
//
// A data set prepared without timestamps (manifest.has_timestamps = false) measures time in
// positions: a request then gives no times, the behaviours are at positions 0..L-1 and the
// request at position L.
//
// Ownership: the builder keeps pointers to the catalogue (not owned; must outlive it).
// Thread-safety: const methods; one builder may serve many threads.
// Errors: InvalidArgument naming the field and position (an item outside the catalogue, times
// that disagree in length or go backwards in a time-ordered data set, a request time before
// the newest behaviour, an empty history).

#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "data/catalogue.h"
#include "data/dataset.pb.h"
#include "data/sample_reader.h"

namespace t2d::data {

struct LiveRequest {
  int64_t user = 0;
  absl::Span<const int64_t> items;  // the user's behaviours, oldest first (at least one)
  absl::Span<const int64_t> times;  // one per item; empty: positions (data sets without timestamps only)
  // When the request is answered; the target's time in evaluation. Unset: the newest
  // behaviour's time. Time lags are measured from it.
  std::optional<int64_t> time;
  // The user's profile keys, one per field of the data set (DatasetManifest.user_feature_names;
  // UserFeatureKey, 0: missing); empty: every field missing.
  absl::Span<const int64_t> user_features;
};

class LiveSampleBuilder {
 public:
  // `max_seq_len` (n) and `max_tags` (T) as the job's reader resolves them (0: the data set's).
  LiveSampleBuilder(const DatasetManifest& manifest, const Catalogue* catalogue, int max_seq_len, int max_tags);

  int max_seq_len() const { return n_; }
  int max_tags() const { return t_; }
  bool has_timestamps() const { return manifest_.has_timestamps(); }

  // Sizes `batch` for `size` samples; then Fill each of them.
  void Reset(int size, SampleBatch* batch) const;
  // Fills sample b from `request` (target id and tags are left empty: there is no target).
  absl::Status Fill(const LiveRequest& request, int b, SampleBatch* batch) const;

 private:
  DatasetManifest manifest_;
  const Catalogue* catalogue_;
  int n_, t_;
  bool time_order_;
  int session_mode_;  // config::DataConfig::SessionMode
};

}  // namespace t2d::data
