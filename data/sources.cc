#include "data/sources.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>

#include "absl/container/flat_hash_set.h"
#include "absl/functional/function_ref.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "data/line_reader.h"
#include "data/user_profiles.h"

namespace t2d::data {
namespace {

using config::CsvFormat;
using config::DataConfig;

// Collects tag names while reading and numbers them 1..V by sorted name at the end, so that the
// ids do not depend on file order.
class TagVocab {
 public:
  int64_t Add(absl::string_view name) {
    auto [it, inserted] = index_.try_emplace(std::string(name), static_cast<int64_t>(names_.size()));
    if (inserted) names_.emplace_back(name);
    return it->second;
  }
  // Rewrites the provisional ids in `log->item_tags` and fills `log->tag_names`.
  void Finish(InteractionLog* log) {
    if (names_.empty()) return;
    std::vector<int64_t> order(names_.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return names_[a] < names_[b]; });
    std::vector<int64_t> final_id(names_.size());
    for (size_t r = 0; r < order.size(); ++r) final_id[order[r]] = static_cast<int64_t>(r) + 1;
    for (auto& [item, tags] : log->item_tags) {
      for (int64_t& t : tags) t = final_id[t];
    }
    log->tag_names.clear();
    for (int64_t o : order) log->tag_names.push_back(names_[o]);
  }

 private:
  absl::flat_hash_map<std::string, int64_t> index_;
  std::vector<std::string> names_;
};

// Reports a malformed line: an error, or (skip_bad_lines) a counted example.
class BadLineHandler {
 public:
  BadLineHandler(bool skip, BadLines* out) : skip_(skip), out_(out) {}
  absl::Status Report(const LineReader& r, const std::string& what) {
    std::string msg = absl::StrCat(r.Where(), ": ", what);
    if (!skip_) return absl::InvalidArgumentError(msg + " (set data.skip_bad_lines to skip such lines)");
    ++out_->count;
    if (out_->examples.size() < BadLines::kMaxExamples) out_->examples.push_back(std::move(msg));
    return absl::OkStatus();
  }

 private:
  bool skip_;
  BadLines* out_;
};

bool ParseInt(absl::string_view s, int64_t* v) { return absl::SimpleAtoi(absl::StripAsciiWhitespace(s), v); }
// Ratings and labels: SimpleAtod also takes "nan" and "inf", which no threshold sorts sensibly
// ("nan" >= min_rating is false, so a "nan" would read as a negative).
bool ParseFinite(absl::string_view s, double* v) {
  return absl::SimpleAtod(absl::StripAsciiWhitespace(s), v) && std::isfinite(*v);
}
// A decimal time in seconds (or milliseconds), truncated to whole seconds. Values that are not
// finite or do not fit an int64 are refused: the conversion of such a value is undefined (in
// practice INT64_MIN, which moved the row to the front of its user's sequence).
bool ParseTime(absl::string_view s, CsvFormat::TimeUnit unit, int64_t* time) {
  double t;
  if (!ParseFinite(s, &t)) return false;
  if (unit == CsvFormat::MILLISECONDS) t /= 1000.0;
  // [-2^63, 2^63) is exactly the doubles whose truncation fits an int64.
  if (!(t >= -0x1p63 && t < 0x1p63)) return false;
  *time = static_cast<int64_t>(t);
  return true;
}

std::string Quote(absl::string_view line) {
  if (line.size() > 80) return absl::StrCat("\"", line.substr(0, 80), "...\"");
  return absl::StrCat("\"", line, "\"");
}

// Shared state of one ReadSourceRows call.
struct Context {
  const DataConfig& config;
  InteractionLog* log;
  RowSink sink;
  BadLineHandler bad;
  TagVocab vocab;

  Context(const DataConfig& c, RowSink s, InteractionLog* l)
      : config(c), log(l), sink(s), bad(c.skip_bad_lines(), &l->bad_lines) {}

