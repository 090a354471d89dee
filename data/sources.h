#pragma once
// Readers that turn raw interaction logs into a flat list of positive interactions plus the
// items' tags. Supported sources (DataConfig.source): MovieLens ratings.dat (+ movies.dat),
// MovieLens-100k u.data (+ u.item, u.genre), the ml-1m one-line-per-user sequence file,
// MovieTweetings, KuaiRand log CSVs (+ video_features_basic), and a generic CSV/TSV whose
// columns are named in DataConfig.csv. Inputs may be gzip-compressed.
//
// Errors: a malformed line (among them a rating or label that is not a finite number, and a
// decimal time that is not finite or, in seconds, outside the int64 range) is InvalidArgument
// "FILE:LINE: what" unless skip_bad_lines is set,
// in which case it is counted in InteractionLog::bad_lines (first examples kept). Missing or
// unreadable files, unknown columns and damaged gzip streams are errors naming the file.
// Thread-safety: pure functions.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "data/data_config.pb.h"

namespace t2d::data {

struct Interaction {
  int64_t user = 0;
  int64_t item = 0;
  // Seconds since the epoch; for sources without timestamps, the position in the user's
  // sequence.
  int64_t time = 0;
};

struct BadLines {
  int64_t count = 0;
  std::vector<std::string> examples;  // "FILE:LINE: what", the first kMaxExamples
  static constexpr size_t kMaxExamples = 5;
};

struct InteractionLog {
  std::vector<Interaction> interactions;  // positives, in input order
  bool has_timestamps = true;
  // Tags per item (ids: raw integers, or 1..V into tag_names when the source has names).
  absl::flat_hash_map<int64_t, std::vector<int64_t>> item_tags;
  std::vector<std::string> tag_names;
  int64_t rows_read = 0;      // data rows parsed
  int64_t rows_filtered = 0;  // dropped by the positives / column filters
  int64_t empty_users = 0;    // users with rows but no positive
  BadLines bad_lines;
  // CSV / KuaiRand without a user file: profile fields read from the interaction file's
  // csv.user_feature_columns, each user's keys (UserFeatureKey) in field order; a field keeps
  // the last non-empty value of the user's rows in file order. Empty names: none.
  std::vector<std::string> user_feature_names;
  absl::flat_hash_map<int64_t, std::vector<int64_t>> user_features;
};

// Reads the source described by `config` (source, input_paths, item_path, csv, min_rating,
// first_tag_only, skip_bad_lines) into memory.
absl::StatusOr<InteractionLog> ReadSource(const config::DataConfig& config);

// Where ReadSourceRows puts each data row, in input order, with whether it passed the positives
// filter. An error status ends the read and is returned.
using RowSink = absl::FunctionRef<absl::Status(const Interaction& row, bool positive)>;

// ReadSource for logs larger than memory: every row goes to `sink`; `*log` gets everything else
// (tags, counts, bad lines, has_timestamps) but neither interactions nor empty_users.
absl::Status ReadSourceRows(const config::DataConfig& config, RowSink sink, InteractionLog* log);

// What ReadUserFile hands over for each user line: the user id and the text of each profile
// field (trimmed; empty: no value), in the order of the field names.
using UserRowSink = absl::FunctionRef<absl::Status(int64_t user, absl::Span<const absl::string_view> values)>;

// Reads DataConfig.user_path by the layout of DataConfig.source (data/user_profiles.h): sets
// *fields to the profile field names, then calls `sink` for every user line. Malformed lines
// are errors "FILE:LINE: what", or counted into *bad with skip_bad_lines; an error status from
// `sink` ends the read.
absl::Status ReadUserFile(const config::DataConfig& config, BadLines* bad, std::vector<std::string>* fields,
                          UserRowSink sink);

// Splits one delimited line into fields, honouring double quotes ("a,b" and "" inside quotes).
// Returns false for an unterminated quote. Fields point into `line` or into `storage`.
bool SplitCsvLine(absl::string_view line, char delimiter, std::vector<absl::string_view>* fields,
                  std::vector<std::string>* storage);

// Name of a source kind ("MOVIELENS_DAT", ...).
std::string SourceName(config::DataConfig::SourceKind kind);

}  // namespace t2d::data
