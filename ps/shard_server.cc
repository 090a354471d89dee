#include "ps/shard_server.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/finite.h"
#include "common/process_memory.h"
#include "common/status_macros.h"
#include "embedding/sharding.h"
#include "glog/logging.h"

namespace t2d::ps {
namespace {

const char* TypeName(Header::Type t) { return Header::Type_Name(t).c_str(); }

}  // namespace

ShardServer::ShardServer(comm::Transport* transport, embedding::LocalEmbeddingStore* store, PsOptions options)
    : transport_(transport),
      store_(store),
      options_(options),
      shard_(options.roles.ShardOfServer(transport->rank())),
      tables_(static_cast<size_t>(store->num_tables())),
      shut_down_(static_cast<size_t>(options.roles.num_workers), false) {
  CHECK_EQ(store->shard_index(), shard_) << "store holds the wrong shard for this rank";
  CHECK_EQ(store->num_shards(), options.roles.num_servers);
  for (auto& t : tables_) {
    t.received.assign(static_cast<size_t>(options.roles.num_workers), 0);
    t.applied.assign(static_cast<size_t>(options.roles.num_workers), 0);
  }
  stats_.set_shard(shard_);
}

bool ShardServer::AllDone() const {
  if (!std::all_of(shut_down_.begin(), shut_down_.end(), [](bool b) { return b; })) return false;
  if (!deferred_.empty()) return false;
  for (const auto& t : tables_) {
    if (!t.pending.empty()) return false;
  }
  return true;
}

absl::Status ShardServer::Run() {
  last_request_ = absl::Now();
  LOG(INFO) << "shard server " << shard_ << "/" << options_.roles.num_servers << " serving "
            << options_.roles.num_workers << " workers, "
            << (options_.consistency == Consistency::kSync ? "sync" : absl::StrCat("async tau=", options_.staleness));
  while (!AllDone()) {
    // Wake up at the earliest time something could have stalled.
    absl::Time deadline = last_request_ + options_.idle_timeout;
    for (const auto& d : deferred_) deadline = std::min(deadline, d.since + options_.timeout);
    for (const auto& t : tables_) deadline = std::min(deadline, t.round_waiting_since + options_.timeout);
    auto message = transport_->Recv(comm::kAnySource, kRequestTag, deadline);
    if (!message.ok()) {
      if (!absl::IsDeadlineExceeded(message.status())) return message.status();
      T2D_RETURN_IF_ERROR(CheckStalls(absl::Now()));
      continue;
    }
    last_request_ = absl::Now();
    T2D_RETURN_IF_ERROR(Handle(*std::move(message)));
    T2D_RETURN_IF_ERROR(ApplyCompleteRounds());
    T2D_RETURN_IF_ERROR(ServeDeferred());
  }
  // Deliver the last replies before the caller tears the transport down.
  T2D_RETURN_IF_ERROR(transport_->Flush(absl::Now() + options_.timeout));
  LOG(INFO) << "shard server " << shard_ << " done: " << stats_.requests() << " requests, " << stats_.errors()
            << " errors";
  return absl::OkStatus();
}

absl::Status ShardServer::CheckStalls(absl::Time now) {
  const int num_workers = options_.roles.num_workers;
  auto names = [&](auto missing) {
    std::vector<int> ranks;
    for (int w = 0; w < num_workers; ++w) {
      if (missing(w)) ranks.push_back(options_.roles.WorkerRank(w));
    }
    return options_.roles.DescribeRanks(ranks);
  };
  const std::string self = options_.roles.Describe(transport_->rank());
  for (size_t t = 0; t < tables_.size(); ++t) {
    const TableState& ts = tables_[t];
    if (now >= ts.round_waiting_since + options_.timeout) {
      const int64_t round = ts.rounds_applied + 1;
      return absl::DeadlineExceededError(absl::StrCat(
          self, ": sync round ", round, " of table \"", store_->table_config(static_cast<int>(t)).name(),
          "\" incomplete after ", absl::FormatDuration(options_.timeout), ": no push from ",
          names([&](int w) { return ts.received[static_cast<size_t>(w)] < round; })));
    }
  }
  for (const auto& d : deferred_) {
    if (now < d.since + options_.timeout) continue;
    const int worker = options_.roles.WorkerIndex(d.src);
    std::string missing;
    if (d.header.type() == Header::PULL && options_.consistency == Consistency::kAsync) {
      const TableState& ts = tables_[static_cast<size_t>(d.header.table())];
      const int64_t need = ts.received[static_cast<size_t>(worker)] - options_.staleness;
      missing = names([&](int w) { return !shut_down_[static_cast<size_t>(w)] && ts.applied[static_cast<size_t>(w)] < need; });
    } else {
      missing = names([&](int w) {
        for (const auto& ts : tables_) {
          if (ts.received[static_cast<size_t>(w)] < ts.received[static_cast<size_t>(worker)]) return true;
        }
        return false;
      });
    }
    return absl::DeadlineExceededError(absl::StrCat(self, ": ", TypeName(d.header.type()), " from ",
                                                    options_.roles.Describe(d.src), " waited ",
                                                    absl::FormatDuration(options_.timeout), " for pushes from ",
                                                    missing));
  }
  if (now >= last_request_ + options_.idle_timeout) {
    std::string running = names([&](int w) { return !shut_down_[static_cast<size_t>(w)]; });
    return absl::DeadlineExceededError(absl::StrCat(self, ": no request for ",
                                                    absl::FormatDuration(options_.idle_timeout), "; ", running,
                                                    " never shut down"));
  }
  return absl::OkStatus();
}

absl::Status ShardServer::SendReply(int dst, std::string bytes) {
  return transport_->Send(dst, kReplyTag, std::move(bytes), absl::Now() + options_.timeout);
}

absl::Status ShardServer::ReplyError(int dst, const Header& request, const absl::Status& status) {
  stats_.set_errors(stats_.errors() + 1);
  LOG(WARNING) << "rejected " << TypeName(request.type()) << " request_id=" << request.request_id() << " from rank " << dst
               << ": " << status;
  return SendReply(dst, EncodeFrame(ReplyHeader(request, status)));
}

absl::Status ShardServer::Validate(int worker, const Frame& f, std::vector<int64_t>* ids, Push* push) {
  const Header& h = f.header;
  if (shut_down_[static_cast<size_t>(worker)]) {
    return absl::FailedPreconditionError("this worker already sent SHUTDOWN");
  }
  switch (h.type()) {
    case Header::PULL:
    case Header::PUSH:
      break;
    case Header::STATS:
    case Header::SHUTDOWN:
      return f.payload.empty() ? absl::OkStatus()
                               : absl::InvalidArgumentError(absl::StrCat(TypeName(h.type()), " carries ", f.payload.size(),
                                                                         " unexpected payload bytes"));
    case Header::SAVE:
    case Header::LOAD:
      if (h.path().empty()) return absl::InvalidArgumentError(absl::StrCat(TypeName(h.type()), " without a path"));
      if (h.type() == Header::LOAD && h.has_table() && (h.table() < 0 || h.table() >= store_->num_tables())) {
        return absl::InvalidArgumentError(absl::StrCat("LOAD of table index ", h.table(), ", which does not exist (",
                                                       store_->num_tables(), " tables)"));
      }
      return absl::OkStatus();
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown request type ", static_cast<int>(h.type())));
  }
  if (!h.has_table() || h.table() < 0 || h.table() >= store_->num_tables()) {
    return absl::InvalidArgumentError(absl::StrCat("table index ", h.table(), " does not exist (", store_->num_tables(),
                                                   " tables)"));
  }
  const int dim = store_->dim(h.table());
  const std::string& name = store_->table_config(h.table()).name();
  if (h.dim() != dim) {
    return absl::InvalidArgumentError(absl::StrCat("table \"", name, "\" has dim ", dim, ", request says ", h.dim()));
  }
  const int64_t n = h.num_ids();
  const int64_t cap = options_.max_message_bytes;
  const int64_t row_bytes = int64_t{4} * dim;
  if (n < 0 || n > cap / 8 || n > cap / row_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("num_ids ", n, " is negative or its rows exceed max_message_bytes ", cap));
  }
  const int64_t expected = h.type() == Header::PULL ? 8 * n : (8 + row_bytes) * n;
  if (static_cast<int64_t>(f.payload.size()) != expected) {
    return absl::InvalidArgumentError(absl::StrCat(TypeName(h.type()), " of ", n, " ids in table \"", name, "\" (dim ", dim,
                                                   ") needs a payload of ", expected, " bytes, got ", f.payload.size()));
  }
  const TableState& ts = tables_[static_cast<size_t>(h.table())];
  const int64_t received = ts.received[static_cast<size_t>(worker)];
  if (h.type() == Header::PULL && h.round() != received) {
    return absl::InvalidArgumentError(absl::StrCat("pull of table \"", name, "\" says ", h.round(),
                                                   " pushes were sent before it, this server received ", received));
  }
  if (h.type() == Header::PUSH && h.round() != received + 1) {
    return absl::InvalidArgumentError(absl::StrCat("push of table \"", name, "\" is round ", h.round(), ", expected round ",
                                                   received + 1));
  }
  std::vector<int64_t>& out = h.type() == Header::PULL ? *ids : push->ids;
  out.resize(static_cast<size_t>(n));
  if (n > 0) std::memcpy(out.data(), f.payload.data(), static_cast<size_t>(8 * n));
  const int num_shards = options_.roles.num_servers;
  if (num_shards > 1) {  // a single shard owns every id
    for (int64_t id : out) {
      if (embedding::ShardOf(id, num_shards) != shard_) {
        return absl::InvalidArgumentError(absl::StrCat("id ", id, " belongs to shard ", embedding::ShardOf(id, num_shards),
                                                       ", not to this server's shard ", shard_));
      }
    }
  }
  if (h.type() == Header::PUSH) {
    const float* grads = reinterpret_cast<const float*>(f.payload.data() + 8 * n);
    const size_t count = static_cast<size_t>(n * dim);
    if (const size_t i = FirstNonFinite(absl::MakeConstSpan(grads, count)); i < count) {
      return absl::InvalidArgumentError(absl::StrCat("gradient of id ", push->ids[i / static_cast<size_t>(dim)],
                                                     " in table \"", name, "\" is not finite"));
    }
  }
  return absl::OkStatus();
}