  absl::Status AddRow(int64_t user, int64_t item, int64_t time, bool positive) {
    ++log->rows_read;
    if (!positive) ++log->rows_filtered;
    return sink({user, item, time}, positive);
  }
  void SetTags(int64_t item, std::vector<int64_t> tags) {
    if (config.first_tag_only() && tags.size() > 1) tags.resize(1);
    log->item_tags.try_emplace(item, std::move(tags));
  }
  void Finish() { vocab.Finish(log); }
};

// What a line parser makes of one line: the empty string when the line is good, what is wrong
// with it when it is malformed, or an error status for a problem with the file itself (one that
// skip_bad_lines does not excuse, such as an unknown column).
using ParseResult = absl::StatusOr<std::string>;

// Hands every non-blank line of `path` to `parse`, which maps its fields into the log. Malformed
// lines are reported here, as "FILE:LINE: what", through `bad` (an error or, with
// skip_bad_lines, a counted example); without a handler (files that skip_bad_lines does not
// cover) every malformed line is an error. An error status from `parse` ends the read.
absl::Status ForEachLine(const std::string& path, BadLineHandler* bad,
                         absl::FunctionRef<ParseResult(absl::string_view line)> parse) {
  if (path.empty()) return absl::InvalidArgumentError("data: empty input path");
  T2D_ASSIGN_OR_RETURN(auto r, LineReader::Open(path));
  absl::string_view line;
  while (true) {
    T2D_ASSIGN_OR_RETURN(bool more, r->Next(&line));
    if (!more) return absl::OkStatus();
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    T2D_ASSIGN_OR_RETURN(std::string what, parse(line));
    if (what.empty()) continue;
    if (bad == nullptr) return absl::InvalidArgumentError(absl::StrCat(r->Where(), ": ", what));
    T2D_RETURN_IF_ERROR(bad->Report(*r, what));
  }
}

std::string Expected(absl::string_view format, absl::string_view line) {
  return absl::StrCat("expected ", format, ", got ", Quote(line));
}

// "user::item::rating::time" (MovieLens ratings.dat, MovieTweetings ratings.dat).
absl::Status ReadColonRatings(const std::string& path, Context* ctx) {
  return ForEachLine(path, &ctx->bad, [&](absl::string_view line) -> ParseResult {
    std::vector<absl::string_view> f = absl::StrSplit(line, "::");
    int64_t user, item, time;
    double rating;
    if (f.size() != 4 || !ParseInt(f[0], &user) || !ParseInt(f[1], &item) || !ParseFinite(f[2], &rating) ||
        !ParseInt(f[3], &time)) {
      return Expected("user::item::rating::timestamp", line);
    }
    T2D_RETURN_IF_ERROR(ctx->AddRow(user, item, time, rating >= ctx->config.min_rating()));
    return std::string();
  });
}

// "id::title::genre|genre" (movies.dat of MovieLens and MovieTweetings).
absl::Status ReadMoviesDat(const std::string& path, Context* ctx) {
  return ForEachLine(path, &ctx->bad, [&](absl::string_view line) -> ParseResult {
    const size_t first = line.find("::");
    const size_t last = line.rfind("::");
    int64_t item;
    if (first == absl::string_view::npos || first == last || !ParseInt(line.substr(0, first), &item)) {
      return Expected("id::title::genres", line);
    }
    std::vector<int64_t> tags;
    for (absl::string_view g : absl::StrSplit(line.substr(last + 2), '|', absl::SkipWhitespace())) {
      tags.push_back(ctx->vocab.Add(absl::StripAsciiWhitespace(g)));
    }
    ctx->SetTags(item, std::move(tags));
    return std::string();
  });
}

// u.data: "user<TAB>item<TAB>rating<TAB>time".
absl::Status ReadUData(const std::string& path, Context* ctx) {
  return ForEachLine(path, &ctx->bad, [&](absl::string_view line) -> ParseResult {
    std::vector<absl::string_view> f = absl::StrSplit(line, '\t');
    int64_t user, item, time;
    double rating;
    if (f.size() != 4 || !ParseInt(f[0], &user) || !ParseInt(f[1], &item) || !ParseFinite(f[2], &rating) ||
        !ParseInt(f[3], &time)) {
      return Expected("user<TAB>item<TAB>rating<TAB>timestamp", line);
    }
    T2D_RETURN_IF_ERROR(ctx->AddRow(user, item, time, rating >= ctx->config.min_rating()));
    return std::string();
  });
}

// u.item: "id|title|release|video release|url|19 genre flags"; genre names from u.genre next
// to it ("name|index"), or "genre<index>" without that file.
absl::Status ReadUItem(const std::string& path, Context* ctx) {
  constexpr int kGenres = 19;
  std::vector<std::string> names(kGenres);
  for (int i = 0; i < kGenres; ++i) names[i] = absl::StrCat("genre", i);
  const std::string genre_path = (std::filesystem::path(path).parent_path() / "u.genre").string();
  if (std::filesystem::exists(genre_path)) {
    // A bad u.genre line is always an error: skip_bad_lines covers records, not this mapping.
    T2D_RETURN_IF_ERROR(ForEachLine(genre_path, nullptr, [&](absl::string_view line) -> ParseResult {
      const size_t bar = line.rfind('|');
      int64_t index;
      if (bar == absl::string_view::npos || !ParseInt(line.substr(bar + 1), &index) || index < 0 || index >= kGenres) {
        return Expected("name|index (0..18)", line);
      }
      names[index] = std::string(line.substr(0, bar));
      return std::string();
    }));
  }
  return ForEachLine(path, &ctx->bad, [&](absl::string_view line) -> ParseResult {
    std::vector<absl::string_view> f = absl::StrSplit(line, '|');
    int64_t item;
    if (f.size() < 5 + kGenres || !ParseInt(f[0], &item)) return Expected("id|title|...|19 genre flags", line);
    std::vector<int64_t> tags;
    for (int g = 0; g < kGenres; ++g) {
      const absl::string_view flag = f[f.size() - kGenres + g];
      if (flag == "1") {
        tags.push_back(ctx->vocab.Add(names[g]));
      } else if (flag != "0") {
        return Expected("id|title|...|19 genre flags", line);
      }
    }
    ctx->SetTags(item, std::move(tags));
    return std::string();
  });
}

// "user item item ..." per line, in time order; times become positions.
absl::Status ReadSequenceFile(const std::string& path, Context* ctx) {
  std::vector<int64_t> items;
  return ForEachLine(path, &ctx->bad, [&](absl::string_view line) -> ParseResult {
    std::vector<absl::string_view> f = absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    int64_t user;
    items.resize(f.size() < 2 ? 0 : f.size() - 1);
    bool ok = f.size() >= 2 && ParseInt(f[0], &user);
    for (size_t i = 0; ok && i < items.size(); ++i) ok = ParseInt(f[i + 1], &items[i]);
    // A line is added whole or not at all.
    if (!ok) return Expected("\"user item item ...\" (integers)", line);
    for (size_t i = 0; i < items.size(); ++i) T2D_RETURN_IF_ERROR(ctx->AddRow(user, items[i], static_cast<int64_t>(i), true));
    return std::string();
  });
}

// Finds `name` in `header` (or, without header, reads it as a 0-based index).
absl::StatusOr<int> ColumnIndex(const std::string& path, const std::vector<std::string>& header, bool has_header,
                                const std::string& what, const std::string& name, int num_fields) {
  if (has_header) {
    for (size_t i = 0; i < header.size(); ++i) {
      if (header[i] == name) return static_cast<int>(i);
    }
    std::string known;
    for (const auto& h : header) absl::StrAppend(&known, known.empty() ? "" : ", ", h);
    return absl::InvalidArgumentError(absl::StrCat(path, ": unknown column \"", name, "\" for ", what,
                                                   " (columns: ", known, ")"));
  }
  int64_t index;
  if (!ParseInt(name, &index) || index < 0 || index >= num_fields) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": column \"", name, "\" for ", what,
                                                   " must be an index 0..", num_fields - 1, " (file has no header)"));
  }
  return static_cast<int>(index);
}

