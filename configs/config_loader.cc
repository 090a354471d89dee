#include "configs/config_loader.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/reflection.h>
#include <google/protobuf/text_format.h>

#include <unistd.h>

#include <cmath>
#include <map>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"
#include "common/field_options.pb.h"
#include "configs/job_options.h"

namespace t2d::config {
namespace {

namespace pb = google::protobuf;

// The field name written just before (line, column) in `text` ("batch_size" in
// "batch_size: \"many\""), so that a value error can name its field; "" if there is none.
std::string FieldBefore(absl::string_view text, int line, int column) {
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n');
  if (line < 0 || static_cast<size_t>(line) >= lines.size()) return "";
  absl::string_view l = lines[static_cast<size_t>(line)];
  size_t end = std::min<size_t>(static_cast<size_t>(std::max(column, 0)), l.size());
  while (end > 0 && (l[end - 1] == ' ' || l[end - 1] == ':' || l[end - 1] == '[' || l[end - 1] == '\t')) --end;
  size_t begin = end;
  while (begin > 0 && (absl::ascii_isalnum(static_cast<unsigned char>(l[begin - 1])) || l[begin - 1] == '_')) --begin;
  return std::string(l.substr(begin, end - begin));
}

class CollectErrors : public pb::io::ErrorCollector {
 public:
  explicit CollectErrors(std::string filename, std::string text = "")
      : filename_(std::move(filename)), text_(std::move(text)) {}
  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    std::string where = absl::StrCat(filename_, ":", line + 1, ":", column + 1, ": ");
    const std::string field = FieldBefore(text_, line, column);
    if (!field.empty() && message.find(field) == std::string::npos) absl::StrAppend(&where, "field \"", field, "\": ");
    errors_.push_back(where + message);
  }
  void AddWarning(int line, pb::io::ColumnNumber column, const std::string& message) override {
    AddError(line, column, message);  // e.g. deprecated fields: treated as errors, never ignored
  }
  const std::vector<std::string>& errors() const { return errors_; }

 private:
  std::string filename_;
  std::string text_;
  std::vector<std::string> errors_;
};

// Where each field path was set: "FILE:LINE" from the parse tree, or "--set ..." for overrides;
// under the key "" the file itself, for problems with no field set anywhere (an empty file).
using Locations = std::map<std::string, std::string>;

void RecordLocations(const pb::Message& m, const pb::TextFormat::ParseInfoTree* tree,
                     const std::string& file, const std::string& prefix, Locations* out) {
  std::vector<const pb::FieldDescriptor*> fields;
  m.GetReflection()->ListFields(m, &fields);
  for (const auto* f : fields) {
    const int n = f->is_repeated() ? m.GetReflection()->FieldSize(m, f) : 1;
    for (int i = 0; i < n; ++i) {
      const int index = f->is_repeated() ? i : -1;
      std::string path = prefix + f->name();
      if (f->is_repeated()) absl::StrAppend(&path, "[", i, "]");
      const auto loc = tree->GetLocation(f, index);
      if (loc.line >= 0) (*out)[path] = absl::StrCat(file, ":", loc.line + 1);
      if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
        const auto* nested = tree->GetTreeForNested(f, index);
        if (nested == nullptr) continue;
        const pb::Message& sub = f->is_repeated() ? m.GetReflection()->GetRepeatedMessage(m, f, i)
                                                  : m.GetReflection()->GetMessage(m, f);
        RecordLocations(sub, nested, file, path + ".", out);
      }
    }
  }
}

std::string Where(const Locations& locations, const std::string& path) {
  // A path's own location, else the nearest enclosing one (a repeated scalar's list, say).
  std::string p = path;
  while (!p.empty()) {
    auto it = locations.find(p);
    if (it != locations.end()) return it->second + ": ";
    const size_t cut = p.find_last_of(".[");
    if (cut == std::string::npos) break;
    p = p.substr(0, cut);
  }
  auto file = locations.find("");
  return file != locations.end() ? file->second + ": " : "";
}

