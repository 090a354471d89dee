#include "serving/server.h"

#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "serving/protocol.h"

namespace t2d::serving {

Server::Server(std::unique_ptr<Bundle> bundle, const ServerOptions& options) : options_(options) {
  base_ = std::shared_ptr<const Bundle>(std::move(bundle));
  current_ = base_;
  batcher_ = std::thread([this] { BatchLoop(); });
}

Server::~Server() {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    stopping_ = true;
  }
  queue_cv_.notify_all();
  batcher_.join();
}

std::shared_ptr<const Bundle> Server::current() const {
  std::lock_guard<std::mutex> lock(bundle_mu_);
  return current_;
}

Server::Stats Server::stats() const {
  std::lock_guard<std::mutex> lock(stats_mu_);
  return stats_;
}

void Server::BatchLoop() {
  std::vector<Pending*> batch;
  std::vector<Query> queries;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(queue_mu_);
      queue_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and everything queued is answered
      batch.clear();
      while (!queue_.empty() && static_cast<int>(batch.size()) < options_.max_batch) {
        batch.push_back(queue_.front());
        queue_.pop_front();
      }
    }
    queries.clear();
    for (Pending* p : batch) queries.push_back(*p->query);
    // One bundle for the whole batch: an update swaps current_, never the bundle in use.
    const std::shared_ptr<const Bundle> bundle = current();
    std::vector<absl::StatusOr<Retrieved>> results;
    try {
      results = bundle->Search(queries);
    } catch (const std::exception& e) {  // libtorch or allocation: every query of the batch fails
      results.assign(queries.size(), absl::InternalError(absl::StrCat("internal error: ", e.what())));
    }
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      ++stats_.batches;
    }
    for (size_t i = 0; i < batch.size(); ++i) batch[i]->done.set_value(std::move(results[i]));
  }
}

std::string Server::Handle(std::string_view line) {
  try {
    return HandleUnguarded(line);
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> lock(stats_mu_);
    ++stats_.errors;
    return ErrorReply(RequestIdJson(line), absl::StrCat("internal error: ", e.what()));
  }
}

std::string Server::HandleUnguarded(std::string_view line) {
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    ++stats_.requests;
  }
  auto error = [&](const std::string& id, const std::string& message) {
    std::lock_guard<std::mutex> lock(stats_mu_);
    ++stats_.errors;
    return ErrorReply(id, message);
  };
  absl::StatusOr<Request> request = ParseRequest(line);
  if (!request.ok()) return error(RequestIdJson(line), std::string(request.status().message()));
  if (request->update.has_value()) {
    if (!options_.allow_updates) return error(request->id_json, "update: this server was started with updates off");
    absl::Status s = Update(*request->update);
    if (!s.ok()) return error(request->id_json, std::string(s.message()));
    return Info(request->id_json);
  }
  if (request->info) return Info(request->id_json);
  if (request->queries.empty()) return error(request->id_json, "request: no query");
  std::vector<Query> views;
  views.reserve(request->queries.size());
  for (const ParsedQuery& q : request->queries) views.push_back(q.View());
  std::vector<Pending> pending(views.size());
  std::vector<std::future<absl::StatusOr<Retrieved>>> futures;
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    for (size_t i = 0; i < views.size(); ++i) {
      pending[i].query = &views[i];
      futures.push_back(pending[i].done.get_future());
      queue_.push_back(&pending[i]);
    }
  }
  queue_cv_.notify_one();
  std::vector<absl::StatusOr<Retrieved>> results;
  for (auto& f : futures) results.push_back(f.get());
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    stats_.queries += static_cast<int64_t>(views.size());
    for (const auto& r : results) stats_.errors += r.ok() ? 0 : 1;
  }
  return QueryReply(*request, results);
}

absl::Status Server::Update(const std::string& path) {
  std::lock_guard<std::mutex> one_at_a_time(update_mu_);
  absl::StatusOr<std::string> manifest = ReadFileToString(path + "/MANIFEST");
  if (!manifest.ok()) return manifest.status();
  std::shared_ptr<const Bundle> base;
  {
    std::lock_guard<std::mutex> lock(bundle_mu_);
    base = base_;
  }
  // The MANIFEST's kind says which it is; the loaders verify everything else.
  const bool delta = absl::StrContains(*manifest, "kind: BUNDLE_DELTA");
  absl::StatusOr<std::unique_ptr<Bundle>> next = delta ? base->WithDelta(path) : Bundle::Load(path);
  if (!next.ok()) return next.status();
  std::shared_ptr<const Bundle> fresh(std::move(*next));
  {
    std::lock_guard<std::mutex> lock(bundle_mu_);
    if (!delta) base_ = fresh;
    current_ = fresh;
  }
  std::lock_guard<std::mutex> lock(stats_mu_);
  ++stats_.updates;
  return absl::OkStatus();
}

std::string Server::Info(const std::string& id_json) const {
  const std::shared_ptr<const Bundle> b = current();
  const Stats s = stats();
  nlohmann::ordered_json out;
  out["id"] = nlohmann::json::parse(id_json, nullptr, false);
  out["version"] = b->version();
  out["delta_version"] = b->delta_version();
  out["step"] = b->step();
  out["items"] = b->num_items();
  out["search"] = b->search_kind();
  out["requests"] = s.requests;
  out["queries"] = s.queries;
  out["batches"] = s.batches;
  out["errors"] = s.errors;
  out["updates"] = s.updates;
  return out.dump();
}

}  // namespace t2d::serving
