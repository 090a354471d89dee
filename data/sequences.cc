#include "data/sequences.h"

#include <algorithm>
#include <numeric>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "common/hash.h"
#include "common/status_macros.h"
#include "data/user_sort.h"

namespace t2d::data {

using config::DataConfig;

std::vector<HistogramBucket> EmptyLengthHistogram() {
  const int64_t edges[] = {1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000, 0};
  std::vector<HistogramBucket> out;
  for (size_t i = 0; i + 1 < std::size(edges); ++i) {
    HistogramBucket b;
    b.set_lo(edges[i]);
    b.set_hi(edges[i + 1]);
    b.set_count(0);
    out.push_back(b);
  }
  return out;
}

void AddToHistogram(int64_t length, PrepareSummary* summary) {
  if (summary->seq_len_histogram_size() == 0) {
    for (const auto& b : EmptyLengthHistogram()) *summary->add_seq_len_histogram() = b;
  }
  for (auto& b : *summary->mutable_seq_len_histogram()) {
    if (length >= b.lo() && (b.hi() == 0 || length < b.hi())) {
      b.set_count(b.count() + 1);
      return;
    }
  }
}

bool SequenceBuilder::Add(int64_t user, absl::Span<const Interaction> positives, UserSequence* out) {
  const int64_t len = static_cast<int64_t>(positives.size());
  if (len == 0) return false;
  for (const auto& x : positives) input_items_.insert(x.item);
  ++input_users_;
  if (len == 1) ++one_item_;
  if (len < min_len_) {
    ++short_dropped_;
    return false;
  }
  out->user = user;
  out->items.clear();
  out->times.clear();
  out->items.reserve(positives.size());
  out->times.reserve(positives.size());
  for (const auto& x : positives) {
    out->items.push_back(x.item);
    out->times.push_back(x.time);
    kept_items_.insert(x.item);
  }
  kept_interactions_ += len;
  AddToHistogram(len, summary_);
  min_seen_ = kept_users_ == 0 ? len : std::min(min_seen_, len);
  max_seen_ = std::max(max_seen_, len);
  ++kept_users_;
  return true;
}

void SequenceBuilder::Finish(int64_t input_interactions, int64_t empty_users) {
  PrepareSummary* s = summary_;
  if (s->seq_len_histogram_size() == 0) {
    for (const auto& b : EmptyLengthHistogram()) *s->add_seq_len_histogram() = b;
  }
  s->set_input_users(input_users_);
  s->set_input_items(static_cast<int64_t>(input_items_.size()));
  s->set_input_interactions(input_interactions);
  s->set_empty_users(empty_users);
  s->set_one_item_users(one_item_);
  s->set_short_users_dropped(short_dropped_);
  s->set_users(kept_users_);
  s->set_items(static_cast<int64_t>(kept_items_.size()));
  s->set_interactions(kept_interactions_);
  s->set_min_seq_len(min_seen_);
  s->set_max_seq_len(max_seen_);
  s->set_mean_seq_len(kept_users_ == 0 ? 0.0 : static_cast<double>(kept_interactions_) / kept_users_);
}

absl::StatusOr<std::vector<UserSequence>> BuildSequences(const InteractionLog& log, int min_len,
                                                        PrepareSummary* summary, bool by_time) {
  // prepare's own grouping (data/user_sort.h), with a buffer that holds the whole log.
  const int64_t rows = static_cast<int64_t>(log.interactions.size());
  T2D_ASSIGN_OR_RETURN(auto sorter, UserRowSorter::Create("", (rows + 1) * int64_t{sizeof(UserRowSorter::Row)}, by_time));
  for (const auto& x : log.interactions) T2D_RETURN_IF_ERROR(sorter->Add(x, true));
  T2D_RETURN_IF_ERROR(sorter->Finish());
  SequenceBuilder builder(min_len, summary);
  std::vector<UserSequence> out;
  UserSequence s;
  T2D_RETURN_IF_ERROR(sorter->ForEachUser([&](int64_t user, absl::Span<const Interaction> positives, int64_t) {
    if (builder.Add(user, positives, &s)) out.push_back(std::move(s));
    return absl::OkStatus();
  }));
  builder.Finish(rows, log.empty_users);
  return out;
}

uint32_t SessionBegin(absl::Span<const int64_t> times, uint32_t window_begin, uint32_t target,
                      DataConfig::SessionMode mode, double gap_s, int k) {
  const uint32_t cap = static_cast<uint32_t>(k);
  const uint32_t last_k = target - window_begin > cap ? target - cap : window_begin;
  if (mode == DataConfig::LAST_K || target == window_begin) return last_k;
  // Walk back from the newest behaviour while the gap to the previous one is small. A gap that
  // does not fit an int64 (times at the ends of its range) is taken as a double instead.
  uint32_t begin = target - 1;
  while (begin > last_k) {
    int64_t gap;
    const double seconds = __builtin_sub_overflow(times[begin], times[begin - 1], &gap)
                               ? static_cast<double>(times[begin]) - static_cast<double>(times[begin - 1])
                               : static_cast<double>(gap);
    if (seconds > gap_s) break;
    --begin;
  }
  return begin;
}

SplitOptions MakeSplitOptions(const DataConfig& config) {
  SplitOptions o;
  o.protocol = config.split();
  o.window = config.max_seq_len();
  o.session_len = config.session_len();
  o.session_mode = config.session_mode();
  o.session_gap_s = config.session_gap_s();
  o.paper_targets_per_user = config.paper_targets_per_user();
  o.paper_eval_targets_per_user = config.paper_eval_targets_per_user();
  o.paper_eval_target = config.paper_eval_target();
  o.seed = config.seed();
  return o;
}

bool UserTargets(const SplitOptions& o, int64_t user, Split paper_group, absl::Span<const int64_t> times,
                 std::array<std::vector<TargetRef>, kNumSplits>* out) {
  for (auto& v : *out) v.clear();
  const uint32_t len = static_cast<uint32_t>(times.size());
  const uint32_t n = static_cast<uint32_t>(o.window);
  auto add = [&](Split s, uint32_t t) {
    const uint32_t window_begin = t > n ? t - n : 0;
    (*out)[s].push_back({t, SessionBegin(times, window_begin, t, o.session_mode, o.session_gap_s, o.session_len)});
  };
  switch (o.protocol) {
    case DataConfig::PAPER: {
      if (len < 2) return false;
      const bool eval_user = paper_group != kTrain;
      if (len <= n || (eval_user && o.paper_eval_target == DataConfig::LAST)) {
        add(paper_group, len - 1);  // short users, and eval users under LAST: the last item
        return true;
      }
      // Up to m distinct positions in [n, len - 1]: a partial Fisher-Yates over the candidates
      // (so a smaller m draws a prefix of a larger m's positions).
      const uint32_t candidates = len - n;
      const uint32_t m = std::min<uint32_t>(
          candidates, static_cast<uint32_t>(eval_user ? o.paper_eval_targets_per_user : o.paper_targets_per_user));
      SplitMix64 rng(HashCombine(o.seed ^ 0x7061706572ULL, static_cast<uint64_t>(user)));
      std::vector<uint32_t> pos(candidates);
      std::iota(pos.begin(), pos.end(), n);
      for (uint32_t i = 0; i < m; ++i) {
        const uint32_t j = i + static_cast<uint32_t>(rng.Next() % (candidates - i));
        std::swap(pos[i], pos[j]);
      }
      pos.resize(m);
      std::sort(pos.begin(), pos.end());
      for (uint32_t t : pos) add(paper_group, t);
      return true;
    }
    case DataConfig::LAST_ITEM: {
      if (len < 3) return false;
      for (uint32_t t = 1; t + 2 < len; ++t) add(kTrain, t);
      add(kValid, len - 2);
      add(kTest, len - 1);
      return true;
    }
    case DataConfig::GLOBAL_TIME: {
      if (len < 2) return false;
      for (uint32_t t = 1; t < len; ++t) {
        add(times[t] < o.valid_cut ? kTrain : times[t] < o.test_cut ? kValid : kTest, t);
      }
      return true;
    }
    default:
      return false;
  }
}

std::vector<Split> PaperGroups(size_t num_users, double train_fraction, double valid_fraction, uint64_t seed) {
  std::vector<uint32_t> perm(num_users);
  std::iota(perm.begin(), perm.end(), 0u);
  SplitMix64 rng(HashCombine(seed, 0x7573657273ULL));
  for (size_t i = num_users; i > 1; --i) std::swap(perm[i - 1], perm[rng.Next() % i]);
  const size_t n_train = static_cast<size_t>(train_fraction * static_cast<double>(num_users) + 0.5);
  const size_t n_valid =
      std::min(num_users - n_train, static_cast<size_t>(valid_fraction * static_cast<double>(num_users) + 0.5));
  std::vector<Split> out(num_users, kTest);
  for (size_t r = 0; r < num_users; ++r) {
    out[perm[r]] = r < n_train ? kTrain : r < n_train + n_valid ? kValid : kTest;
  }
  return out;
}

Split PaperGroupOfUser(int64_t user, double train_fraction, double valid_fraction, uint64_t seed) {
  const double u = static_cast<double>(HashCombine(seed ^ 0x7573657273ULL, static_cast<uint64_t>(user)) >> 11) *
                   (1.0 / 9007199254740992.0);
  return u < train_fraction ? kTrain : u < train_fraction + valid_fraction ? kValid : kTest;
}

absl::Status WriteUserTargets(SampleFileWriter* writer, int64_t user, absl::Span<const int64_t> items,
                              absl::Span<const int64_t> times, absl::Span<const absl::Span<const int64_t>> tags,
                              absl::Span<const TargetRef> targets, int window,
                              absl::Span<const int64_t> user_features) {
  if (targets.empty()) return absl::OkStatus();
  const uint32_t n = static_cast<uint32_t>(window);
  const uint32_t first = targets.front().target;
  uint32_t begin = first > n ? first - n : 0;
  // The first target's session may start before its window only if k > n; keep it inside.
  for (const TargetRef& t : targets) begin = std::min(begin, t.session_begin);
  const uint32_t end = targets.back().target + 1;
  std::vector<TargetRef> rebased(targets.begin(), targets.end());
  for (TargetRef& t : rebased) {
    t.target -= begin;
    t.session_begin -= begin;
  }
  return writer->AddUser(user, items.subspan(begin, end - begin), times.subspan(begin, end - begin),
                         tags.subspan(begin, end - begin), rebased, user_features);
}

}  // namespace t2d::data
