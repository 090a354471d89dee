#include "serving/protocol.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "data/user_profiles.h"

namespace t2d::serving {
namespace {

using Json = nlohmann::json;

absl::Status Bad(const std::string& where, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(where, absl::string_view(what.data(), what.size())));
}

absl::StatusOr<int64_t> Int(const Json& v, const std::string& where) {
  if (!v.is_number_integer()) return Bad(where, ": not an integer");
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return Bad(where, ": out of the int64 range");
  }
  return v.get<int64_t>();
}

absl::Status IntArray(const Json& v, const std::string& where, std::vector<int64_t>* out) {
  if (!v.is_array()) return Bad(where, ": not an array of integers");
  if (static_cast<int64_t>(v.size()) > kMaxQueryItems) {
    return Bad(where, absl::StrCat(": ", v.size(), " values, more than the limit of ", kMaxQueryItems));
  }
  out->reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    absl::StatusOr<int64_t> x = Int(v[i], absl::StrCat(where, "[", i, "]"));
    if (!x.ok()) return x.status();
    out->push_back(*x);
  }
  return absl::OkStatus();
}

// "user_features": an object from field name to value text; a number is written as its JSON text
// (25 -> "25"), null as no value ("").
absl::Status UserFeatures(const Json& v, const std::string& where, std::vector<UserFeatureValue>* out) {
  if (!v.is_object()) return Bad(where, ": not an object of profile field names to values");
  if (v.size() > static_cast<size_t>(data::kMaxUserFields)) {
    return Bad(where, absl::StrCat(": ", v.size(), " fields, more than the limit of ", data::kMaxUserFields));
  }
  for (const auto& [field, value] : v.items()) {
    if (field.empty()) return Bad(where, ": an empty field name");
    if (value.is_string()) {
      out->emplace_back(field, value.get<std::string>());
    } else if (value.is_number()) {
      if (value.is_number_float() && !std::isfinite(value.get<double>())) return Bad(where + "." + field, ": not finite");
      out->emplace_back(field, value.dump());
    } else if (value.is_null()) {
      out->emplace_back(field, std::string());
    } else {
      return Bad(where + "." + field, ": not a string or number");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ParsedQuery> ParseQuery(const Json& q, const std::string& prefix) {
  if (!q.is_object()) return Bad(prefix.empty() ? "request" : prefix, ": not a JSON object");
  ParsedQuery p;
  bool has_items = false;
  for (const auto& [key, value] : q.items()) {
    const std::string where = prefix + key;
    if (key == "items") {
      if (absl::Status s = IntArray(value, where, &p.items); !s.ok()) return s;
      has_items = true;
    } else if (key == "times") {
      if (absl::Status s = IntArray(value, where, &p.times); !s.ok()) return s;
    } else if (key == "user") {
      absl::StatusOr<int64_t> x = Int(value, where);
      if (!x.ok()) return x.status();
      p.user = *x;
    } else if (key == "time") {
      absl::StatusOr<int64_t> x = Int(value, where);
      if (!x.ok()) return x.status();
      p.time = *x;
    } else if (key == "k") {
      absl::StatusOr<int64_t> x = Int(value, where);
      if (!x.ok()) return x.status();
      if (*x < 1 || *x > kMaxK) return Bad(where, absl::StrCat(": ", *x, " is outside 1..", kMaxK));
      p.k = static_cast<int>(*x);
    } else if (key == "user_features") {
      if (absl::Status s = UserFeatures(value, where, &p.user_features); !s.ok()) return s;
    } else if (key == "user_feature_keys") {
      if (absl::Status s = IntArray(value, where, &p.user_feature_keys); !s.ok()) return s;
      if (p.user_feature_keys.size() > static_cast<size_t>(data::kMaxUserFields)) {
        return Bad(where, absl::StrCat(": ", p.user_feature_keys.size(), " keys, more than the limit of ",
                                       data::kMaxUserFields));
      }
    } else if (key == "seed") {
      if (!value.is_number_unsigned() && !(value.is_number_integer() && value.get<int64_t>() >= 0)) {
        return Bad(where, ": not a non-negative integer");
      }
      p.seed = value.get<uint64_t>();
    } else {
      return Bad(where, ": unknown field (known: user, items, times, time, k, seed, user_features, user_feature_keys)");
    }
  }
  if (!has_items) return Bad(prefix + "items", ": missing");
  if (p.items.empty()) return Bad(prefix + "items", ": empty history (give at least one item id)");
  return p;
}

}  // namespace

Query ParsedQuery::View() const {
  Query q;
  q.request.user = user;
  q.request.items = items;
  q.request.times = times;
  q.request.time = time;
  q.k = k;
  q.seed = seed;
  q.user_features = user_features;
  q.request.user_features = user_feature_keys;
  return q;
}

namespace {

// The fields of a request, each checked on its own (ParseRequest adds the checks across them).
absl::StatusOr<Request> ParseRequestFields(std::string_view line) {
  Json j = Json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("request: not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("request: not a JSON object");
  Request r;
  if (auto id = j.find("id"); id != j.end()) {
    // A scalar only: an id nested deep enough would overflow the stack when echoed.
    if (id->is_structured()) return absl::InvalidArgumentError("id: not a number, string, boolean or null");
    r.id_json = id->dump();
    j.erase(id);
  }
  if (auto u = j.find("update"); u != j.end()) {
    if (!u->is_string() || u->get<std::string>().empty()) return absl::InvalidArgumentError("update: not a folder path");
    if (j.size() != 1) return absl::InvalidArgumentError("update: a request with \"update\" has no other fields but \"id\"");
    r.update = u->get<std::string>();
    return r;
  }
  if (auto i = j.find("info"); i != j.end()) {
    if (!i->is_boolean() || !i->get<bool>()) return absl::InvalidArgumentError("info: not true");
    if (j.size() != 1) return absl::InvalidArgumentError("info: a request with \"info\" has no other fields but \"id\"");
    r.info = i->get<bool>();
    return r;
  }
  if (auto qs = j.find("queries"); qs != j.end()) {
    if (j.size() != 1) {
      return absl::InvalidArgumentError("queries: a request with \"queries\" has no other fields but \"id\" (query fields go inside each query)");
    }
    if (!qs->is_array() || qs->empty()) return absl::InvalidArgumentError("queries: not a non-empty array of queries");
    if (qs->size() > static_cast<size_t>(kMaxQueriesPerRequest)) {
      return absl::InvalidArgumentError(
          absl::StrCat("queries: ", qs->size(), " queries, more than the limit of ", kMaxQueriesPerRequest));
    }
    r.batched = true;
    for (size_t i = 0; i < qs->size(); ++i) {
      absl::StatusOr<ParsedQuery> q = ParseQuery((*qs)[i], absl::StrCat("queries[", i, "].", ""));
      if (!q.ok()) return q.status();
      r.queries.push_back(std::move(*q));
    }
    return r;
  }
  absl::StatusOr<ParsedQuery> q = ParseQuery(j, "");
  if (!q.ok()) return q.status();
  r.queries.push_back(std::move(*q));
  return r;
}

}  // namespace

absl::StatusOr<Request> ParseRequest(std::string_view line) {
  absl::StatusOr<Request> r = ParseRequestFields(line);
  if (!r.ok() || r->update.has_value() || r->info) return r;
  int64_t results = 0;
  for (const ParsedQuery& q : r->queries) results += std::min<int64_t>(q.k, kMaxQueryItems + kMaxK);
  if (results > kMaxResultsPerRequest) {
    return absl::InvalidArgumentError(absl::StrCat("k: the queries ask for ", results,
                                                   " results in all, more than the limit of ", kMaxResultsPerRequest,
                                                   " per request"));
  }
  return r;
}

std::string RequestIdJson(std::string_view line) {
  Json j = Json::parse(line.begin(), line.end(), nullptr, false);
  if (j.is_object()) {
    if (auto id = j.find("id"); id != j.end() && !id->is_structured()) return id->dump();
  }
  return "null";
}

std::string ErrorReply(const std::string& id_json, const std::string& message) {
  Json out = Json::object();
  out["id"] = Json::parse(id_json, nullptr, false);
  out["error"] = message;
  return out.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string QueryReply(const Request& request, const std::vector<absl::StatusOr<Retrieved>>& results) {
  auto one = [](const absl::StatusOr<Retrieved>& r) {
    Json o = Json::object();
    if (!r.ok()) {
      o["error"] = std::string(r.status().message());
      return o;
    }
    o["items"] = r->items;
    o["scores"] = r->scores;
    o["user_tower_ms"] = r->user_tower_ms;
    o["search_ms"] = r->search_ms;
    return o;
  };
  Json out = Json::object();
  out["id"] = Json::parse(request.id_json, nullptr, false);
  if (request.batched) {
    Json list = Json::array();
    for (const auto& r : results) list.push_back(one(r));
    out["results"] = std::move(list);
  } else {
    Json o = one(results.at(0));
    for (auto& [key, value] : o.items()) out[key] = value;
  }
  return out.dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace t2d::serving