absl::Status ShardServer::Handle(comm::Message message) {
  stats_.set_requests(stats_.requests() + 1);
  const int src = message.source;
  auto frame = DecodeFrame(message.bytes);
  Header request = frame.ok() ? frame->header : Header();
  if (!options_.roles.IsWorker(src)) {
    return ReplyError(src, request, absl::PermissionDeniedError(absl::StrCat("rank ", src, " is not a worker rank")));
  }
  if (!frame.ok()) return ReplyError(src, request, frame.status());
  if (static_cast<int64_t>(message.bytes.size()) > options_.max_message_bytes) {
    return ReplyError(src, request,
                      absl::InvalidArgumentError(absl::StrCat("message of ", message.bytes.size(),
                                                              " bytes exceeds max_message_bytes ",
                                                              options_.max_message_bytes)));
  }
  const int worker = options_.roles.WorkerIndex(src);
  std::vector<int64_t> ids;
  Push push;
  if (auto s = Validate(worker, *frame, &ids, &push); !s.ok()) return ReplyError(src, request, s);
  VLOG(2) << "request " << TypeName(request.type()) << " id=" << request.request_id() << " from=" << src
          << " table=" << request.table() << " n=" << request.num_ids();
  if (request.type() == Header::PUSH) {
    push.grads_offset = static_cast<size_t>(frame->payload.data() - message.bytes.data()) + 8 * push.ids.size();
    push.message = std::move(message.bytes);
    return AcceptPush(src, request, std::move(push));
  }
  if (!Ready(worker, request)) {
    stats_.set_deferred(stats_.deferred() + 1);
    deferred_.push_back(Deferred{src, std::move(request), std::move(ids), absl::Now()});
    return absl::OkStatus();
  }
  return Execute(src, request, std::move(ids));
}

