#include "ps/remote_embedding_store.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/finite.h"
#include "common/status_macros.h"
#include "embedding/sharding.h"
#include "glog/logging.h"

namespace t2d::ps {

RemoteEmbeddingStore::RemoteEmbeddingStore(comm::Transport* transport, std::vector<config::TableConfig> tables,
                                           PsOptions options)
    : transport_(transport), tables_(std::move(tables)), options_(options), pushes_sent_(tables_.size(), 0) {
  CHECK(options_.roles.IsWorker(transport->rank())) << "rank " << transport->rank() << " is not a worker";
}

absl::Status RemoteEmbeddingStore::CheckTable(int table) const {
  if (table < 0 || table >= num_tables()) {
    return absl::InvalidArgumentError(absl::StrCat("no table with index ", table, " (", num_tables(), " tables)"));
  }
  return absl::OkStatus();
}

Header RemoteEmbeddingStore::NewRequest(Header::Type type) {
  Header h;
  h.set_version(kWireVersion);
  h.set_type(type);
  h.set_request_id(next_request_id_++);
  return h;
}

absl::Status RemoteEmbeddingStore::SendRequest(int server, const Header& header, std::string bytes) {
  T2D_RETURN_IF_ERROR(broken_);
  if (static_cast<int64_t>(bytes.size()) > options_.max_message_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(Header::Type_Name(header.type()), " to server rank ", server, " would be ",
                                                   bytes.size(), " bytes, over max_message_bytes ",
                                                   options_.max_message_bytes, "; use smaller batches"));
  }
  absl::Status s = transport_->Send(server, kRequestTag, std::move(bytes), absl::Now() + 2 * options_.timeout);
  if (!s.ok()) {
    broken_ = s;
    return s;
  }
  outstanding_[header.request_id()] = server;
  return absl::OkStatus();
}

absl::Status RemoteEmbeddingStore::AwaitReplies(absl::Span<const uint64_t> request_ids) {
  const absl::Time deadline = absl::Now() + 2 * options_.timeout;
  auto missing = [&] {
    for (uint64_t id : request_ids) {
      if (!replies_.contains(id)) return true;
    }
    return false;
  };
  while (missing()) {
    T2D_RETURN_IF_ERROR(broken_);
    auto m = transport_->Recv(comm::kAnySource, kReplyTag, deadline);
    if (!m.ok()) {
      std::vector<int> silent;
      for (uint64_t id : request_ids) {
        if (replies_.contains(id)) continue;
        auto it = outstanding_.find(id);
        if (it != outstanding_.end() && std::find(silent.begin(), silent.end(), it->second) == silent.end()) {
          silent.push_back(it->second);
        }
      }
      std::sort(silent.begin(), silent.end());
      broken_ = absl::Status(m.status().code(),
                             absl::StrCat(options_.roles.Describe(transport_->rank()), ": no reply from ",
                                          options_.roles.DescribeRanks(silent), " within ",
                                          absl::FormatDuration(2 * options_.timeout), " (", m.status().message(), ")"));
      return broken_;
    }
    auto frame = DecodeFrame(m->bytes);
    if (!frame.ok()) {
      broken_ = absl::DataLossError(absl::StrCat("malformed reply from server rank ", m->source, ": ", frame.status().message()));
      return broken_;
    }
    const uint64_t id = frame->header.request_id();
    auto it = outstanding_.find(id);
    if (it == outstanding_.end() || it->second != m->source) {
      broken_ = absl::DataLossError(absl::StrCat("reply from server rank ", m->source, " to unknown request ", id));
      return broken_;
    }
    outstanding_.erase(it);
    Reply r;
    r.source = m->source;
    r.header = std::move(frame->header);
    r.payload_offset = static_cast<size_t>(frame->payload.data() - m->bytes.data());
    r.bytes = std::move(m->bytes);
    if (r.header.type() == Header::PUSH && std::find(request_ids.begin(), request_ids.end(), id) == request_ids.end()) {
      // An acknowledgement met while waiting for something else (sync and async pushes return
      // before theirs). A refused push fails now: its round can never complete, so the store
      // cannot go on, and the caller learns the server's reason from the call it is in.
      absl::Status refused = ReplyStatus(r.header);
      if (!refused.ok()) {
        broken_ = absl::Status(refused.code(), absl::StrCat("server rank ", r.source, ": PUSH: ", refused.message()));
        return broken_;
      }
    }
    replies_.emplace(id, std::move(r));
  }
  return absl::OkStatus();
}

