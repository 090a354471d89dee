#include "data/sample_reader.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/hash.h"
#include "common/status_macros.h"
#include "data/prepare.h"

namespace t2d::data {
namespace {

constexpr int64_t kUnshuffledWindow = 1 << 16;

uint64_t StreamSeed(uint64_t seed, int64_t epoch, int rank, int world, uint64_t salt) {
  uint64_t h = HashCombine(seed, static_cast<uint64_t>(epoch));
  h = HashCombine(h, static_cast<uint64_t>(rank));
  h = HashCombine(h, static_cast<uint64_t>(world));
  return HashCombine(h, salt);
}

}  // namespace

SampleReader::~SampleReader() = default;

absl::StatusOr<std::unique_ptr<SampleReader>> SampleReader::Open(const std::string& dataset_dir,
                                                                 const ReaderOptions& options) {
  std::unique_ptr<SampleReader> r(new SampleReader());
  r->options_ = options;
  T2D_ASSIGN_OR_RETURN(r->manifest_, ReadManifest(dataset_dir));
  const DatasetManifest& m = r->manifest_;
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("reader: rank ", options.rank, " outside world size ", options.world_size));
  }
  if (options.batch_size < 1) return absl::InvalidArgumentError("reader: batch_size must be >= 1");
  if (options.max_seq_len < 0 || options.max_seq_len > m.window()) {
    return absl::InvalidArgumentError(absl::StrCat("reader: max_seq_len ", options.max_seq_len,
                                                   " exceeds the data set's window ", m.window(), " (prepare again)"));
  }
  r->n_ = options.max_seq_len > 0 ? options.max_seq_len : m.window();
  r->t_ = options.max_tags > 0 ? options.max_tags : std::max(1, m.max_tags_per_item());
  r->f_ = m.user_feature_names_size();
  const DatasetManifest::Split* split = nullptr;
  for (const auto& s : m.splits()) {
    if (s.name() == options.split) split = &s;
  }
  if (split == nullptr) return absl::InvalidArgumentError(absl::StrCat("reader: no split \"", options.split, "\""));
  const int num_shards = split->shard_files_size();
  if (num_shards < options.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("reader: split ", options.split, " has ", num_shards,
                                                   " shards, fewer than the ", options.world_size,
                                                   " workers; prepare with data.num_shards >= workers"));
  }
  std::vector<int64_t> per_rank(options.world_size, 0);
  for (int s = 0; s < num_shards; ++s) per_rank[s % options.world_size] += split->shard_samples(s);
  for (int s = options.rank; s < num_shards; s += options.world_size) {
    const std::string path = (std::filesystem::path(dataset_dir) / split->shard_files(s)).string();
    T2D_ASSIGN_OR_RETURN(auto f, SampleFileReader::Open(path));
    const SampleFileHeader& h = f->header();
    if (h.kind() != SampleFileHeader::SAMPLES || h.dataset_id() != m.dataset_id() || h.split() != options.split ||
        h.shard_index() != s || f->total_samples() != split->shard_samples(s) || h.user_fields() != r->f_) {
      return absl::DataLossError(absl::StrCat(path, ": does not match ", kManifestFile,
                                              " (other data set, split, shard, sample count or profile fields)"));
    }
    const int fi = static_cast<int>(r->files_.size());
    for (int c = 0; c < f->num_chunks(); ++c) r->chunks_.push_back({fi, c, f->chunk_samples(c)});
    r->stream_len_ += f->total_samples();
    r->files_.push_back(std::move(f));
  }
  r->epoch_len_ = options.equal_epochs ? *std::min_element(per_rank.begin(), per_rank.end()) : r->stream_len_;
  r->window_ = options.shuffle_buffer > 0 ? options.shuffle_buffer : kUnshuffledWindow;
  r->StartEpoch(0);
  return r;
}

void SampleReader::StartEpoch(int64_t epoch) {
  epoch_ = epoch;
  position_ = 0;
  loaded_window_ = -1;
  order_.resize(chunks_.size());
  for (size_t i = 0; i < order_.size(); ++i) order_[i] = static_cast<int>(i);
  if (options_.shuffle_buffer > 0) {
    SplitMix64 rng(StreamSeed(options_.seed, epoch, options_.rank, options_.world_size, 0x63686e6bULL));
    for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[rng.Next() % i]);
  }
  prefix_.assign(1, 0);
  for (int c : order_) prefix_.push_back(prefix_.back() + chunks_[c].samples);
}