double NumericValue(const pb::Message& m, const pb::FieldDescriptor* f, int i) {
  const auto* r = m.GetReflection();
  const bool rep = f->is_repeated();
  switch (f->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT32: return rep ? r->GetRepeatedInt32(m, f, i) : r->GetInt32(m, f);
    case pb::FieldDescriptor::CPPTYPE_INT64:
      return static_cast<double>(rep ? r->GetRepeatedInt64(m, f, i) : r->GetInt64(m, f));
    case pb::FieldDescriptor::CPPTYPE_UINT32: return rep ? r->GetRepeatedUInt32(m, f, i) : r->GetUInt32(m, f);
    case pb::FieldDescriptor::CPPTYPE_UINT64:
      return static_cast<double>(rep ? r->GetRepeatedUInt64(m, f, i) : r->GetUInt64(m, f));
    case pb::FieldDescriptor::CPPTYPE_FLOAT: return rep ? r->GetRepeatedFloat(m, f, i) : r->GetFloat(m, f);
    case pb::FieldDescriptor::CPPTYPE_DOUBLE: return rep ? r->GetRepeatedDouble(m, f, i) : r->GetDouble(m, f);
    default: return 0;
  }
}

bool IsNumeric(const pb::FieldDescriptor* f) {
  switch (f->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT32:
    case pb::FieldDescriptor::CPPTYPE_INT64:
    case pb::FieldDescriptor::CPPTYPE_UINT32:
    case pb::FieldDescriptor::CPPTYPE_UINT64:
    case pb::FieldDescriptor::CPPTYPE_FLOAT:
    case pb::FieldDescriptor::CPPTYPE_DOUBLE: return true;
    default: return false;
  }
}

// Checks every field of `m` (set or defaulted) against its options; recurses into set messages.
void CheckFieldOptions(const pb::Message& m, const std::string& prefix, const Locations& where,
                       std::vector<std::string>* errors) {
  const auto* d = m.GetDescriptor();
  const auto* r = m.GetReflection();
  for (int fi = 0; fi < d->field_count(); ++fi) {
    const auto* f = d->field(fi);
    const auto& opts = f->options();
    const std::string base = prefix + f->name();
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      if (f->is_repeated()) {
        for (int i = 0; i < r->FieldSize(m, f); ++i) {
          CheckFieldOptions(r->GetRepeatedMessage(m, f, i), absl::StrCat(base, "[", i, "]."), where, errors);
        }
      } else {
        // Unset sub-messages read as all defaults; check them too (their required fields).
        CheckFieldOptions(r->GetMessage(m, f), base + ".", where, errors);
      }
      continue;
    }
    if (opts.GetExtension(required)) {
      const bool set = f->is_repeated() ? r->FieldSize(m, f) > 0 : r->HasField(m, f);
      const bool empty_string = f->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING && !f->is_repeated() &&
                                set && r->GetString(m, f).empty();
      if (!set || empty_string) {
        errors->push_back(absl::StrCat(Where(where, prefix.empty() ? base : prefix.substr(0, prefix.size() - 1)),
                                       base, ": required field is ", set ? "empty" : "missing"));
        continue;
      }
    }
    if (!IsNumeric(f)) continue;
    const bool has_min = opts.HasExtension(min);
    const bool has_max = opts.HasExtension(max);
    const bool exclusive = opts.GetExtension(min_exclusive);
    const int n = f->is_repeated() ? r->FieldSize(m, f) : 1;
    for (int i = 0; i < n; ++i) {
      const double v = NumericValue(m, f, i);
      const std::string path = f->is_repeated() ? absl::StrCat(base, "[", i, "]") : base;
      // NaN or an infinity is never a setting; a range alone lets inf through ([0, inf)).
      if (!std::isfinite(v)) {
        errors->push_back(absl::StrCat(Where(where, path), path, ": value ", v, " is not a finite number"));
        continue;
      }
      const double lo = opts.GetExtension(min), hi = opts.GetExtension(max);
      const bool bad_lo = has_min && (exclusive ? !(v > lo) : !(v >= lo));
      const bool bad_hi = has_max && !(v <= hi);
      if (bad_lo || bad_hi) {
        std::string range = absl::StrCat(has_min ? (exclusive ? "(" : "[") : "(", has_min ? absl::StrCat(lo) : "-inf",
                                         ", ", has_max ? absl::StrCat(hi) : "inf", has_max ? "]" : ")");
        errors->push_back(absl::StrCat(Where(where, path), path, ": value ", v, " is out of range ", range));
      }
    }
  }
}