absl::StatusOr<RemoteEmbeddingStore::Reply> RemoteEmbeddingStore::TakeReply(uint64_t request_id) {
  auto it = replies_.find(request_id);
  CHECK(it != replies_.end()) << "reply " << request_id << " was not awaited";
  Reply r = std::move(it->second);
  replies_.erase(it);
  absl::Status s = ReplyStatus(r.header);
  if (!s.ok()) {
    return absl::Status(s.code(), absl::StrCat("server rank ", r.source, ": ", Header::Type_Name(r.header.type()), ": ",
                                               s.message()));
  }
  return r;
}

absl::StatusOr<RemoteEmbeddingStore::Ticket> RemoteEmbeddingStore::Pull(int table, absl::Span<const int64_t> ids) {
  T2D_RETURN_IF_ERROR(CheckTable(table));
  T2D_RETURN_IF_ERROR(broken_);
  if (ids.size() > UINT32_MAX) return absl::InvalidArgumentError("too many ids in one pull");
  const int num_servers = options_.roles.num_servers;
  const config::TableConfig& spec = tables_[static_cast<size_t>(table)];
  const int64_t dim = spec.dim();
  // A piece's request carries 8 bytes an id and its reply 4 x dim an id, plus a header.
  const int64_t id_bytes = std::max<int64_t>(8, 4 * dim);
  const int64_t fits = (options_.max_message_bytes - kHeaderAllowance) / id_bytes;
  if (fits < 1) {
    return absl::InvalidArgumentError(absl::StrCat("table \"", spec.name(), "\": a pull of one row does not fit max_message_bytes ",
                                                   options_.max_message_bytes));
  }
  const size_t piece_rows =
      static_cast<size_t>(std::clamp<int64_t>(options_.pull_piece_bytes / (4 * dim), 1, fits));
  PendingPull p;
  p.table = table;
  p.num_positions = ids.size();
  // The ids go out as given, repeats included: the id contract leaves deduplication to callers
  // that want to save bandwidth (the trainer's keys are distinct, model/step_builder.h), and a
  // hash pass here cost a fifth of a 4,096-row pull. Each server's ids are cut into pieces of
  // piece_rows, a piece sent as soon as it is full, so the servers start looking up rows while
  // the rest of the batch is still being grouped.
  auto send = [&](int s, PullPiece piece, const int64_t* piece_ids) -> absl::Status {
    const size_t n = piece.count;
    Header h = NewRequest(Header::PULL);
    h.set_table(table);
    h.set_num_ids(static_cast<int64_t>(n));
    h.set_dim(static_cast<int32_t>(dim));
    h.set_round(pushes_sent_[static_cast<size_t>(table)]);
    piece.request_id = h.request_id();
    size_t offset = 0;
    std::string bytes = EncodeFrame(h, n * sizeof(int64_t), &offset);
    if (piece_ids != nullptr) {
      std::memcpy(bytes.data() + offset, piece_ids, n * sizeof(int64_t));
    } else {
      for (size_t k = 0; k < n; ++k) {
        std::memcpy(bytes.data() + offset + k * sizeof(int64_t), ids.data() + piece.positions[k], sizeof(int64_t));
      }
    }
    p.pieces.push_back(std::move(piece));
    return SendRequest(options_.roles.ServerRank(s), h, std::move(bytes));
  };
  if (num_servers == 1) {
    // One owner: every piece is a contiguous range of the caller's positions.
    for (size_t begin = 0; begin < ids.size(); begin += piece_rows) {
      PullPiece piece;
      piece.begin = static_cast<uint32_t>(begin);
      piece.count = static_cast<uint32_t>(std::min(piece_rows, ids.size() - begin));
      T2D_RETURN_IF_ERROR(send(0, std::move(piece), ids.data() + begin));
    }
  } else {
    std::vector<std::vector<uint32_t>> open(static_cast<size_t>(num_servers));  // each server's piece being filled
    auto flush = [&](int s) -> absl::Status {
      PullPiece piece;
      piece.positions = std::move(open[static_cast<size_t>(s)]);
      open[static_cast<size_t>(s)].clear();
      piece.count = static_cast<uint32_t>(piece.positions.size());
      return send(s, std::move(piece), nullptr);
    };
    for (size_t i = 0; i < ids.size(); ++i) {
      const int s = embedding::ShardOf(ids[i], num_servers);
      std::vector<uint32_t>& positions = open[static_cast<size_t>(s)];
      if (positions.empty()) positions.reserve(std::min(piece_rows, ids.size() - i));
      positions.push_back(static_cast<uint32_t>(i));
      if (positions.size() == piece_rows) T2D_RETURN_IF_ERROR(flush(s));
    }
    for (int s = 0; s < num_servers; ++s) {
      if (!open[static_cast<size_t>(s)].empty()) T2D_RETURN_IF_ERROR(flush(s));
    }
  }
  const Ticket ticket = next_ticket_++;
  pulls_.emplace(ticket, std::move(p));
  return ticket;
}

