#include "data/prepare.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/hash.h"
#include "common/status_macros.h"
#include "data/generator.h"
#include "data/shard_set.h"
#include "data/sources.h"
#include "data/user_profiles.h"
#include "data/user_sort.h"
#include "google/protobuf/text_format.h"

namespace t2d::data {

using config::DataConfig;
namespace fs = std::filesystem;

std::string ShardFileName(const std::string& split, int shard, int num_shards) {
  return absl::StrFormat("%s-%05d-of-%05d.t2ds", split, shard, num_shards);
}

uint64_t DatasetId(const DataConfig& config) {
  // The sort buffer changes how prepare runs, not what it writes.
  DataConfig identity = config;
  identity.clear_prepare_buffer_mb();
  return Mix64(std::hash<std::string>()(identity.SerializeAsString()));
}

absl::Status PrepareOutputDir(const std::string& dir, bool force) {
  if (dir.empty()) return absl::InvalidArgumentError("data.dataset_dir: empty; say where the prepared data set goes");
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    if (!fs::is_directory(dir, ec)) return absl::InvalidArgumentError(absl::StrCat(dir, ": exists and is not a folder"));
    std::vector<fs::path> ours;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string name = e.path().filename().string();
      if (name == kManifestFile || absl::EndsWith(name, ".t2ds") || absl::EndsWith(name, ".t2ds.tmp")) {
        ours.push_back(e.path());
      } else if (absl::StartsWith(name, kScratchPrefix) && absl::EndsWith(name, ".tmp")) {
        fs::remove(e.path(), ec);  // sort runs of a prepare that was killed
        ec.clear();
      }
    }
    if (ec) return absl::PermissionDeniedError(absl::StrCat(dir, ": cannot list: ", ec.message()));
    if (!ours.empty() && !force) {
      return absl::AlreadyExistsError(absl::StrCat(dir, ": already holds a prepared data set (", ours.front().filename().string(),
                                                   "...); pass --force to overwrite it"));
    }
    // The manifest goes first so that an interrupted removal never leaves a "complete" set.
    std::sort(ours.begin(), ours.end(), [](const fs::path& a, const fs::path& b) {
      return (a.filename() == kManifestFile) > (b.filename() == kManifestFile);
    });
    for (const auto& p : ours) {
      if (!fs::remove(p, ec) || ec) return absl::PermissionDeniedError(absl::StrCat(p.string(), ": cannot remove: ", ec.message()));
    }
  }
  fs::create_directories(dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(dir, ": cannot create: ", ec.message()));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ShardSetWriter>> ShardSetWriter::Create(const DataConfig& config, uint64_t dataset_id,
                                                                        int user_fields) {
  auto w = std::make_unique<ShardSetWriter>();
  w->user_fields_ = user_fields;
  w->dir_ = config.dataset_dir();
  w->num_shards_ = config.num_shards();
  w->window_ = config.max_seq_len();
  w->chunk_bytes_ = static_cast<size_t>(config.chunk_bytes());
  w->dataset_id_ = dataset_id;
  for (int s = 0; s < kNumSplits; ++s) {
    w->writers_[s].resize(w->num_shards_);
    w->samples_[s].assign(w->num_shards_, 0);
  }
  w->finished_.assign(w->num_shards_, 0);
  SampleFileHeader h;
  h.set_kind(SampleFileHeader::ITEMS);
  h.set_dataset_id(dataset_id);
  T2D_ASSIGN_OR_RETURN(w->items_, SampleFileWriter::Create((fs::path(w->dir_) / kItemsFile).string(), h, w->chunk_bytes_));
  return w;
}

SampleFileHeader ShardSetWriter::Header(Split split, int shard) const {
  SampleFileHeader h;
  h.set_kind(SampleFileHeader::SAMPLES);
  h.set_split(kSplitNames[split]);
  h.set_shard_index(shard);
  h.set_num_shards(num_shards_);
  h.set_window(window_);
  h.set_dataset_id(dataset_id_);
  if (user_fields_ > 0) h.set_user_fields(user_fields_);
  return h;
}

absl::StatusOr<SampleFileWriter*> ShardSetWriter::writer(Split split, int shard) {
  if (finished_[shard]) return absl::InternalError(absl::StrCat("shard ", shard, " written after it was finished"));
  auto& w = writers_[split][shard];
  if (w == nullptr) {
    const std::string path = (fs::path(dir_) / ShardFileName(kSplitNames[split], shard, num_shards_)).string();
    T2D_ASSIGN_OR_RETURN(w, SampleFileWriter::Create(path, Header(split, shard), chunk_bytes_));
  }
  return w.get();
}