absl::StatusOr<char> Delimiter(const CsvFormat& csv) {
  const std::string& d = csv.delimiter();
  if (d == "\\t" || d == "\t") return '\t';
  if (d.size() != 1) return absl::InvalidArgumentError(absl::StrCat("data.csv.delimiter: expected one character, got \"", d, "\""));
  return d[0];
}

absl::Status ParseTags(absl::string_view field, const CsvFormat& csv, Context* ctx, std::vector<int64_t>* tags) {
  tags->clear();
  const std::string& sep = csv.tag_separator();
  std::vector<absl::string_view> parts =
      sep.empty() ? std::vector<absl::string_view>{field} : absl::StrSplit(field, sep, absl::SkipWhitespace());
  for (absl::string_view t : parts) {
    t = absl::StripAsciiWhitespace(t);
    if (t.empty()) continue;
    if (csv.tags_are_names()) {
      tags->push_back(ctx->vocab.Add(t));
    } else {
      int64_t v;
      if (!ParseInt(t, &v)) return absl::InvalidArgumentError(absl::StrCat("tag \"", t, "\" is not an integer"));
      tags->push_back(v);
    }
  }
  return absl::OkStatus();
}

// Resolves a reader's column by name (or, without a header, index): ColumnIndex on the file's
// first line.
using ColumnOf = absl::FunctionRef<absl::StatusOr<int>(const std::string& what, const std::string& name)>;
using CsvRow = absl::FunctionRef<ParseResult(const std::vector<absl::string_view>& fields, absl::string_view line,
                                             int num_fields)>;

