#pragma once
// From positive interactions to per-user sequences, sessions and split targets.
//
// - BuildSequences groups interactions by user and sorts each user's behaviours by time,
//   stably (equal timestamps keep input order), then applies the minimum-length filter.
// - SessionBegin cuts the current session out of a history window (LAST_K or TIME_GAP).
// - UserTargets picks, for one user, the target positions of each split under a protocol
//   (DataConfig.split); it is per user so that the streaming generator can use it too.
//
// Thread-safety: pure functions.

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "data/data_config.pb.h"
#include "data/dataset.pb.h"
#include "data/sample_file.h"
#include "data/sources.h"

namespace t2d::data {

enum Split { kTrain = 0, kValid = 1, kTest = 2 };
inline constexpr int kNumSplits = 3;
inline constexpr const char* kSplitNames[kNumSplits] = {"train", "valid", "test"};

struct UserSequence {
  int64_t user = 0;
  std::vector<int64_t> items;
  std::vector<int64_t> times;
};

// Groups `log` into sequences (users by ascending id), each sorted by time (stably) or, with
// by_time = false, kept in input order; drops users shorter than `min_len`. Fills the input_* / empty / one_item / short / kept counts, the length histogram
// and the min/max/mean length of `summary`.
// Runs prepare's grouping (data/user_sort.h) in memory (a log of 2^32 rows or more would spill
// sort runs into the current folder); errors are the sorter's.
absl::StatusOr<std::vector<UserSequence>> BuildSequences(const InteractionLog& log, int min_len,
                                                        PrepareSummary* summary, bool by_time = true);

// BuildSequences one user at a time, for logs grouped elsewhere (data/user_sort.h): users are
// added in ascending id order, each with its positives already in sequence order.
class SequenceBuilder {
 public:
  SequenceBuilder(int min_len, PrepareSummary* summary) : min_len_(min_len), summary_(summary) {}
  // Counts the user; returns true and fills *out when it is long enough to keep.
  bool Add(int64_t user, absl::Span<const Interaction> positives, UserSequence* out);
  // Writes the counts to the summary. input_interactions: every positive read; empty_users:
  // users with rows but no positive.
  void Finish(int64_t input_interactions, int64_t empty_users);
  int64_t users() const { return kept_users_; }

 private:
  int min_len_;
  PrepareSummary* summary_;
  absl::flat_hash_set<int64_t> input_items_, kept_items_;
  int64_t input_users_ = 0, one_item_ = 0, short_dropped_ = 0, kept_users_ = 0, kept_interactions_ = 0;
  int64_t min_seen_ = 0, max_seen_ = 0;
};

// Start of the current session for a target at index `target` whose history window starts at
// `window_begin` (so the history is times[window_begin, target)). LAST_K: the last k
// behaviours. TIME_GAP: the behaviours after the last gap > gap_s, at most k (a gap that does
// not fit an int64 is compared as a double). Returns an index in [window_begin, target].
uint32_t SessionBegin(absl::Span<const int64_t> times, uint32_t window_begin, uint32_t target,
                      config::DataConfig::SessionMode mode, double gap_s, int k);

// Everything UserTargets needs, resolved from the config once.
struct SplitOptions {
  config::DataConfig::SplitProtocol protocol = config::DataConfig::LAST_ITEM;
  int window = 50;        // n
  int session_len = 10;   // k
  config::DataConfig::SessionMode session_mode = config::DataConfig::LAST_K;
  double session_gap_s = 1800;
  int paper_targets_per_user = 10;
  int paper_eval_targets_per_user = 15;
  config::DataConfig::PaperEvalTarget paper_eval_target = config::DataConfig::RANDOM_POSITION;
  uint64_t seed = 1;
  // GLOBAL_TIME: targets with time < valid_cut train, < test_cut valid, else test.
  int64_t valid_cut = 0, test_cut = 0;
};
SplitOptions MakeSplitOptions(const config::DataConfig& config);

// Targets of one user (indices into its sequence, sorted) for each split. `paper_group` is the
// user's split under PAPER (ignored otherwise). Returns false when the user is too short for
// the protocol (then no targets are set).
bool UserTargets(const SplitOptions& options, int64_t user, Split paper_group, absl::Span<const int64_t> times,
                 std::array<std::vector<TargetRef>, kNumSplits>* out);

// PAPER: the split of each user, for users given in ascending id order: an exact
// train/valid/test partition of a seeded permutation.
std::vector<Split> PaperGroups(size_t num_users, double train_fraction, double valid_fraction, uint64_t seed);
// PAPER for streams (the generator): a user's split from a hash of (seed, user).
Split PaperGroupOfUser(int64_t user, double train_fraction, double valid_fraction, uint64_t seed);

// Writes the part of a user's sequence that `targets` need (from the first target's window
// start to the last target) to `writer`, with indices rebased to that slice, and the user's
// profile keys (empty: none, or all missing).
absl::Status WriteUserTargets(SampleFileWriter* writer, int64_t user, absl::Span<const int64_t> items,
                              absl::Span<const int64_t> times, absl::Span<const absl::Span<const int64_t>> tags,
                              absl::Span<const TargetRef> targets, int window,
                              absl::Span<const int64_t> user_features = {});

// Bucket edges of the sequence length histogram.
std::vector<HistogramBucket> EmptyLengthHistogram();
void AddToHistogram(int64_t length, PrepareSummary* summary);

}  // namespace t2d::data