int64_t ShardServer::SlowestApplied(int table) const {
  const TableState& ts = tables_[static_cast<size_t>(table)];
  int64_t slowest = INT64_MAX;
  for (size_t w = 0; w < shut_down_.size(); ++w) {
    if (!shut_down_[w]) slowest = std::min(slowest, ts.applied[w]);
  }
  return slowest;
}

bool ShardServer::Ready(int worker, const Header& h) const {
  const size_t w = static_cast<size_t>(worker);
  switch (h.type()) {
    case Header::PULL: {
      const TableState& ts = tables_[static_cast<size_t>(h.table())];
      if (options_.consistency == Consistency::kSync) return ts.rounds_applied >= ts.received[w];
      return SlowestApplied(h.table()) >= ts.received[w] - options_.staleness;
    }
    case Header::STATS:
    case Header::SAVE:
      if (options_.consistency == Consistency::kAsync) return true;
      for (const auto& ts : tables_) {
        if (ts.rounds_applied < ts.received[w]) return false;
      }
      return true;
    default:
      return true;
  }
}

absl::Status ShardServer::AcceptPush(int src, const Header& h, Push push) {
  const int worker = options_.roles.WorkerIndex(src);
  const size_t w = static_cast<size_t>(worker);
  TableState& ts = tables_[static_cast<size_t>(h.table())];
  stats_.set_pushed_rows(stats_.pushed_rows() + static_cast<int64_t>(push.ids.size()));
  ts.received[w] = h.round();
  if (options_.consistency == Consistency::kAsync) {
    const size_t dim = static_cast<size_t>(store_->dim(h.table()));
    absl::Status s = store_->ApplyGradients(h.table(), push.ids, absl::MakeConstSpan(push.grads(), push.ids.size() * dim));
    ts.applied[w] = h.round();
    stats_.set_rounds_applied(stats_.rounds_applied() + 1);
    if (!s.ok()) return ReplyError(src, h, s);
    return SendReply(src, EncodeFrame(ReplyHeader(h, absl::OkStatus())));
  }
  auto& slots = ts.pending[h.round()];
  if (slots.empty()) slots.resize(static_cast<size_t>(options_.roles.num_workers));
  slots[w] = std::make_unique<Push>(std::move(push));
  if (ts.round_waiting_since == absl::InfiniteFuture()) ts.round_waiting_since = absl::Now();
  if (h.round() > ts.rounds_applied + 1) {
    // Back-pressure: this worker is a round ahead of the slowest; the ack waits (see Run()).
    ts.held_acks.emplace_back(src, h);
    return absl::OkStatus();
  }
  return SendReply(src, EncodeFrame(ReplyHeader(h, absl::OkStatus())));
}