absl::Status ShardSetWriter::FinishShard(int shard) {
  if (finished_[shard]) return absl::OkStatus();
  for (int s = 0; s < kNumSplits; ++s) {
    T2D_ASSIGN_OR_RETURN(SampleFileWriter * w, writer(static_cast<Split>(s), shard));
    T2D_RETURN_IF_ERROR(w->Finish());
    samples_[s][shard] = w->samples();
    writers_[s][shard].reset();
  }
  finished_[shard] = 1;
  return absl::OkStatus();
}

absl::Status ShardSetWriter::Finish(DatasetManifest* manifest) {
  for (int i = 0; i < num_shards_; ++i) T2D_RETURN_IF_ERROR(FinishShard(i));
  manifest->clear_splits();
  for (int s = 0; s < kNumSplits; ++s) {
    auto* split = manifest->add_splits();
    split->set_name(kSplitNames[s]);
    int64_t total = 0;
    for (int i = 0; i < num_shards_; ++i) {
      split->add_shard_files(ShardFileName(kSplitNames[s], i, num_shards_));
      split->add_shard_samples(samples_[s][i]);
      total += samples_[s][i];
    }
    split->set_samples(total);
  }
  T2D_RETURN_IF_ERROR(items_->Finish());
  manifest->set_items_file(kItemsFile);
  return absl::OkStatus();
}

void FillManifestOptions(const DataConfig& config, uint64_t dataset_id, DatasetManifest* m) {
  m->set_format_version(static_cast<int32_t>(kSampleFormatVersion));
  m->set_dataset_id(dataset_id);
  m->set_window(config.max_seq_len());
  m->set_session_len(config.session_len());
  m->set_session_mode(DataConfig::SessionMode_Name(config.session_mode()));
  m->set_session_gap_s(config.session_gap_s());
  m->set_split_protocol(DataConfig::SplitProtocol_Name(config.split()));
  m->set_sequence_order(DataConfig::SequenceOrder_Name(config.sequence_order()));
}

absl::Status WriteManifest(const std::string& dir, const DatasetManifest& manifest) {
  std::string text;
  google::protobuf::TextFormat::PrintToString(manifest, &text);
  return WriteFileAtomic((fs::path(dir) / kManifestFile).string(),
                         "# Written by t2diff prepare; see docs/data-format.md.\n" + text);
}

absl::StatusOr<DatasetManifest> ReadManifest(const std::string& dataset_dir) {
  const std::string path = (fs::path(dataset_dir) / kManifestFile).string();
  auto text = ReadFileToString(path);
  if (!text.ok()) {
    if (absl::IsNotFound(text.status())) {
      return absl::NotFoundError(absl::StrCat(path, ": no prepared data set here (run t2diff prepare)"));
    }
    return text.status();
  }
  DatasetManifest m;
  if (!google::protobuf::TextFormat::ParseFromString(*text, &m)) {
    return absl::DataLossError(absl::StrCat(path, ": unreadable manifest"));
  }
  if (m.format_version() < static_cast<int32_t>(kOldestSampleFormatVersion) ||
      m.format_version() > static_cast<int32_t>(kSampleFormatVersion)) {
    return absl::FailedPreconditionError(absl::StrCat(path, ": format version ", m.format_version(), ", this build reads versions ",
                                                      kOldestSampleFormatVersion, " to ", kSampleFormatVersion));
  }
  if (m.splits_size() != kNumSplits) return absl::DataLossError(absl::StrCat(path, ": expected 3 splits"));
  for (const auto& s : m.splits()) {
    if (s.shard_files_size() != s.shard_samples_size() || s.shard_files_size() == 0) {
      return absl::DataLossError(absl::StrCat(path, ": split ", s.name(), " has a bad shard list"));
    }
  }
  return m;
}

