#pragma once
// The request/reply protocol of `t2diff serve` and `t2diff retrieve` (docs/serving.md): one JSON
// object per line each way.
//
// Request:  {"id": any, "user": 17, "items": [5, 9, 2], "times": [t1, t2, t3], "time": t, "k": 10, "seed": 3,
//            "user_features": {"gender": "M", "age": 25}}
//           or several queries at once: {"id": any, "queries": [{"user": ..., "items": ...}, ...]}
//           or an update: {"id": any, "update": "/path/to/delta-or-bundle"}
//           or the server's state: {"id": any, "info": true}
// "id" is a number, string, boolean or null, echoed in the reply.
// Only "items" is required in a query (times too when the model's data set has timestamps);
// "k" defaults to 10; the k of a request's queries add up to at most kMaxResultsPerRequest.
// "user_features" maps profile field names to value texts (a number stands for its JSON text,
// 25 for "25"; null or "" is no value); the bundle refuses a name its data set has no field of
// (serving/bundle.h, Query::user_features), and fields not given are missing. Instead, a query
// may carry "user_feature_keys": the keys themselves (data::UserFeatureKey), one per field of the
// data set in its order, 0 for no value: what `t2diff eval --dump-ranks` writes, since evaluation
// knows a sample's keys, not the value texts.
// Every other field is refused by name.
// Reply:    {"id": any, "items": [...], "scores": [...], "user_tower_ms": x, "search_ms": y}
//           {"id": any, "results": [{"items": ..., "scores": ...} or {"error": "..."}, ...]}
//           {"id": any, "error": "what is wrong"}
//
// Thread-safety: pure functions. Errors: ParseRequest returns InvalidArgument naming the field
// (and the query's index in "queries") for bad JSON, unknown fields, wrong types and values out
// of range; it never throws.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "serving/bundle.h"

namespace t2d::serving {

inline constexpr int kMaxK = 10000;             // k above this is refused (a search, not a dump)
inline constexpr int kMaxQueriesPerRequest = 1024;
// The sum of k over a request's queries: bounds the memory of one reply (about 40 bytes a result).
inline constexpr int64_t kMaxResultsPerRequest = 100000;

// A query as parsed: owns the arrays that Query's spans point into.
struct ParsedQuery {
  int64_t user = 0;
  std::vector<int64_t> items, times;
  std::optional<int64_t> time;
  int k = 10;
  std::optional<uint64_t> seed;
  std::vector<UserFeatureValue> user_features;  // "user_features", sorted by field name
  std::vector<int64_t> user_feature_keys;       // "user_feature_keys"

  Query View() const;  // valid while this object lives
};

struct Request {
  std::string id_json = "null";   // the request's "id", echoed verbatim (as JSON) in the reply
  bool batched = false;           // "queries" was given: the reply has "results"
  std::vector<ParsedQuery> queries;
  std::optional<std::string> update;  // "update": a delta or bundle folder
  bool info = false;
};

absl::StatusOr<Request> ParseRequest(std::string_view line);

// The id of a request, best effort (for error replies to requests that did not parse).
std::string RequestIdJson(std::string_view line);

std::string ErrorReply(const std::string& id_json, const std::string& message);
// The reply to a query request: one result or error per query, shaped by request.batched.
std::string QueryReply(const Request& request, const std::vector<absl::StatusOr<Retrieved>>& results);

}  // namespace t2d::serving