// The line loop of every delimited file of `csv`'s format: at the first line `columns` resolves
// the reader's columns (an unknown one ends the read), then `row` gets each data line's fields
// (the header line is not one). Returns the first line's number of fields; -1: the file has no
// line.
absl::StatusOr<int> ForEachCsvRow(const std::string& path, const CsvFormat& csv, BadLineHandler* bad,
                                  absl::FunctionRef<absl::Status(ColumnOf col)> columns, CsvRow row) {
  T2D_ASSIGN_OR_RETURN(const char delim, Delimiter(csv));
  std::vector<absl::string_view> f;
  std::vector<std::string> storage, header;
  int num_fields = -1;
  T2D_RETURN_IF_ERROR(ForEachLine(path, bad, [&](absl::string_view line) -> ParseResult {
    if (!SplitCsvLine(line, delim, &f, &storage)) return std::string("unterminated quote");
    if (num_fields < 0) {
      num_fields = static_cast<int>(f.size());
      if (csv.has_header()) {
        for (auto h : f) header.emplace_back(absl::StripAsciiWhitespace(h));
      }
      if (absl::Status resolved = columns([&](const std::string& what, const std::string& name) {
            return ColumnIndex(path, header, csv.has_header(), what, name, num_fields);
          });
          !resolved.ok()) {
        return resolved;
      }
      if (csv.has_header()) return std::string();
    }
    return row(f, line, num_fields);
  }));
  return num_fields;
}

