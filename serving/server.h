#pragma once
// The request handler behind `t2diff serve` and `t2diff retrieve` (protocol: serving/protocol.h):
// turns request lines into reply lines against the bundle being served.
//
// Batching: queries from concurrent callers (and the several queries of one request) are
// queued; one batching thread takes up to max_batch of them at a time through one pass of the
// user tower (Bundle::Search), so load from many clients runs at batch efficiency while a lone
// client is answered at once (no waiting for a batch to fill).
//
// Updates: an "update" request (or Update()) applies a delta of the base bundle, or loads a new
// full bundle as the base, off to the side and then swaps it in: every batch runs on one
// bundle, old or new, never a mixture, and no request fails because of an update. Deltas are
// cumulative (serving/bundle_writer.h), so each applies to the base, replacing the previous.
//
// Ownership: owns the bundles and the batching thread (joined by the destructor, after the
// queued queries are answered). Thread-safety: Handle and Update may be called from any number
// of threads. Errors: every error becomes an error reply; Handle never throws.

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "absl/status/status.h"
#include "serving/bundle.h"

namespace t2d::serving {

struct ServerOptions {
  int max_batch = 256;     // queries per pass of the user tower
  bool allow_updates = true;  // false: "update" requests are refused
};

class Server {
 public:
  Server(std::unique_ptr<Bundle> bundle, const ServerOptions& options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // One reply line (JSON, no newline) for one request line.
  std::string Handle(std::string_view line);
  // Applies the delta (or loads the full bundle) at `path`; see the file comment.
  absl::Status Update(const std::string& path);
  // The bundle answering now.
  std::shared_ptr<const Bundle> current() const;

  struct Stats {
    int64_t requests = 0, queries = 0, batches = 0, errors = 0, updates = 0;
  };
  Stats stats() const;

 private:
  struct Pending {
    const Query* query;
    std::promise<absl::StatusOr<Retrieved>> done;
  };
  void BatchLoop();
  std::string HandleUnguarded(std::string_view line);
  std::string Info(const std::string& id_json) const;

  const ServerOptions options_;
  mutable std::mutex bundle_mu_;       // guards base_, current_
  std::shared_ptr<const Bundle> base_, current_;
  std::mutex update_mu_;               // one update at a time
  std::mutex queue_mu_;
  std::condition_variable queue_cv_;
  std::deque<Pending*> queue_;
  bool stopping_ = false;
  mutable std::mutex stats_mu_;
  Stats stats_;
  std::thread batcher_;
};

}  // namespace t2d::serving