void CheckCrossField(const JobConfig& c, const Locations& where, std::vector<std::string>* errors) {
  auto err = [&](const std::string& path, const std::string& msg) {
    errors->push_back(absl::StrCat(Where(where, path), path, ": ", msg));
  };
  std::set<std::string> names;
  for (int i = 0; i < c.tables_size(); ++i) {
    const auto& t = c.tables(i);
    if (!t.name().empty() && !names.insert(t.name()).second) {
      err(absl::StrCat("tables[", i, "].name"), absl::StrCat("duplicate table name \"", t.name(), "\""));
    }
    const auto& o = t.optimizer();
    if (o.kind() == SparseOptimizerConfig::ADAM && (o.beta1() >= 1 || o.beta2() >= 1)) {
      err(absl::StrCat("tables[", i, "].optimizer"), "Adam needs beta1 < 1 and beta2 < 1");
    }
  }
  const auto& m = c.model();
  if (FindTable(c, m.item_id_table()) < 0) {
    err("model.item_id_table", absl::StrCat("no table named \"", m.item_id_table(), "\" (tables: ",
                                            absl::StrJoin(names, ", "), ")"));
  }
  if (!m.item_tag_table().empty() && FindTable(c, m.item_tag_table()) < 0) {
    err("model.item_tag_table", absl::StrCat("no table named \"", m.item_tag_table(), "\" (tables: ",
                                             absl::StrJoin(names, ", "), ")"));
  }
  if (!m.user_id_table().empty()) {
    if (FindTable(c, m.user_id_table()) < 0) {
      err("model.user_id_table", absl::StrCat("no table named \"", m.user_id_table(), "\" (tables: ",
                                              absl::StrJoin(names, ", "), ")"));
    } else if (m.user_id_table() == m.item_id_table() || m.user_id_table() == m.item_tag_table()) {
      // User and item ids share one number space; one table would mix their rows.
      err("model.user_id_table", absl::StrCat("table \"", m.user_id_table(), "\" also holds items; users need a table of their own"));
    }
  }
  if (!m.user_feature_table().empty()) {
    if (FindTable(c, m.user_feature_table()) < 0) {
      err("model.user_feature_table", absl::StrCat("no table named \"", m.user_feature_table(), "\" (tables: ",
                                                   absl::StrJoin(names, ", "), ")"));
    } else if (m.user_feature_table() == m.item_id_table() || m.user_feature_table() == m.item_tag_table() ||
               m.user_feature_table() == m.user_id_table()) {
      // Profile keys are fingerprints that may equal an item or user id; a shared table would mix rows.
      err("model.user_feature_table",
          absl::StrCat("table \"", m.user_feature_table(), "\" also holds ",
                       m.user_feature_table() == m.user_id_table() ? "user ids" : "items",
                       "; profile values need a table of their own"));
    }
  }
  if (c.data().session_len() > c.data().max_seq_len()) {
    err("data.session_len", absl::StrCat("session_len ", c.data().session_len(), " exceeds max_seq_len ",
                                         c.data().max_seq_len()));
  }
  if (c.eval().k_size() > 0) {
    bool found = false;
    for (int k : c.eval().k()) found |= k == c.eval().main_k();
    if (!found) err("eval.main_k", absl::StrCat("main_k ", c.eval().main_k(), " is not one of eval.k"));
  }
  const std::string& backend = c.cluster().allreduce_backend();
  if (backend != "mpi" && backend != "nccl") {
    err("cluster.allreduce_backend", absl::StrCat("unknown backend \"", backend, "\" (expected mpi or nccl)"));
  }
}

