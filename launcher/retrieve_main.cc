#include "launcher/retrieve_main.h"

#include <glog/logging.h>

#include <iostream>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "model/model_options.h"
#include "serving/bundle.h"

namespace t2d::launcher {

int RunRetrieve(const RetrieveOptions& options) {
  if (options.k < 1) {
    LOG(ERROR) << "--k " << options.k << ": must be >= 1";
    return 1;
  }
  auto bundle = serving::Bundle::Load(options.bundle);
  if (!bundle.ok()) {
    LOG(ERROR) << bundle.status().message();
    return 1;
  }
  std::vector<int64_t> history;
  for (absl::string_view tok : absl::StrSplit(options.history, absl::ByAnyChar(" ,"), absl::SkipEmpty())) {
    int64_t id;
    if (!absl::SimpleAtoi(tok, &id)) {
      LOG(ERROR) << "--history: \"" << tok << "\" is not an item id";
      return 1;
    }
    history.push_back(id);
  }
  if (history.empty()) {
    LOG(ERROR) << "--history is empty";
    return 1;
  }
  const uint64_t seed =
      options.user >= 0 ? model::EvalSampleSeed((*bundle)->eval_seed(), options.user) : options.seed;
  auto r = (*bundle)->TopK(history, options.k, seed);
  if (!r.ok()) {
    LOG(ERROR) << r.status().message();
    return 1;
  }
  if (options.json) {
    nlohmann::ordered_json j;
    j["items"] = r->items;
    j["scores"] = r->scores;
    j["catalogue"] = (*bundle)->num_items();
    j["user_tower_ms"] = r->user_tower_ms;
    j["search_ms"] = r->search_ms;
    std::cout << j.dump() << std::endl;
    return 0;
  }
  std::cout << "top " << r->items.size() << " of " << (*bundle)->num_items() << " items for a history of "
            << history.size() << ":\n";
  for (size_t i = 0; i < r->items.size(); ++i) {
    std::cout << absl::StrFormat("%3d  item %-12d score %.5f\n", i + 1, r->items[i], r->scores[i]);
  }
  std::cout << absl::StrFormat("latency: user tower %.2f ms, search %.2f ms\n", r->user_tower_ms, r->search_ms);
  return 0;
}

}  // namespace t2d::launcher
