#pragma once
// Streaming reader of one split of a prepared data set, for one worker of a data-parallel job.
//
// Worker `rank` of `world_size` reads the shards s with s % world_size == rank. Each epoch it
// visits its chunks in a seeded random order and shuffles consecutive windows of
// `shuffle_buffer` samples of that stream (a window shuffle: like a shuffle buffer of that size,
// but its state is a pure function of the position, which is what makes the cursor exact).
// The order is a pure function of (seed, epoch, rank, world_size) and the data set.
//
// The cursor (epoch, samples consumed in the epoch) can be saved with a checkpoint; a reader
// restored from it produces exactly the samples the saved run had not produced yet, in the
// same order. Restoring reads only the chunks of the current window.
//
// With equal_epochs (default) every rank's epoch is cut to the smallest rank's sample count,
// so all workers run the same number of steps (needed for synchronous training).
//
// SampleBatch layout (row-major, plain vectors; B = batch size, n = max_seq_len, T = max_tags):
//   history positions [0, history_len) hold the behaviours before the target, oldest first;
//   positions [history_len, n) are padding (id 0, tag count 0, time 0, lag 0).
//   The current session is positions [session_begin, history_len); the rest is the history.
//   user_feature holds F = user_fields keys per sample, the user's profile values (data set
//   field order, DatasetManifest.user_feature_names; UserFeatureKey in data/user_profiles.h),
//   0 where the user has no value for a field.
//   time_lag = target_time - history_time in seconds (in positions when the data set has no
//   timestamps, see DatasetManifest.has_timestamps); a difference that does not fit an int64
//   is taken in double precision.
//
// Ownership: the reader owns its open files and decoded chunks. Thread-compatible.
// Errors: missing/damaged files are NotFound/DataLoss naming the file; a cursor from another
// configuration is FailedPrecondition.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "data/dataset.pb.h"
#include "data/sample_file.h"

namespace t2d::data {

struct ReaderOptions {
  std::string split = "train";  // "train", "valid" or "test"
  int rank = 0;
  int world_size = 1;
  int batch_size = 512;
  int max_seq_len = 0;      // n; 0: the data set's window. At most the window.
  int max_tags = 0;         // tags kept per item; 0: the data set's max_tags_per_item (>= 1)
  int shuffle_buffer = 10000;  // window shuffled at a time; 0: file order, no shuffling
  uint64_t seed = 1;
  int64_t epochs = 1;       // 0: endless
  bool equal_epochs = true;
  bool drop_last = false;   // drop an epoch's last partial batch
};

struct SampleBatch {
  int size = 0;         // B: samples in this batch (the last of an epoch may be short)
  int max_seq_len = 0;  // n
  int max_tags = 0;     // T
  int user_fields = 0;  // F: profile fields of the data set (0: none)
  std::vector<int64_t> user_id;            // [B]
  std::vector<int64_t> user_feature;       // [B, F]: profile value keys, 0 = missing
  std::vector<int64_t> history_id;         // [B, n]
  std::vector<int32_t> history_len;        // [B]
  std::vector<int32_t> session_begin;      // [B]
  std::vector<int64_t> history_time;       // [B, n]
  std::vector<float> time_lag;             // [B, n]
  std::vector<int64_t> history_tag;        // [B, n, T]
  std::vector<int32_t> history_tag_count;  // [B, n]
  std::vector<int64_t> target_id;          // [B]
  std::vector<int64_t> target_time;        // [B]
  std::vector<int64_t> target_tag;         // [B, T]
  std::vector<int32_t> target_tag_count;   // [B]
};

// Sizes every per-sample array of `batch` for `size` samples of n positions, T tags and F profile
// fields (values of the new elements are unspecified until a row is filled).
void ResizeSampleBatch(int size, int n, int T, int F, SampleBatch* batch);

// The history part of sample b: the behaviours of one window, oldest first. Shared by the
// reader (prepared files) and by serving (data/live_sample.h), so that a live request and an
// evaluation sample with the same behaviours become the same row.
struct HistoryWindow {
  int64_t user = 0;
  const int64_t* items = nullptr;     // [len]
  const int64_t* times = nullptr;     // [len]
  const uint32_t* tag_begin = nullptr;  // [len + 1]: item j's tags are tags[tag_begin[j], tag_begin[j + 1])
  const int64_t* tags = nullptr;
  int len = 0;                        // <= batch->max_seq_len
  int32_t session_begin = 0;          // in [0, len]
  int64_t target_time = 0;            // time lags are taken from it
  const int64_t* user_feature = nullptr;  // [batch->user_fields] profile keys; null: all missing
};
// Fills user_id, user_feature, history_*, session_begin, time_lag and target_time of sample b (padding after
// len); tags beyond batch->max_tags are dropped. The target id and tags are not touched.
void FillHistory(const HistoryWindow& w, int b, SampleBatch* batch);

class SampleReader {
 public:
  static absl::StatusOr<std::unique_ptr<SampleReader>> Open(const std::string& dataset_dir, const ReaderOptions& options);
  ~SampleReader();

  // Fills `batch` with the next samples and returns true; false once all epochs are done.
  absl::StatusOr<bool> Next(SampleBatch* batch);

  ReaderCursor cursor() const;
  absl::Status Restore(const ReaderCursor& cursor);

  // Samples this rank produces per epoch (after equal_epochs).
  int64_t samples_per_epoch() const { return epoch_len_; }
  int64_t epoch() const { return epoch_; }
  const DatasetManifest& manifest() const { return manifest_; }
  int max_seq_len() const { return n_; }
  int max_tags() const { return t_; }
  int user_fields() const { return f_; }

 private:
  struct ChunkRef {
    int file;
    int chunk;
    int64_t samples;
  };
  struct SampleRef {
    uint32_t slot;    // into loaded_
    uint32_t sample;  // into the chunk's samples
  };
  SampleReader() = default;
  void StartEpoch(int64_t epoch);
  absl::Status LoadWindow(int64_t window);
  void FillSample(const DecodedChunk& chunk, const DecodedChunk::Sample& s, int b, SampleBatch* batch) const;

  ReaderOptions options_;
  DatasetManifest manifest_;
  int n_ = 0, t_ = 1, f_ = 0;
  int64_t window_ = 1;
  std::vector<std::unique_ptr<SampleFileReader>> files_;
  std::vector<ChunkRef> chunks_;
  int64_t stream_len_ = 0;  // samples in this rank's files
  int64_t epoch_len_ = 0;   // samples produced per epoch
  // Epoch state.
  int64_t epoch_ = 0;
  int64_t position_ = 0;
  std::vector<int> order_;        // chunk visiting order
  std::vector<int64_t> prefix_;   // samples before order_[i]; size chunks + 1
  // Window state.
  int64_t loaded_window_ = -1;
  std::vector<int> loaded_chunk_;  // chunk index (into chunks_) per slot
  std::vector<std::unique_ptr<DecodedChunk>> loaded_;
  std::vector<SampleRef> refs_;
};

}  // namespace t2d::data