absl::Status RemoteEmbeddingStore::Wait(Ticket ticket, absl::Span<float> out) {
  auto it = pulls_.find(ticket);
  if (it == pulls_.end()) return absl::InvalidArgumentError(absl::StrCat("unknown or already waited ticket ", ticket));
  PendingPull p = std::move(it->second);
  pulls_.erase(it);
  const size_t dim = static_cast<size_t>(tables_[static_cast<size_t>(p.table)].dim());
  // Every piece's reply is taken even after an error, so none is left behind in replies_.
  absl::Status first_error;
  if (out.size() != p.num_positions * dim) {
    first_error = absl::InvalidArgumentError(absl::StrCat("pull of ", p.num_positions, " ids needs ", p.num_positions * dim,
                                                          " floats, buffer has ", out.size()));
  }
  // Pieces are placed in the order they were sent, each as soon as it is here: a server answers
  // its pieces in order, so the rows of one are copied while it looks up the next.
  for (const PullPiece& piece : p.pieces) {
    T2D_RETURN_IF_ERROR(AwaitReplies(absl::MakeConstSpan(&piece.request_id, 1)));
    auto r = TakeReply(piece.request_id);
    if (!r.ok()) {
      if (first_error.ok()) first_error = r.status();
      continue;
    }
    const size_t n = piece.count;
    const size_t got = r->bytes.size() - r->payload_offset;
    if (r->header.num_ids() != static_cast<int64_t>(n) || got != n * dim * sizeof(float)) {
      if (first_error.ok()) {
        first_error = absl::DataLossError(
            absl::StrCat("server rank ", r->source, " answered a pull of ", n, " rows with ", got, " bytes"));
      }
      continue;
    }
    if (!first_error.ok()) continue;
    const char* rows = r->bytes.data() + r->payload_offset;
    if (piece.positions.empty()) {
      std::memcpy(out.data() + size_t{piece.begin} * dim, rows, n * dim * sizeof(float));
    } else {
      for (size_t k = 0; k < n; ++k) {
        std::memcpy(out.data() + piece.positions[k] * dim, rows + k * dim * sizeof(float), dim * sizeof(float));
      }
    }
    transport_->Recycle(std::move(r->bytes));
  }
  return first_error;
}

absl::Status RemoteEmbeddingStore::WaitOldestPushRound() {
  std::vector<uint64_t> ids = std::move(unacked_rounds_.front().request_ids);
  unacked_rounds_.pop_front();
  T2D_RETURN_IF_ERROR(AwaitReplies(ids));
  absl::Status first_error;
  for (uint64_t id : ids) {
    auto r = TakeReply(id);
    if (!r.ok() && first_error.ok()) first_error = r.status();
  }
  return first_error;
}