namespace {

absl::Status CheckDataConfig(const DataConfig& c) {
  if (c.source() == DataConfig::SOURCE_UNSET) {
    return absl::InvalidArgumentError("data.source: not set (MOVIELENS_DAT, MOVIELENS_100K, ML1M_SEQUENCES, "
                                      "MOVIETWEETINGS, KUAIRAND, CSV or SYNTHETIC)");
  }
  if (c.session_len() > c.max_seq_len()) {
    return absl::InvalidArgumentError(absl::StrCat("data.session_len: ", c.session_len(), " exceeds max_seq_len ", c.max_seq_len()));
  }
  if (c.split() == DataConfig::PAPER && c.train_user_fraction() + c.valid_user_fraction() > 1.0 + 1e-9) {
    return absl::InvalidArgumentError("data.valid_user_fraction: train_user_fraction + valid_user_fraction exceed 1");
  }
  if (c.sequence_order() == DataConfig::FILE && c.session_mode() == DataConfig::TIME_GAP) {
    return absl::InvalidArgumentError("data.session_mode: TIME_GAP needs time-ordered sequences (sequence_order FILE)");
  }
  if (c.split() == DataConfig::GLOBAL_TIME && c.valid_time_fraction() + c.test_time_fraction() >= 1.0) {
    return absl::InvalidArgumentError("data.test_time_fraction: valid_time_fraction + test_time_fraction must be < 1");
  }
  return absl::OkStatus();
}

// A raw log becomes a data set in bounded memory: its rows are grouped by user through an
// external sort (data/user_sort.h) and each user is written as it comes out, in ascending id
// order, so that neither the log nor its sequences are ever held whole. PAPER (which permutes
// the kept users) and GLOBAL_TIME (whose cut-offs are quantiles of the kept behaviours' times)
// read the sorted log once more before writing.
absl::StatusOr<PrepareSummary> PrepareFromFiles(const DataConfig& c, const std::chrono::steady_clock::time_point t0) {
  const bool by_time = c.sequence_order() == DataConfig::TIME;
  T2D_ASSIGN_OR_RETURN(auto sorter,
                       UserRowSorter::Create(c.dataset_dir(), int64_t{c.prepare_buffer_mb()} << 20, by_time));
  InteractionLog log;  // everything but the rows, which go to the sorter
  int64_t positives = 0;
  T2D_RETURN_IF_ERROR(ReadSourceRows(
      c,
      [&](const Interaction& row, bool positive) {
        positives += positive ? 1 : 0;
        return sorter->Add(row, positive);
      },
      &log));
  T2D_RETURN_IF_ERROR(sorter->Finish());
  UserProfiles profiles;
  if (!log.user_feature_names.empty()) {
    // Profile columns of the interaction file (csv.user_feature_columns without a user file).
    std::vector<int64_t> users, keys;
    users.reserve(log.user_features.size());
    for (const auto& [user, k] : log.user_features) {
      users.push_back(user);
      keys.insert(keys.end(), k.begin(), k.end());
    }
    log.user_features.clear();
    T2D_ASSIGN_OR_RETURN(profiles, UserProfiles::FromKeys(log.user_feature_names, std::move(users), std::move(keys)));
  } else {
    T2D_ASSIGN_OR_RETURN(profiles, UserProfiles::Read(c, &log.bad_lines));
  }
  // An input without a usable row, or whose users are all filtered out, would make a data set
  // of 0 users that only fails later, in training; say so here, naming the input.
  const std::string inputs = absl::StrJoin(c.input_paths(), ", ");
  if (log.rows_read == 0) {
    return absl::InvalidArgumentError(absl::StrCat(inputs, ": nothing usable was read (no data rows; ",
                                                   log.bad_lines.count, " bad lines skipped)"));
  }
  if (!log.has_timestamps && c.session_mode() == DataConfig::TIME_GAP) {
    return absl::FailedPreconditionError(absl::StrCat("data.session_mode: TIME_GAP needs timestamps; source ",
                                                      SourceName(c.source()), " has none (use LAST_K)"));
  }
  if (!log.has_timestamps && c.split() == DataConfig::GLOBAL_TIME) {
    return absl::FailedPreconditionError(absl::StrCat("data.split: GLOBAL_TIME needs timestamps; source ",
                                                      SourceName(c.source()), " has none"));
  }
  PrepareSummary summary;
  summary.set_source(SourceName(c.source()));
  summary.set_rows_read(log.rows_read);
  summary.set_rows_filtered(log.rows_filtered);
  summary.set_bad_lines(log.bad_lines.count);
  for (const auto& e : log.bad_lines.examples) summary.add_bad_line_examples(e);
  summary.set_sort_runs(sorter->runs());
  int64_t empty_users = 0;
  auto no_user_left = [&](int64_t too_short) {
    return absl::InvalidArgumentError(absl::StrCat(
        inputs, ": no user is left to prepare (", summary.input_users() + empty_users, " users read: ", empty_users,
        " without positives (", log.rows_filtered, " rows filtered by min_rating and the filters), ",
        summary.short_users_dropped(), " with fewer than min_seq_len ", c.min_seq_len(), " positives, ", too_short,
        " too short for the ", DataConfig::SplitProtocol_Name(c.split()), " split)"));
  };
  const size_t min_len = static_cast<size_t>(std::max(1, c.min_seq_len()));

  SplitOptions options = MakeSplitOptions(c);
  std::vector<Split> groups;
  if (c.split() == DataConfig::PAPER || c.split() == DataConfig::GLOBAL_TIME) {
    std::unique_ptr<Int64Spill> times;  // GLOBAL_TIME: the kept behaviours' times
    if (c.split() == DataConfig::GLOBAL_TIME) {
      T2D_ASSIGN_OR_RETURN(times, Int64Spill::Create((fs::path(c.dataset_dir()) /
                                                      absl::StrCat(kScratchPrefix, "times-", getpid(), ".tmp")).string()));
    }
    int64_t kept = 0;
    const absl::Status counted = sorter->ForEachUser([&](int64_t, absl::Span<const Interaction> rows, int64_t) -> absl::Status {
      if (rows.size() < min_len) return absl::OkStatus();
      ++kept;
      if (times) {
        for (const auto& x : rows) T2D_RETURN_IF_ERROR(times->Add(x.time));
      }
      return absl::OkStatus();
    });
    T2D_RETURN_IF_ERROR(counted);
    if (times) T2D_RETURN_IF_ERROR(times->Close());
    if (kept > 0 && times) {
      const int64_t n = times->count();
      auto quantile = [&](double q) {
        return KthSmallestInFile(times->path(), n, std::min(n - 1, static_cast<int64_t>(q * static_cast<double>(n))));
      };
      T2D_ASSIGN_OR_RETURN(options.valid_cut, quantile(1.0 - c.valid_time_fraction() - c.test_time_fraction()));
      T2D_ASSIGN_OR_RETURN(options.test_cut, quantile(1.0 - c.test_time_fraction()));
    }
    if (c.split() == DataConfig::PAPER) {
      groups = PaperGroups(static_cast<size_t>(kept), c.train_user_fraction(), c.valid_user_fraction(), c.seed());
    }
  }

  const uint64_t dataset_id = DatasetId(c);
  T2D_ASSIGN_OR_RETURN(auto out, ShardSetWriter::Create(c, dataset_id, profiles.num_fields()));
  const std::vector<int64_t> no_tags;
  int64_t without_profile = 0;  // kept users the user file does not list
  // Every item seen enters the catalogue; its count is its number of training targets (what the
  // popularity baseline, negative sampling and logQ may know: validation and test targets must
  // not leak into them).
  absl::flat_hash_map<int64_t, int64_t> item_counts;
  std::array<std::vector<TargetRef>, kNumSplits> targets;
  std::array<int64_t, kNumSplits> users_in{0, 0, 0};
  std::vector<absl::Span<const int64_t>> tags;
  int64_t too_short = 0;
  SequenceBuilder builder(c.min_seq_len(), &summary);
  UserSequence s;
  size_t u = 0;  // index of the kept user
  const absl::Status written = sorter->ForEachUser([&](int64_t user, absl::Span<const Interaction> rows, int64_t) -> absl::Status {
    if (rows.empty()) {
      ++empty_users;
      return absl::OkStatus();
    }
    if (!builder.Add(user, rows, &s)) return absl::OkStatus();
    const size_t index = u++;
    tags.clear();
    for (int64_t item : s.items) {
      item_counts.try_emplace(item, 0);
      auto it = log.item_tags.find(item);
      tags.emplace_back(it == log.item_tags.end() ? absl::Span<const int64_t>(no_tags) : absl::Span<const int64_t>(it->second));
    }
    if (!UserTargets(options, s.user, groups.empty() ? kTrain : groups[index], s.times, &targets)) {
      ++too_short;
      return absl::OkStatus();
    }
    for (const TargetRef& t : targets[kTrain]) ++item_counts[s.items[t.target]];
    absl::Span<const int64_t> profile;
    if (profiles.num_fields() > 0) {
      if (const int64_t* keys = profiles.Find(s.user)) {
        profile = absl::MakeConstSpan(keys, static_cast<size_t>(profiles.num_fields()));
      } else {
        ++without_profile;
      }
    }
    const int shard = static_cast<int>(Mix64(c.seed() ^ static_cast<uint64_t>(s.user)) % static_cast<uint64_t>(c.num_shards()));
    for (int sp = 0; sp < kNumSplits; ++sp) {
      if (targets[sp].empty()) continue;
      ++users_in[sp];
      T2D_ASSIGN_OR_RETURN(SampleFileWriter * w, out->writer(static_cast<Split>(sp), shard));
      T2D_RETURN_IF_ERROR(WriteUserTargets(w, s.user, s.items, s.times, tags, targets[sp], c.max_seq_len(), profile));
    }
    return absl::OkStatus();
  });
  T2D_RETURN_IF_ERROR(written);
  builder.Finish(positives, empty_users);
  if (builder.users() == 0) return no_user_left(0);
  // Nothing has been written yet but the .tmp files that `out` removes.
  if (users_in[kTrain] + users_in[kValid] + users_in[kTest] == 0) return no_user_left(too_short);
  std::vector<int64_t> ids;
  ids.reserve(item_counts.size());
  for (const auto& [id, count] : item_counts) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  int max_tags = 0;
  for (int64_t id : ids) {
    auto it = log.item_tags.find(id);
    const auto& t = it == log.item_tags.end() ? no_tags : it->second;
    max_tags = std::max(max_tags, static_cast<int>(t.size()));
    T2D_RETURN_IF_ERROR(out->items()->AddItem(id, t, item_counts[id]));
  }
  DatasetManifest manifest;
  FillManifestOptions(c, dataset_id, &manifest);
  manifest.set_has_timestamps(log.has_timestamps);
  manifest.set_max_tags_per_item(max_tags);
  for (const auto& n : log.tag_names) manifest.add_tag_names(n);
  for (const auto& f : profiles.fields()) manifest.add_user_feature_names(f);
  if (profiles.num_fields() > 0) {
    summary.set_profile_users(profiles.num_users());
    summary.set_users_without_profile(without_profile);
  }
  T2D_RETURN_IF_ERROR(out->Finish(&manifest));
  summary.set_users_too_short_for_split(too_short);
  summary.set_train_samples(manifest.splits(kTrain).samples());
  summary.set_valid_samples(manifest.splits(kValid).samples());
  summary.set_test_samples(manifest.splits(kTest).samples());
  summary.set_train_users(users_in[kTrain]);
  summary.set_valid_users(users_in[kValid]);
  summary.set_test_users(users_in[kTest]);
  summary.set_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  *manifest.mutable_summary() = summary;
  T2D_RETURN_IF_ERROR(WriteManifest(c.dataset_dir(), manifest));
  return summary;
}

}  // namespace

