// Fuzzes the serving request parser (serving/protocol.h) as `t2diff serve` applies it to every
// line a client sends: ParseRequest must return a request or an error for any bytes (never
// throw or crash); the error reply must be valid JSON; a parsed query's arrays must be within
// the documented limits.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include "serving/protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string line(reinterpret_cast<const char*>(data), size);
  auto request = t2d::serving::ParseRequest(line);
  if (!request.ok()) {
    const std::string reply = t2d::serving::ErrorReply(t2d::serving::RequestIdJson(line), std::string(request.status().message()));
    if (nlohmann::json::parse(reply, nullptr, false).is_discarded()) std::abort();
    return 0;
  }
  if (request->queries.size() > static_cast<size_t>(t2d::serving::kMaxQueriesPerRequest)) std::abort();
  for (const auto& q : request->queries) {
    if (q.items.empty() || static_cast<int64_t>(q.items.size()) > t2d::serving::kMaxQueryItems) std::abort();
    if (q.k < 1 || q.k > t2d::serving::kMaxK) std::abort();
    (void)q.View();
  }
  if (nlohmann::json::parse(request->id_json, nullptr, false).is_discarded()) std::abort();
  return 0;
}