absl::Status SampleReader::LoadWindow(int64_t w) {
  const int64_t begin = w * window_;
  const int64_t end = std::min(stream_len_, begin + window_);
  // Chunks (positions in order_) overlapping [begin, end).
  const int first = static_cast<int>(std::upper_bound(prefix_.begin(), prefix_.end(), begin) - prefix_.begin()) - 1;
  std::vector<int> new_chunk;
  std::vector<std::unique_ptr<DecodedChunk>> new_loaded;
  refs_.clear();
  for (int k = first; k < static_cast<int>(order_.size()) && prefix_[k] < end; ++k) {
    const int c = order_[k];
    std::unique_ptr<DecodedChunk> d;
    for (size_t s = 0; s < loaded_chunk_.size(); ++s) {
      if (loaded_chunk_[s] == c && loaded_[s] != nullptr) d = std::move(loaded_[s]);
    }
    if (d == nullptr) {
      d = std::make_unique<DecodedChunk>();
      T2D_RETURN_IF_ERROR(files_[chunks_[c].file]->ReadChunk(chunks_[c].chunk, d.get()));
    }
    const uint32_t slot = static_cast<uint32_t>(new_loaded.size());
    const int64_t lo = std::max(begin, prefix_[k]) - prefix_[k];
    const int64_t hi = std::min(end, prefix_[k + 1]) - prefix_[k];
    for (int64_t i = lo; i < hi; ++i) refs_.push_back({slot, static_cast<uint32_t>(i)});
    new_chunk.push_back(c);
    new_loaded.push_back(std::move(d));
  }
  loaded_chunk_ = std::move(new_chunk);
  loaded_ = std::move(new_loaded);
  if (options_.shuffle_buffer > 0) {
    SplitMix64 rng(StreamSeed(options_.seed, epoch_, options_.rank, options_.world_size, 0x77696e00ULL + static_cast<uint64_t>(w)));
    for (size_t i = refs_.size(); i > 1; --i) std::swap(refs_[i - 1], refs_[rng.Next() % i]);
  }
  loaded_window_ = w;
  return absl::OkStatus();
}

void ResizeSampleBatch(int size, int n, int T, int F, SampleBatch* batch) {
  const size_t B = static_cast<size_t>(size), N = static_cast<size_t>(n), TT = static_cast<size_t>(T);
  batch->size = size;
  batch->max_seq_len = n;
  batch->max_tags = T;
  batch->user_fields = F;
  batch->user_id.resize(B);
  batch->user_feature.resize(B * static_cast<size_t>(F));
  batch->history_id.resize(B * N);
  batch->history_len.resize(B);
  batch->session_begin.resize(B);
  batch->history_time.resize(B * N);
  batch->time_lag.resize(B * N);
  batch->history_tag.resize(B * N * TT);
  batch->history_tag_count.resize(B * N);
  batch->target_id.resize(B);
  batch->target_time.resize(B);
  batch->target_tag.resize(B * TT);
  batch->target_tag_count.resize(B);
}

void FillHistory(const HistoryWindow& w, int b, SampleBatch* batch) {
  const int n = batch->max_seq_len, T = batch->max_tags, len = w.len;
  batch->user_id[b] = w.user;
  int64_t* features = batch->user_feature.data() + static_cast<size_t>(b) * static_cast<size_t>(batch->user_fields);
  if (w.user_feature != nullptr) {
    std::copy_n(w.user_feature, batch->user_fields, features);
  } else {
    std::fill_n(features, batch->user_fields, 0);
  }
  batch->history_len[b] = len;
  batch->session_begin[b] = w.session_begin;
  batch->target_time[b] = w.target_time;
  const size_t row = static_cast<size_t>(b) * n;
  int64_t* ids = batch->history_id.data() + row;
  int64_t* times = batch->history_time.data() + row;
  float* lag = batch->time_lag.data() + row;
  int32_t* counts = batch->history_tag_count.data() + row;
  int64_t* tags = batch->history_tag.data() + row * T;
  std::copy_n(w.items, len, ids);
  std::copy_n(w.times, len, times);
  for (int j = 0; j < len; ++j) {
    // A lag that does not fit an int64 (times at the ends of its range) is taken as a double.
    int64_t d;
    lag[j] = __builtin_sub_overflow(w.target_time, times[j], &d)
                 ? static_cast<float>(static_cast<double>(w.target_time) - static_cast<double>(times[j]))
                 : static_cast<float>(d);
    const uint32_t tb = w.tag_begin[j];
    const int cnt = std::min<int>(static_cast<int>(w.tag_begin[j + 1] - tb), T);
    counts[j] = cnt;
    int64_t* dst = tags + static_cast<size_t>(j) * T;
    std::copy_n(w.tags + tb, cnt, dst);  // not memcpy: tags may be empty, the pointer null
    std::fill(dst + cnt, dst + T, 0);
  }
  std::fill(ids + len, ids + n, 0);
  std::fill(times + len, times + n, 0);
  std::fill(lag + len, lag + n, 0.0f);
  std::fill(counts + len, counts + n, 0);
  std::fill(tags + static_cast<size_t>(len) * T, tags + static_cast<size_t>(n) * T, 0);
}