absl::Status RemoteEmbeddingStore::ApplyGradients(int table, absl::Span<const int64_t> ids, absl::Span<const float> grads) {
  T2D_RETURN_IF_ERROR(CheckTable(table));
  T2D_RETURN_IF_ERROR(broken_);
  const config::TableConfig& spec = tables_[static_cast<size_t>(table)];
  const size_t dim = static_cast<size_t>(spec.dim());
  if (grads.size() != ids.size() * dim) {
    return absl::InvalidArgumentError(absl::StrCat("table \"", spec.name(), "\": ", ids.size(), " ids need ", ids.size() * dim,
                                                   " gradient floats, got ", grads.size()));
  }
  if (const size_t i = FirstNonFinite(grads); i < grads.size()) {
    return absl::InvalidArgumentError(absl::StrCat("table \"", spec.name(), "\": gradient of id ", ids[i / dim],
                                                   " is not finite (", grads[i], "); nothing applied"));
  }
  if (ids.size() > UINT32_MAX) return absl::InvalidArgumentError("too many ids in one push");
  const int num_servers = options_.roles.num_servers;
  const embedding::Partition partition = embedding::PartitionByShard(ids, num_servers);
  // Write ids and gradients straight into the messages, summing repeated ids in input order (as
  // EmbeddingTable::ApplyGradients would).
  const int64_t round = pushes_sent_[static_cast<size_t>(table)] + 1;
  std::vector<std::string> messages(static_cast<size_t>(num_servers));
  std::vector<Header> headers(static_cast<size_t>(num_servers));
  std::vector<float*> grad_out(static_cast<size_t>(num_servers));
  for (int s = 0; s < num_servers; ++s) {
    const std::vector<int64_t>& sids = partition.ids[static_cast<size_t>(s)];
    const size_t n = sids.size();
    Header& h = headers[static_cast<size_t>(s)];
    h = NewRequest(Header::PUSH);
    h.set_table(table);
    h.set_num_ids(static_cast<int64_t>(n));
    h.set_dim(spec.dim());
    h.set_round(round);
    size_t offset = 0;
    std::string& m = messages[static_cast<size_t>(s)];
    m = EncodeFrame(h, n * (sizeof(int64_t) + dim * sizeof(float)), &offset);
    if (n > 0) std::memcpy(m.data() + offset, sids.data(), n * sizeof(int64_t));
    grad_out[static_cast<size_t>(s)] = reinterpret_cast<float*>(m.data() + offset + n * sizeof(int64_t));  // 8-aligned
  }
  // Rows are numbered in order of first occurrence, so a position whose row is the next one
  // unwritten of its server is its id's first occurrence.
  std::vector<uint32_t> rows_written(static_cast<size_t>(num_servers), 0);
  for (size_t i = 0; i < ids.size(); ++i) {
    const size_t s = static_cast<size_t>(partition.shard_of_position[i]);
    const uint32_t row = partition.row_of_position[i];
    float* dst = grad_out[s] + static_cast<size_t>(row) * dim;
    const float* g = grads.data() + i * dim;
    if (row == rows_written[s]) {
      ++rows_written[s];
      std::memcpy(dst, g, dim * sizeof(float));
    } else {
      for (size_t j = 0; j < dim; ++j) dst[j] += g[j];
    }
  }
  // Async: make room within the staleness bound before adding a round. Sync: this table's
  // previous round must be acknowledged first (the servers buffer at most two rounds a table).
  if (options_.consistency == Consistency::kAsync) {
    while (static_cast<int64_t>(unacked_rounds_.size()) > std::max(0, options_.staleness - 1)) {
      T2D_RETURN_IF_ERROR(WaitOldestPushRound());
    }
  } else {
    while (std::any_of(unacked_rounds_.begin(), unacked_rounds_.end(),
                       [table](const PushRound& r) { return r.table == table; })) {
      T2D_RETURN_IF_ERROR(WaitOldestPushRound());
    }
  }
  pushes_sent_[static_cast<size_t>(table)] = round;
  std::vector<uint64_t> request_ids;
  for (int s = 0; s < num_servers; ++s) {
    T2D_RETURN_IF_ERROR(SendRequest(options_.roles.ServerRank(s), headers[static_cast<size_t>(s)],
                                    std::move(messages[static_cast<size_t>(s)])));
    request_ids.push_back(headers[static_cast<size_t>(s)].request_id());
  }
  unacked_rounds_.push_back(PushRound{table, std::move(request_ids)});
  if (options_.consistency == Consistency::kAsync && options_.staleness == 0) {
    while (!unacked_rounds_.empty()) T2D_RETURN_IF_ERROR(WaitOldestPushRound());
  }
  max_unacked_rounds_ = std::max<int64_t>(max_unacked_rounds_, static_cast<int64_t>(unacked_rounds_.size()));
  return absl::OkStatus();
}

absl::Status RemoteEmbeddingStore::Flush() {
  absl::Status first_error;
  while (!unacked_rounds_.empty()) {
    absl::Status s = WaitOldestPushRound();
    if (!s.ok() && first_error.ok()) first_error = s;
    T2D_RETURN_IF_ERROR(broken_);
  }
  return first_error;
}