// This machine's physical memory in bytes; 0 if unknown (then nothing is compared with it).
int64_t PhysicalMemoryBytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : 0;
}

// The model's own checks (model::ValidateModelConfig, through ModelDimsOf) and whether its
// dense state fits this machine, located at the field they name ("model.attention_heads: ..."),
// the memory estimate at the item-id table's width.
void CheckModel(const JobConfig& c, const Locations& where, std::vector<std::string>* errors) {
  const int64_t memory = PhysicalMemoryBytes();
  const absl::Status s = memory > 0 ? CheckDenseModelFits(c, memory) : ModelDimsOf(c).status();
  if (s.ok()) return;
  const std::string message(s.message());
  std::string path = message.substr(0, message.find(": "));
  if (absl::IsResourceExhausted(s)) path = absl::StrCat("tables[", FindTable(c, c.model().item_id_table()), "].dim");
  errors->push_back(Where(where, path) + message);
}

absl::Status ValidateWithLocations(const JobConfig& config, const Locations& where) {
  std::vector<std::string> errors;
  CheckFieldOptions(config, "", where, &errors);
  CheckCrossField(config, where, &errors);
  // The model's checks assume the fields they read are in range and its tables exist.
  if (errors.empty()) CheckModel(config, where, &errors);
  if (errors.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(errors, "\n"));
}

// Resolves one path segment ("tables[item_id]" or "batch_size") inside `msg`.
struct Segment {
  std::string field;
  bool has_index = false;
  std::string index;
};

absl::StatusOr<Segment> ParseSegment(absl::string_view s) {
  Segment seg;
  const size_t open = s.find('[');
  if (open == absl::string_view::npos) {
    seg.field = std::string(s);
  } else {
    if (s.back() != ']') return absl::InvalidArgumentError(absl::StrCat("bad path segment \"", s, "\""));
    seg.field = std::string(s.substr(0, open));
    seg.has_index = true;
    seg.index = std::string(s.substr(open + 1, s.size() - open - 2));
  }
  if (seg.field.empty()) return absl::InvalidArgumentError(absl::StrCat("empty field name in \"", s, "\""));
  return seg;
}

}  // namespace

int FindTable(const JobConfig& config, const std::string& name) {
  for (int i = 0; i < config.tables_size(); ++i) {
    if (config.tables(i).name() == name) return i;
  }
  return -1;
}