absl::StatusOr<PrepareSummary> Prepare(const config::DataConfig& c, bool force) {
  const auto t0 = std::chrono::steady_clock::now();
  T2D_RETURN_IF_ERROR(CheckDataConfig(c));
  T2D_RETURN_IF_ERROR(PrepareOutputDir(c.dataset_dir(), force));
  if (c.source() == DataConfig::SYNTHETIC) return GenerateDataset(c, t0);
  return PrepareFromFiles(c, t0);
}

std::string FormatSummary(const PrepareSummary& s) {
  std::string out = absl::StrFormat(
      "source %s: %d rows read, %d filtered, %d bad lines skipped\n"
      "input: %d users, %d items, %d positive interactions; %d users without positives, %d one-item users, "
      "%d users dropped as too short\n"
      "kept: %d users, %d items, %d interactions; length min %d / mean %.1f / max %d\n"
      "samples: train %d (%d users), valid %d (%d users), test %d (%d users); %d users too short for the split\n"
      "length histogram:",
      s.source(), s.rows_read(), s.rows_filtered(), s.bad_lines(), s.input_users(), s.input_items(), s.input_interactions(),
      s.empty_users(), s.one_item_users(), s.short_users_dropped(), s.users(), s.items(), s.interactions(), s.min_seq_len(),
      s.mean_seq_len(), s.max_seq_len(), s.train_samples(), s.train_users(), s.valid_samples(), s.valid_users(),
      s.test_samples(), s.test_users(), s.users_too_short_for_split());
  for (const auto& b : s.seq_len_histogram()) {
    if (b.hi() == 0) {
      absl::StrAppend(&out, " [", b.lo(), ",inf):", b.count());
    } else {
      absl::StrAppend(&out, " [", b.lo(), ",", b.hi(), "):", b.count());
    }
  }
  for (const auto& e : s.bad_line_examples()) absl::StrAppend(&out, "\nbad line: ", e);
  if (s.has_profile_users()) {
    absl::StrAppend(&out, "\nuser profiles: ", s.profile_users(), " users in the user file; ", s.users_without_profile(),
                    " users with samples are not in it (their profile values are missing)");
  }
  if (s.sort_runs() > 0) {
    absl::StrAppend(&out, "\ngrouped by user through ", s.sort_runs(), " sort runs on disk (data.prepare_buffer_mb)");
  }
  absl::StrAppend(&out, absl::StrFormat("\ntook %.2f s", s.seconds()));
  return out;
}

}  // namespace t2d::data