void SampleReader::FillSample(const DecodedChunk& c, const DecodedChunk::Sample& s, int b, SampleBatch* batch) const {
  const int n = n_, T = t_;
  const uint32_t user_begin = c.user_begin[s.record];
  const uint32_t wb = s.target - user_begin > static_cast<uint32_t>(n) ? s.target - static_cast<uint32_t>(n) : user_begin;
  HistoryWindow w;
  w.user = c.user_ids[s.record];
  w.items = c.items.data() + wb;
  w.times = c.times.data() + wb;
  w.tag_begin = c.tag_begin.data() + wb;
  w.tags = c.tags.data();
  w.len = static_cast<int>(s.target - wb);
  w.session_begin = static_cast<int32_t>(std::max(s.session_begin, wb) - wb);
  w.target_time = c.times[s.target];
  if (f_ > 0) w.user_feature = c.user_features.data() + static_cast<size_t>(s.record) * static_cast<size_t>(f_);
  FillHistory(w, b, batch);
  batch->target_id[b] = c.items[s.target];
  const uint32_t tb = c.tag_begin[s.target];
  const int cnt = std::min<int>(static_cast<int>(c.tag_begin[s.target + 1] - tb), T);
  batch->target_tag_count[b] = cnt;
  int64_t* tt = batch->target_tag.data() + static_cast<size_t>(b) * T;
  std::copy_n(c.tags.data() + tb, cnt, tt);
  std::fill(tt + cnt, tt + T, 0);
}

absl::StatusOr<bool> SampleReader::Next(SampleBatch* batch) {
  const int B = options_.batch_size;
  ResizeSampleBatch(B, n_, t_, f_, batch);
  int b = 0;
  while (true) {
    if (options_.epochs > 0 && epoch_ >= options_.epochs) break;
    if (position_ >= epoch_len_) {
      if (b > 0 && !options_.drop_last) break;
      b = 0;  // drop_last: the short tail is dropped
      if (epoch_len_ == 0 && options_.epochs == 0) {
        return absl::FailedPreconditionError(absl::StrCat("reader: split ", options_.split, " has no samples for rank ",
                                                          options_.rank, "; an endless reader would never return"));
      }
      StartEpoch(epoch_ + 1);
      continue;
    }
    const int64_t w = position_ / window_;
    if (w != loaded_window_) T2D_RETURN_IF_ERROR(LoadWindow(w));
    const SampleRef& ref = refs_[static_cast<size_t>(position_ - w * window_)];
    const DecodedChunk& chunk = *loaded_[ref.slot];
    FillSample(chunk, chunk.samples[ref.sample], b, batch);
    ++position_;
    if (++b == B) break;
  }
  // Shrink the per-sample arrays to the real batch size.
  if (b < B) ResizeSampleBatch(b, n_, t_, f_, batch);
  batch->size = b;
  return b > 0;
}

ReaderCursor SampleReader::cursor() const {
  ReaderCursor c;
  c.set_epoch(epoch_);
  c.set_position(position_);
  c.set_dataset_id(manifest_.dataset_id());
  c.set_split(options_.split);
  c.set_rank(options_.rank);
  c.set_world_size(options_.world_size);
  c.set_shuffle_buffer(options_.shuffle_buffer);
  c.set_seed(options_.seed);
  return c;
}

absl::Status SampleReader::Restore(const ReaderCursor& c) {
  if (c.dataset_id() != manifest_.dataset_id() || c.split() != options_.split || c.rank() != options_.rank ||
      c.world_size() != options_.world_size || c.shuffle_buffer() != options_.shuffle_buffer || c.seed() != options_.seed) {
    return absl::FailedPreconditionError(absl::StrCat("reader: cursor {", c.ShortDebugString(), "} belongs to another data set or "
                                                      "reader configuration (now: {", cursor().ShortDebugString(), "})"));
  }
  if (c.epoch() < 0 || c.position() < 0 || c.position() > epoch_len_) {
    return absl::InvalidArgumentError(absl::StrCat("reader: cursor position ", c.position(), " outside the epoch of ",
                                                   epoch_len_, " samples"));
  }
  StartEpoch(c.epoch());
  position_ = c.position();
  return absl::OkStatus();
}

}  // namespace t2d::data