absl::Status ShardServer::ApplyCompleteRounds() {
  if (options_.consistency != Consistency::kSync) return absl::OkStatus();
  for (size_t t = 0; t < tables_.size(); ++t) {
    TableState& ts = tables_[t];
    while (!ts.pending.empty() && ts.pending.begin()->first == ts.rounds_applied + 1) {
      auto& slots = ts.pending.begin()->second;
      bool complete = true;
      for (size_t w = 0; w < slots.size(); ++w) {
        if (slots[w] != nullptr) continue;
        complete = false;
        if (shut_down_[w]) {
          return absl::FailedPreconditionError(absl::StrCat(
              "server rank ", transport_->rank(), ": sync round ", ts.pending.begin()->first, " of table \"",
              store_->table_config(static_cast<int>(t)).name(), "\" can never complete: worker rank ",
              options_.roles.WorkerRank(static_cast<int>(w)), " shut down without pushing it (all workers must call "
              "ApplyGradients for a table the same number of times)"));
        }
      }
      if (!complete) break;
      // One optimizer step from all workers' gradients, concatenated in worker-rank order.
      size_t total = 0;
      for (const auto& p : slots) total += p->ids.size();
      std::vector<int64_t> ids;
      std::vector<float> grads;
      ids.reserve(total);
      grads.reserve(total * static_cast<size_t>(store_->dim(static_cast<int>(t))));
      const size_t dim = static_cast<size_t>(store_->dim(static_cast<int>(t)));
      for (const auto& p : slots) {
        ids.insert(ids.end(), p->ids.begin(), p->ids.end());
        grads.insert(grads.end(), p->grads(), p->grads() + p->ids.size() * dim);
      }
      if (auto s = store_->ApplyGradients(static_cast<int>(t), ids, grads); !s.ok()) {
        // Every push was validated on arrival, so this is a broken invariant of the store.
        return absl::InternalError(absl::StrCat("applying validated sync round ", ts.rounds_applied + 1, ": ", s.message()));
      }
      ts.pending.erase(ts.pending.begin());
      ++ts.rounds_applied;
      stats_.set_rounds_applied(stats_.rounds_applied() + 1);
      ts.round_waiting_since = ts.pending.empty() ? absl::InfiniteFuture() : absl::Now();
      // Release the acks of pushes whose round is now the next one.
      std::vector<std::pair<int, Header>> still;
      for (auto& [src, h] : ts.held_acks) {
        if (h.round() <= ts.rounds_applied + 1) {
          T2D_RETURN_IF_ERROR(SendReply(src, EncodeFrame(ReplyHeader(h, absl::OkStatus()))));
        } else {
          still.emplace_back(src, std::move(h));
        }
      }
      ts.held_acks = std::move(still);
    }
  }
  return absl::OkStatus();
}