namespace {

// ApplyOverride, also setting `*path` to the field's path as validation names it: elements of
// repeated messages by index ("tables[0].dim" for "tables[item_id].dim").
absl::Status ApplyOverrideAt(const std::string& assignment, JobConfig* config, std::string* path_out) {
  const size_t eq = assignment.find('=');
  auto fail = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("--set ", assignment, ": ", why));
  };
  if (eq == std::string::npos || eq == 0) return fail("expected PATH=VALUE");
  const std::string path = assignment.substr(0, eq);
  const std::string value = assignment.substr(eq + 1);
  std::vector<std::string> parts = absl::StrSplit(path, '.');
  pb::Message* msg = config;
  for (size_t p = 0; p < parts.size(); ++p) {
    auto seg = ParseSegment(parts[p]);
    if (!seg.ok()) return fail(std::string(seg.status().message()));
    const auto* f = msg->GetDescriptor()->FindFieldByName(seg->field);
    if (f == nullptr) {
      return fail(absl::StrCat("message ", msg->GetDescriptor()->full_name(), " has no field named \"",
                               seg->field, "\""));
    }
    const auto* r = msg->GetReflection();
    const bool last = p + 1 == parts.size();
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      if (last) return fail(absl::StrCat("\"", seg->field, "\" is a message; name one of its fields"));
      if (!f->is_repeated()) {
        if (seg->has_index) return fail(absl::StrCat("\"", seg->field, "\" is not repeated"));
        msg = r->MutableMessage(msg, f);
        absl::StrAppend(path_out, seg->field, ".");
        continue;
      }
      if (!seg->has_index) return fail(absl::StrCat("\"", seg->field, "\" is repeated; add [index] or [name]"));
      const int size = r->FieldSize(*msg, f);
      int index = -1;
      if (int parsed; absl::SimpleAtoi(seg->index, &parsed)) {
        index = parsed;
      } else {
        for (int i = 0; i < size; ++i) {
          const pb::Message& e = r->GetRepeatedMessage(*msg, f, i);
          const auto* name_field = e.GetDescriptor()->FindFieldByName("name");
          if (name_field != nullptr && name_field->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING &&
              e.GetReflection()->GetString(e, name_field) == seg->index) {
            index = i;
          }
        }
        if (index < 0) return fail(absl::StrCat("no element of \"", seg->field, "\" named \"", seg->index, "\""));
      }
      if (index < 0 || index >= size) {
        return fail(absl::StrCat("index ", seg->index, " out of range for \"", seg->field, "\" (", size, " elements)"));
      }
      msg = r->MutableRepeatedMessage(msg, f, index);
      absl::StrAppend(path_out, seg->field, "[", index, "].");
      continue;
    }
    if (!last) return fail(absl::StrCat("\"", seg->field, "\" is not a message"));
    if (seg->has_index) return fail("indexing a scalar field is not supported; give the whole list");
    // Reuse the text-format parser for the value so types, enums and ranges of the wire type
    // are checked exactly as in a config file.
    std::string text;
    const bool quote = f->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING;
    auto render = [&](absl::string_view v) {
      return quote ? absl::StrCat(seg->field, ": \"", absl::CEscape(v), "\"\n") : absl::StrCat(seg->field, ": ", v, "\n");
    };
    if (f->is_repeated()) {
      if (!value.empty()) {
        for (absl::string_view v : absl::StrSplit(value, ',')) text += render(absl::StripAsciiWhitespace(v));
      }
    } else {
      text = render(value);
    }
    std::unique_ptr<pb::Message> scratch(msg->New());
    CollectErrors errors("--set");
    pb::TextFormat::Parser parser;
    parser.RecordErrorsTo(&errors);
    if (!parser.ParseFromString(text, scratch.get())) {
      std::string why = errors.errors().empty() ? "bad value" : errors.errors().front();
      return fail(absl::StrCat("bad value \"", value, "\" for ", f->full_name(), " (", why, ")"));
    }
    r->ClearField(msg, f);
    msg->MergeFrom(*scratch);
    absl::StrAppend(path_out, seg->field);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ApplyOverride(const std::string& assignment, JobConfig* config) {
  std::string path;
  return ApplyOverrideAt(assignment, config, &path);
}

absl::StatusOr<JobConfig> ParseJobConfig(const std::string& text, const std::string& filename,
                                         const std::vector<std::string>& overrides) {
  JobConfig config;
  CollectErrors errors(filename, text);
  pb::TextFormat::ParseInfoTree tree;
  pb::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  parser.WriteLocationsTo(&tree);
  if (!parser.ParseFromString(text, &config)) {
    return absl::InvalidArgumentError(errors.errors().empty() ? filename + ": cannot parse"
                                                              : absl::StrJoin(errors.errors(), "\n"));
  }
  Locations where;
  where[""] = filename;
  RecordLocations(config, &tree, filename, "", &where);
  for (const auto& o : overrides) {
    std::string path;
    auto s = ApplyOverrideAt(o, &config, &path);
    if (!s.ok()) return s;
    where[path] = "--set " + o;
  }
  auto s = ValidateWithLocations(config, where);
  if (!s.ok()) return s;
  return config;
}

absl::StatusOr<JobConfig> LoadJobConfig(const std::string& path, const std::vector<std::string>& overrides) {
  auto text = ReadFileToString(path);
  if (!text.ok()) return text.status();
  return ParseJobConfig(*text, path, overrides);
}

absl::Status ValidateJobConfig(const JobConfig& config) { return ValidateWithLocations(config, {}); }

}  // namespace t2d::config