absl::StatusOr<std::vector<RemoteEmbeddingStore::Reply>> RemoteEmbeddingStore::Broadcast(Header::Type type,
                                                                                          const std::string& path,
                                                                                          int table) {
  T2D_RETURN_IF_ERROR(broken_);
  std::vector<uint64_t> ids;
  for (int s = 0; s < options_.roles.num_servers; ++s) {
    Header h = NewRequest(type);
    if (!path.empty()) h.set_path(path);
    if (table >= 0) h.set_table(table);
    T2D_RETURN_IF_ERROR(SendRequest(options_.roles.ServerRank(s), h, EncodeFrame(h)));
    ids.push_back(h.request_id());
  }
  T2D_RETURN_IF_ERROR(AwaitReplies(ids));
  std::vector<Reply> out;
  absl::Status first_error;
  for (uint64_t id : ids) {
    auto r = TakeReply(id);
    if (!r.ok()) {
      if (first_error.ok()) first_error = r.status();
      continue;
    }
    out.push_back(*std::move(r));
  }
  T2D_RETURN_IF_ERROR(first_error);
  return out;
}

absl::StatusOr<std::vector<embedding::TableStats>> RemoteEmbeddingStore::Stats() {
  T2D_ASSIGN_OR_RETURN(std::vector<Reply> replies, Broadcast(Header::STATS, ""));
  std::vector<embedding::TableStats> out(tables_.size());
  for (size_t t = 0; t < tables_.size(); ++t) out[t].name = tables_[t].name();
  for (const Reply& r : replies) {
    if (r.header.stats_size() != num_tables()) {
      return absl::DataLossError(absl::StrCat("server rank ", r.source, " reported ", r.header.stats_size(), " tables, expected ",
                                              num_tables()));
    }
    for (int t = 0; t < num_tables(); ++t) {
      const TableStatsProto& p = r.header.stats(t);
      embedding::TableStats& s = out[static_cast<size_t>(t)];
      s.rows += p.rows();
      s.step = std::max(s.step, p.step());  // every shard takes one step per round
      s.admitted += p.admitted();
      s.evicted += p.evicted();
      s.rejected += p.rejected();
      s.memory_bytes += p.memory_bytes();
    }
  }
  return out;
}

absl::StatusOr<std::vector<ServerStatsProto>> RemoteEmbeddingStore::ServerStats() {
  T2D_ASSIGN_OR_RETURN(std::vector<Reply> replies, Broadcast(Header::STATS, ""));
  std::vector<ServerStatsProto> out;
  for (const Reply& r : replies) {
    if (r.header.stats_size() != num_tables()) {
      return absl::DataLossError(absl::StrCat("server rank ", r.source, " reported ", r.header.stats_size(), " tables, expected ",
                                              num_tables()));
    }
    out.push_back(r.header.server_stats());
    *out.back().mutable_tables() = r.header.stats();
  }
  return out;
}

absl::Status RemoteEmbeddingStore::Save(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("save: empty folder name");
  return Broadcast(Header::SAVE, dir).status();
}

absl::Status RemoteEmbeddingStore::Load(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("load: empty folder name");
  return Broadcast(Header::LOAD, dir).status();
}

absl::Status RemoteEmbeddingStore::LoadTable(int table, const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("load: empty folder name");
  if (table < 0 || table >= num_tables()) {
    return absl::InvalidArgumentError(absl::StrCat("load: no table with index ", table, " (", num_tables(), " tables)"));
  }
  return Broadcast(Header::LOAD, dir, table).status();
}

absl::Status RemoteEmbeddingStore::Shutdown() {
  T2D_RETURN_IF_ERROR(Flush());
  if (!pulls_.empty()) {
    LOG(WARNING) << pulls_.size() << " prefetched pull(s) were never waited for";
    std::vector<uint64_t> ids;
    for (const auto& [ticket, p] : pulls_) {
      for (const auto& piece : p.pieces) ids.push_back(piece.request_id);
    }
    T2D_RETURN_IF_ERROR(AwaitReplies(ids));
    for (uint64_t id : ids) replies_.erase(id);
    pulls_.clear();
  }
  T2D_RETURN_IF_ERROR(Broadcast(Header::SHUTDOWN, "").status());
  return transport_->Flush(absl::Now() + 2 * options_.timeout);
}

}  // namespace t2d::ps