absl::Status ShardServer::ServeDeferred() {
  // Serve in arrival order every request that has become ready; keep the rest.
  std::deque<Deferred> still;
  while (!deferred_.empty()) {
    Deferred d = std::move(deferred_.front());
    deferred_.pop_front();
    if (Ready(options_.roles.WorkerIndex(d.src), d.header)) {
      T2D_RETURN_IF_ERROR(Execute(d.src, d.header, std::move(d.ids)));
    } else {
      still.push_back(std::move(d));
    }
  }
  deferred_ = std::move(still);
  return absl::OkStatus();
}

absl::Status ShardServer::Execute(int src, const Header& h, std::vector<int64_t> ids) {
  const int worker = options_.roles.WorkerIndex(src);
  switch (h.type()) {
    case Header::PULL: {
      const int dim = store_->dim(h.table());
      Header reply = ReplyHeader(h, absl::OkStatus());
      reply.set_num_ids(static_cast<int64_t>(ids.size()));
      reply.set_dim(dim);
      const TableState& ts = tables_[static_cast<size_t>(h.table())];
      if (options_.consistency == Consistency::kAsync) {
        const int64_t lag = std::max<int64_t>(0, ts.received[static_cast<size_t>(worker)] - SlowestApplied(h.table()));
        stats_.set_max_staleness(std::max(stats_.max_staleness(), lag));
      }
      size_t offset = 0;
      const size_t payload_bytes = ids.size() * static_cast<size_t>(dim) * sizeof(float);
      // A reused buffer: the lookup overwrites every row, so zero-filling a fresh one would be
      // wasted work (comm/buffer_pool.h). The payload offset is 8-aligned within a heap buffer,
      // so it is float-aligned.
      std::string bytes =
          EncodeFrameIn(transport_->NewBuffer(FrameBytes(reply, payload_bytes)), reply, payload_bytes, &offset);
      float* rows = reinterpret_cast<float*>(bytes.data() + offset);
      if (auto s = store_->Lookup(h.table(), ids, absl::MakeSpan(rows, ids.size() * static_cast<size_t>(dim))); !s.ok()) {
        return ReplyError(src, h, s);
      }
      stats_.set_pulled_rows(stats_.pulled_rows() + static_cast<int64_t>(ids.size()));
      return SendReply(src, std::move(bytes));
    }
    case Header::STATS: {
      auto tables = store_->Stats();
      if (!tables.ok()) return ReplyError(src, h, tables.status());
      Header reply = ReplyHeader(h, absl::OkStatus());
      for (const auto& t : *tables) {
        TableStatsProto* p = reply.add_stats();
        p->set_name(t.name);
        p->set_rows(t.rows);
        p->set_step(t.step);
        p->set_admitted(t.admitted);
        p->set_evicted(t.evicted);
        p->set_rejected(t.rejected);
        p->set_memory_bytes(t.memory_bytes);
      }
      *reply.mutable_server_stats() = stats_;
      // Memory is the process's, so tables can be read against it (docs/SCALE.md); where the
      // kernel does not say, the fields stay unset.
      if (auto m = ReadProcessMemory(); m.ok()) {
        reply.mutable_server_stats()->set_rss_bytes(m->rss_bytes);
        reply.mutable_server_stats()->set_peak_rss_bytes(m->peak_rss_bytes);
      }
      return SendReply(src, EncodeFrame(reply));
    }
    case Header::SAVE: {
      absl::Status s = store_->Save(h.path());
      if (!s.ok()) return ReplyError(src, h, s);
      LOG(INFO) << "saved shard " << shard_ << " to " << h.path();
      return SendReply(src, EncodeFrame(ReplyHeader(h, s)));
    }
    case Header::LOAD: {
      for (const auto& ts : tables_) {
        if (!ts.pending.empty()) {
          return ReplyError(src, h, absl::FailedPreconditionError("LOAD while sync push rounds are still incomplete"));
        }
      }
      absl::Status s = h.has_table() ? store_->LoadTable(h.table(), h.path()) : store_->Load(h.path());
      if (!s.ok()) return ReplyError(src, h, s);
      LOG(INFO) << "loaded shard " << shard_ << (h.has_table() ? absl::StrCat(" of table ", h.table()) : "") << " from "
                << h.path();
      return SendReply(src, EncodeFrame(ReplyHeader(h, s)));
    }
    case Header::SHUTDOWN:
      shut_down_[static_cast<size_t>(worker)] = true;
      VLOG(1) << "worker rank " << src << " shut down";
      return SendReply(src, EncodeFrame(ReplyHeader(h, absl::OkStatus())));
    default:
      return ReplyError(src, h, absl::InternalError("unexpected request type"));
  }
}

}  // namespace t2d::ps
