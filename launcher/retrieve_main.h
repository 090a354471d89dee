#pragma once
// `t2diff retrieve`: loads a serving bundle (serving/bundle.h) and answers one query, the
// one-shot form of what a serving process does. Called from launcher/main.cc only.
// Errors: a message on the log and exit status 1 (bad bundle, bad history, bad k).

#include <cstdint>
#include <string>

namespace t2d::launcher {

struct RetrieveOptions {
  std::string bundle;
  std::string history;
  int k = 10;
  uint64_t seed = 1;
  // When set: use the reverse-process seed that evaluation used for this user id.
  int64_t user = -1;
  // Print {"items": [...], "scores": [...], "user_tower_ms": ..., "search_ms": ...} on stdout.
  bool json = false;
};

// Returns the process exit status.
int RunRetrieve(const RetrieveOptions& options);

}  // namespace t2d::launcher