// A delimited file with a header (or index-named columns).
absl::Status ReadCsv(const std::string& path, const CsvFormat& csv, Context* ctx) {
  int user_col = -1, item_col = -1, time_col = -1, label_col = -1, tags_col = -1;
  std::vector<std::pair<int, std::string>> filters;
  std::vector<int64_t> tags;
  absl::flat_hash_map<int64_t, int64_t> position;  // no time column: per-user running position
  // Profile columns of the interaction file itself (no user file).
  const bool profile_columns = ctx->config.user_path().empty() && csv.user_feature_columns_size() > 0;
  std::vector<int> profile_cols;
  InteractionLog& log = *ctx->log;
  auto columns = [&](ColumnOf col) -> absl::Status {
    T2D_ASSIGN_OR_RETURN(user_col, col("the user", csv.user_column()));
    T2D_ASSIGN_OR_RETURN(item_col, col("the item", csv.item_column()));
    if (!csv.time_column().empty()) { T2D_ASSIGN_OR_RETURN(time_col, col("the time", csv.time_column())); }
    if (!csv.label_column().empty()) { T2D_ASSIGN_OR_RETURN(label_col, col("the label", csv.label_column())); }
    if (!csv.tags_column().empty()) { T2D_ASSIGN_OR_RETURN(tags_col, col("the tags", csv.tags_column())); }
    for (const auto& flt : csv.filter()) {
      T2D_ASSIGN_OR_RETURN(int c, col("a filter", flt.column()));
      filters.emplace_back(c, flt.value());
    }
    if (profile_columns) {
      log.user_feature_names.clear();
      for (const std::string& name : csv.user_feature_columns()) {
        T2D_ASSIGN_OR_RETURN(int c, col("a profile field", name));
        profile_cols.push_back(c);
        log.user_feature_names.push_back(name);
      }
    }
    return absl::OkStatus();
  };
  auto row = [&](const std::vector<absl::string_view>& f, absl::string_view line, int num_fields) -> ParseResult {
    if (static_cast<int>(f.size()) != num_fields) return absl::StrCat("expected ", num_fields, " fields, got ", f.size());
    int64_t user, item, time = 0;
    double label = 1;
    if (!ParseInt(f[user_col], &user) || !ParseInt(f[item_col], &item)) {
      return absl::StrCat("user and item must be integers in ", Quote(line));
    }
    if (time_col >= 0 && !ParseTime(f[time_col], csv.time_unit(), &time)) {
      return absl::StrCat("time must be a finite number, in seconds within the int64 range, in ", Quote(line));
    }
    if (label_col >= 0 && !ParseFinite(f[label_col], &label)) {
      return absl::StrCat("label must be a finite number in ", Quote(line));
    }
    if (tags_col >= 0) {
      if (absl::Status s = ParseTags(f[tags_col], csv, ctx, &tags); !s.ok()) return std::string(s.message());
      ctx->SetTags(item, tags);
    }
    bool keep = label >= ctx->config.min_rating();
    for (const auto& [c, value] : filters) keep = keep && absl::StripAsciiWhitespace(f[c]) == value;
    if (time_col < 0) time = position[user]++;
    if (!profile_cols.empty()) {
      std::vector<int64_t>& keys = log.user_features[user];
      keys.resize(profile_cols.size(), 0);
      for (size_t i = 0; i < profile_cols.size(); ++i) {
        const absl::string_view v = absl::StripAsciiWhitespace(f[static_cast<size_t>(profile_cols[i])]);
        if (!v.empty()) keys[i] = UserFeatureKey(log.user_feature_names[i], std::string_view(v.data(), v.size()));
      }
    }
    if (absl::Status added = ctx->AddRow(user, item, time, keep); !added.ok()) return added;
    return std::string();
  };
  T2D_ASSIGN_OR_RETURN(const int num_fields, ForEachCsvRow(path, csv, &ctx->bad, columns, row));
  if (num_fields < 0) return absl::InvalidArgumentError(absl::StrCat(path, ": empty file"));
  if (time_col < 0) ctx->log->has_timestamps = false;
  return absl::OkStatus();
}

// Item file of a CSV source: item id column and tags column.
absl::Status ReadCsvItems(const std::string& path, const CsvFormat& csv, Context* ctx) {
  int id_col = -1, tags_col = -1;
  std::vector<int64_t> tags;
  auto columns = [&](ColumnOf col) -> absl::Status {
    T2D_ASSIGN_OR_RETURN(id_col, col("the item id", csv.item_id_column()));
    T2D_ASSIGN_OR_RETURN(tags_col, col("the item tags", csv.item_tags_column()));
    return absl::OkStatus();
  };
  auto row = [&](const std::vector<absl::string_view>& f, absl::string_view line, int num_fields) -> ParseResult {
    int64_t item;
    if (static_cast<int>(f.size()) != num_fields || !ParseInt(f[id_col], &item)) {
      return Expected(absl::StrCat(num_fields, " fields with an integer item id"), line);
    }
    if (absl::Status s = ParseTags(f[tags_col], csv, ctx, &tags); !s.ok()) return std::string(s.message());
    ctx->SetTags(item, tags);
    return std::string();
  };
  return ForEachCsvRow(path, csv, &ctx->bad, columns, row).status();
}

