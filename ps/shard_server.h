#pragma once
// ShardServer: the request loop of one parameter-server rank. It owns nothing: it serves the
// local shard (a LocalEmbeddingStore holding shard s of S of every table) over a Transport.
//
// Protocol (full text: docs/ps-protocol.md). Requests come from worker ranks with kRequestTag;
// each gets exactly one reply with kReplyTag, carrying the request id and a status.
//   1. Receive the next request from any worker (deadline: see "Stalls" below).
//   2. Decode and validate every field: framing, version, sender is a worker, type, table
//      exists, dim matches, counts match the payload size, message under max_message_bytes,
//      every id owned by this shard, gradients finite, push rounds consecutive. A bad request
//      gets an error reply and the loop goes on; it never changes any state.
//   3. PUSH, sync mode: buffer it as worker w's push of round k for the table; acknowledge it
//      once round k is the next one to apply (rounds_applied >= k - 1), so a worker is at most
//      one round ahead and the buffer holds at most two rounds per table.
//      When round k has a push from every worker, concatenate them in worker-rank order and
//      apply them as one optimizer step (so duplicate rows are summed in a fixed order and the
//      result is reproducible). PUSH, async mode: apply at once, then acknowledge.
//   4. PULL, STATS, SAVE are served only when consistent: sync mode, once every round this
//      worker has pushed is applied; async mode (PULL), once every worker still running has
//      had at least (this worker's pushes - staleness) pushes applied. Until then they wait in
//      a queue, which is re-examined after every applied round.
//   5. LOAD replaces the shard's contents from shard files (any number of shards wrote them);
//      refused while sync rounds are buffered. SHUTDOWN marks the worker done.
//   6. Run() returns OK once every worker has said SHUTDOWN and nothing is pending.
// Stalls: a deferred request or an incomplete round older than options.timeout ends Run() with
// DeadlineExceeded naming the worker ranks whose pushes are missing; so does a round that
// can never complete because a worker it needs has shut down, and (optionally) no request at
// all for options.idle_timeout. Transport failures end Run() too. The caller then ends the job.
//
// Thread-safety: Run() on one thread; stats() after Run() returned or from the same thread.

#include <deque>
#include <map>
#include <string>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "comm/transport.h"
#include "embedding/local_embedding_store.h"
#include "ps/messages.h"
#include "ps/ps_options.h"

namespace t2d::ps {

class ShardServer {
 public:
  // transport, store: not owned; must outlive the server. The store must hold shard
  // transport->rank() of options.roles.num_servers.
  ShardServer(comm::Transport* transport, embedding::LocalEmbeddingStore* store, PsOptions options);
  ShardServer(const ShardServer&) = delete;
  ShardServer& operator=(const ShardServer&) = delete;

  absl::Status Run();
  const ServerStatsProto& stats() const { return stats_; }

 private:
  // A validated push: the ids, and the gradients left in the received message (no copy).
  struct Push {
    std::vector<int64_t> ids;
    std::string message;
    size_t grads_offset = 0;  // float-aligned: the payload starts 8-aligned
    const float* grads() const { return reinterpret_cast<const float*>(message.data() + grads_offset); }
  };
  struct TableState {
    std::vector<int64_t> received;  // per worker index: pushes received (== round of the last one)
    std::vector<int64_t> applied;   // async, per worker: pushes applied
    int64_t rounds_applied = 0;     // sync: combined rounds applied
    std::map<int64_t, std::vector<std::unique_ptr<Push>>> pending;  // sync: round -> per worker
    absl::Time round_waiting_since = absl::InfiniteFuture();  // sync: oldest incomplete round
    std::vector<std::pair<int, Header>> held_acks;  // sync: (worker rank, push) acked when its round is next
  };
  struct Deferred {
    int src;
    Header header;
    std::vector<int64_t> ids;
    absl::Time since;
  };

  absl::Status Handle(comm::Message message);
  absl::Status Validate(int worker, const Frame& frame, std::vector<int64_t>* ids, Push* push);
  bool Ready(int worker, const Header& header) const;
  absl::Status Execute(int src, const Header& header, std::vector<int64_t> ids);
  absl::Status AcceptPush(int src, const Header& header, Push push);
  absl::Status ApplyCompleteRounds();
  absl::Status ServeDeferred();
  absl::Status CheckStalls(absl::Time now);
  absl::Status SendReply(int dst, std::string bytes);
  absl::Status ReplyError(int dst, const Header& request, const absl::Status& status);
  int64_t SlowestApplied(int table) const;  // async: min over running workers of applied pushes
  bool AllDone() const;

  comm::Transport* const transport_;
  embedding::LocalEmbeddingStore* const store_;
  const PsOptions options_;
  const int shard_;
  std::vector<TableState> tables_;
  std::vector<bool> shut_down_;  // per worker index
  std::deque<Deferred> deferred_;
  absl::Time last_request_;
  ServerStatsProto stats_;
};

}  // namespace t2d::ps