// KuaiRand's published column names, filled in where the config left them unset.
CsvFormat KuaiRandFormat(const CsvFormat& given) {
  CsvFormat csv = given;
  if (!csv.has_delimiter()) csv.set_delimiter(",");
  if (!csv.has_user_column()) csv.set_user_column("user_id");
  if (!csv.has_item_column()) csv.set_item_column("video_id");
  if (!csv.has_time_column()) csv.set_time_column("time_ms");
  if (!csv.has_time_unit()) csv.set_time_unit(CsvFormat::MILLISECONDS);
  if (!csv.has_label_column()) csv.set_label_column("is_click");
  if (csv.filter_size() == 0) {
    auto* f = csv.add_filter();
    f->set_column("tab");
    f->set_value("1");
  }
  if (!csv.has_item_id_column()) csv.set_item_id_column("video_id");
  if (!csv.has_item_tags_column()) csv.set_item_tags_column("tag");
  if (!csv.has_tag_separator()) csv.set_tag_separator(",");
  if (!csv.has_tags_are_names()) csv.set_tags_are_names(false);
  return csv;
}

}  // namespace

bool SplitCsvLine(absl::string_view line, char delimiter, std::vector<absl::string_view>* fields,
                  std::vector<std::string>* storage) {
  fields->clear();
  storage->clear();
  if (line.find('"') == absl::string_view::npos) {
    size_t start = 0;
    while (true) {
      const size_t d = line.find(delimiter, start);
      if (d == absl::string_view::npos) {
        fields->push_back(line.substr(start));
        return true;
      }
      fields->push_back(line.substr(start, d - start));
      start = d + 1;
    }
  }
  // Slow path with quotes: unquoted fields are built in `storage` (reserved so that views
  // into it stay valid).
  storage->reserve(line.size() + 1);
  std::string cur;
  bool in_quotes = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (in_quotes) {
      if (c == '"') {
        if (i + 1 < line.size() && line[i + 1] == '"') {
          cur.push_back('"');
          ++i;
        } else {
          in_quotes = false;
        }
      } else {
        cur.push_back(c);
      }
    } else if (c == '"') {
      in_quotes = true;
    } else if (c == delimiter) {
      storage->push_back(std::move(cur));
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  if (in_quotes) return false;
  storage->push_back(std::move(cur));
  for (const std::string& s : *storage) fields->push_back(s);
  return true;
}

std::string SourceName(config::DataConfig::SourceKind kind) { return config::DataConfig::SourceKind_Name(kind); }

absl::Status ReadSourceRows(const DataConfig& given, RowSink sink, InteractionLog* out) {
  DataConfig config = given;
  // KuaiRand's label is is_click (0/1): positives are clicks unless the config says otherwise.
  if (config.source() == DataConfig::KUAIRAND && !config.has_min_rating()) config.set_min_rating(1);
  InteractionLog& log = *out;
  Context ctx(config, sink, &log);
  const auto& paths = config.input_paths();
  if (paths.empty()) return absl::InvalidArgumentError("data.input_paths: no input file given");
  switch (config.source()) {
    case DataConfig::MOVIELENS_DAT:
    case DataConfig::MOVIETWEETINGS:
      for (const auto& p : paths) T2D_RETURN_IF_ERROR(ReadColonRatings(p, &ctx));
      if (!config.item_path().empty()) T2D_RETURN_IF_ERROR(ReadMoviesDat(config.item_path(), &ctx));
      break;
    case DataConfig::MOVIELENS_100K:
      for (const auto& p : paths) T2D_RETURN_IF_ERROR(ReadUData(p, &ctx));
      if (!config.item_path().empty()) T2D_RETURN_IF_ERROR(ReadUItem(config.item_path(), &ctx));
      break;
    case DataConfig::ML1M_SEQUENCES:
      for (const auto& p : paths) T2D_RETURN_IF_ERROR(ReadSequenceFile(p, &ctx));
      if (!config.item_path().empty()) T2D_RETURN_IF_ERROR(ReadMoviesDat(config.item_path(), &ctx));
      log.has_timestamps = false;
      break;
    case DataConfig::KUAIRAND:
    case DataConfig::CSV: {
      const CsvFormat csv = config.source() == DataConfig::KUAIRAND ? KuaiRandFormat(config.csv()) : config.csv();
      for (const auto& p : paths) T2D_RETURN_IF_ERROR(ReadCsv(p, csv, &ctx));
      if (!config.item_path().empty()) T2D_RETURN_IF_ERROR(ReadCsvItems(config.item_path(), csv, &ctx));
      break;
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat("data.source: ", SourceName(config.source()),
                                                     " is not a file source"));
  }
  ctx.Finish();
  return absl::OkStatus();
}

absl::Status ReadUserFile(const DataConfig& config, BadLines* bad_lines, std::vector<std::string>* fields,
                          UserRowSink sink) {
  const std::string& path = config.user_path();
  BadLineHandler bad(config.skip_bad_lines(), bad_lines);
  std::vector<absl::string_view> f;
  std::vector<absl::string_view> values;
  fields->clear();
  // A fixed layout: `sep` between the id and the named fields, in this order.
  auto fixed = [&](absl::string_view sep, std::vector<std::string> names, absl::string_view format) {
    *fields = std::move(names);
    const size_t num = fields->size() + 1;
    return ForEachLine(path, &bad, [&](absl::string_view line) -> ParseResult {
      f = absl::StrSplit(line, sep);
      int64_t user;
      if (f.size() != num || !ParseInt(f[0], &user)) return Expected(format, line);
      values.clear();
      for (size_t i = 1; i < num; ++i) values.push_back(absl::StripAsciiWhitespace(f[i]));
      T2D_RETURN_IF_ERROR(sink(user, values));
      return std::string();
    });
  };
  switch (config.source()) {
    case DataConfig::MOVIELENS_DAT:
    case DataConfig::ML1M_SEQUENCES:
      return fixed("::", {"gender", "age", "occupation", "zip"}, "UserID::Gender::Age::Occupation::Zip-code");
    case DataConfig::MOVIELENS_100K:
      return fixed("|", {"age", "gender", "occupation", "zip"}, "id|age|gender|occupation|zip");
    case DataConfig::KUAIRAND:
    case DataConfig::CSV: {
      const CsvFormat& csv = config.csv();
      if (csv.user_feature_columns().empty()) {
        return absl::InvalidArgumentError(absl::StrCat("data.csv.user_feature_columns: name the profile columns of ", path));
      }
      int id_col = -1;
      std::vector<int> cols;
      auto columns = [&](ColumnOf col) -> absl::Status {
        T2D_ASSIGN_OR_RETURN(id_col, col("the user id", csv.user_file_id_column()));
        for (const std::string& name : csv.user_feature_columns()) {
          T2D_ASSIGN_OR_RETURN(int c, col("a profile field", name));
          cols.push_back(c);
          fields->push_back(name);
        }
        return absl::OkStatus();
      };
      auto row = [&](const std::vector<absl::string_view>& r, absl::string_view line, int num_fields) -> ParseResult {
        int64_t user;
        if (static_cast<int>(r.size()) != num_fields || !ParseInt(r[id_col], &user)) {
          return Expected(absl::StrCat(num_fields, " fields with an integer user id"), line);
        }
        values.clear();
        for (int c : cols) values.push_back(absl::StripAsciiWhitespace(r[c]));
        if (absl::Status taken = sink(user, values); !taken.ok()) return taken;
        return std::string();
      };
      T2D_ASSIGN_OR_RETURN(const int num_fields, ForEachCsvRow(path, csv, &bad, columns, row));
      if (num_fields < 0) return absl::InvalidArgumentError(absl::StrCat(path, ": empty file"));
      return absl::OkStatus();
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat("data.user_path: source ", SourceName(config.source()),
                                                     " has no user file layout (MOVIELENS_DAT, ML1M_SEQUENCES, "
                                                     "MOVIELENS_100K, CSV or KUAIRAND)"));
  }
}

absl::StatusOr<InteractionLog> ReadSource(const DataConfig& config) {
  InteractionLog log;
  absl::flat_hash_set<int64_t> all_users, positive_users;
  T2D_RETURN_IF_ERROR(ReadSourceRows(
      config,
      [&](const Interaction& row, bool positive) {
        all_users.insert(row.user);
        if (positive) {
          positive_users.insert(row.user);
          log.interactions.push_back(row);
        }
        return absl::OkStatus();
      },
      &log));
  log.empty_users = static_cast<int64_t>(all_users.size() - positive_users.size());
  return log;
}

}  // namespace t2d::data
