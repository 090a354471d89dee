#pragma once
// RemoteEmbeddingStore: the worker side of the parameter servers, behind the same
// EmbeddingStore interface as the in-process table (embedding/embedding_store.h).
//
// Protocol (full text: docs/ps-protocol.md):
//   Pull (Pull, or Lookup = Pull + Wait): 1.-2. the ids as given (repeats are not merged: the
//   id contract leaves that to callers), grouped by owner (embedding::ShardOf) in input order;
//   3. each server's ids go out in pieces of at most options.pull_piece_bytes of rows, one PULL
//   request each, a piece as soon as it is full; 4. Wait() takes the replies piece by piece in
//   the order sent and copies each row to the position that asked for it.
//   Push (ApplyGradients): 1.-2. the same partition, summing the gradients of repeated ids in
//   input order into their row; 3. send one PUSH to EVERY server (an empty one where the
//   worker has no rows for it: each push is one round of the table on every server, which is
//   what lets sync servers know a round is complete); 4. sync mode: return at once; the
//   acknowledgements of a table's round are awaited before that table's next push (the servers
//   hold this worker's later pulls until the round is applied, so nothing needs them sooner);
//   async mode: return at once, keeping at most `staleness` rounds unacknowledged (waiting for
//   the oldest when over). A server's error reply to a push makes the store unusable (the round
//   it refused can never complete); it is returned by whichever call meets it first.
//   Every request carries this worker's count of pushes of the table, which the servers use to
//   serve each pull at a consistent point (sync: after every round this worker has pushed;
//   async: within `staleness` rounds of the slowest worker).
//
// Collective calls: in sync mode every worker must call ApplyGradients for a table the same
// number of times (one call = one round = one optimizer step on the servers). Stats and Save
// are normally called by one worker at a step boundary; Load and LoadTable by one worker while
// the others wait (a barrier), before any push of the run.
//
// Prefetch:
//   auto next = store.Pull(table, next_ids);     // request goes out now
//   ... compute and push the current step ...
//   store.Wait(*next, rows);                     // rows of next_ids
// In sync mode a prefetched pull reads the state after this worker's pushes made before the
// Pull() call (the servers hold it until those rounds are complete), the same rows as
// embedding::LocalEmbeddingStore. In async mode a pull that the servers hold back for the
// staleness bound may also see this worker's pushes made after the Pull() call.
//
// Errors: InvalidArgument for bad arguments (nothing sent); a server's error reply is returned
// as that status with the server rank added; no reply within 2 x options.timeout is
// DeadlineExceeded naming the silent server ranks. After a transport error the store is not
// usable (the job is expected to end).
// Thread-safety: not thread-safe; one caller thread (it owns the transport's use).

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "comm/transport.h"
#include "embedding/embedding_store.h"
#include "ps/messages.h"
#include "ps/ps_options.h"

namespace t2d::ps {

class RemoteEmbeddingStore : public embedding::EmbeddingStore {
 public:
  // transport: not owned, must outlive the store; its rank must be a worker of options.roles.
  // tables: the job's table list (the servers have the same one).
  RemoteEmbeddingStore(comm::Transport* transport, std::vector<config::TableConfig> tables, PsOptions options);
  RemoteEmbeddingStore(const RemoteEmbeddingStore&) = delete;
  RemoteEmbeddingStore& operator=(const RemoteEmbeddingStore&) = delete;

  int num_tables() const override { return static_cast<int>(tables_.size()); }
  const config::TableConfig& table_config(int table) const override { return tables_[static_cast<size_t>(table)]; }

  // Pull sends the requests and returns at once; Wait receives. Lookup is the base class's
  // Pull + Wait. Errors beyond the base contract: InvalidArgument when a single row would
  // exceed options.max_message_bytes (nothing sent); larger pulls are cut into pieces that fit.
  absl::StatusOr<Ticket> Pull(int table, absl::Span<const int64_t> ids) override;
  absl::Status Wait(Ticket ticket, absl::Span<float> out) override;
  absl::Status ApplyGradients(int table, absl::Span<const int64_t> ids, absl::Span<const float> grads) override;
  absl::StatusOr<std::vector<embedding::TableStats>> Stats() override;
  absl::Status Save(const std::string& dir) override;
  absl::Status Load(const std::string& dir) override;
  absl::Status LoadTable(int table, const std::string& dir) override;

  // Waits for every outstanding push acknowledgement (async mode keeps some).
  absl::Status Flush();
  // Flush, then tells every server this worker is done and waits for their replies.
  absl::Status Shutdown();

  // Per-server counters, resident memory and table shards (STATS), in server order.
  absl::StatusOr<std::vector<ServerStatsProto>> ServerStats();
  // Largest number of unacknowledged push rounds this worker had after any ApplyGradients.
  int64_t max_unacked_rounds() const { return max_unacked_rounds_; }

 private:
  struct Reply {
    int source = -1;
    Header header;
    std::string bytes;
    size_t payload_offset = 0;
  };
  struct PullPiece {  // one request to one server: `count` rows of a pull
    uint64_t request_id = 0;
    uint32_t count = 0;
    // Row k of the reply (and id k of the request) is that of the caller's position
    // positions[k], or begin + k where `positions` is empty (a contiguous range).
    uint32_t begin = 0;
    std::vector<uint32_t> positions;
  };
  struct PendingPull {
    int table = 0;
    size_t num_positions = 0;
    std::vector<PullPiece> pieces;  // in the order they were sent
  };
  // Room kept for a frame's header when sizing a piece against max_message_bytes.
  static constexpr int64_t kHeaderAllowance = 1024;

  Header NewRequest(Header::Type type);
  absl::Status SendRequest(int server, const Header& header, std::string bytes);
  // Receives replies until all of `request_ids` are in replies_.
  absl::Status AwaitReplies(absl::Span<const uint64_t> request_ids);
  // Takes the reply of `request_id` (REQUIRES it was awaited) and returns its status.
  absl::StatusOr<Reply> TakeReply(uint64_t request_id);
  // Sends a payload-less request of `type` to every server and awaits the replies.
  // `table` >= 0 is set in every request's header (LOAD of one table).
  absl::StatusOr<std::vector<Reply>> Broadcast(Header::Type type, const std::string& path, int table = -1);
  absl::Status CheckTable(int table) const;
  absl::Status WaitOldestPushRound();

  comm::Transport* const transport_;
  const std::vector<config::TableConfig> tables_;
  const PsOptions options_;
  uint64_t next_request_id_ = 1;
  Ticket next_ticket_ = 1;
  std::vector<int64_t> pushes_sent_;  // per table
  absl::flat_hash_map<uint64_t, int> outstanding_;  // request id -> server rank
  absl::flat_hash_map<uint64_t, Reply> replies_;    // received, not yet taken
  absl::flat_hash_map<Ticket, PendingPull> pulls_;
  struct PushRound {
    int table = 0;
    std::vector<uint64_t> request_ids;  // one per server
  };
  std::deque<PushRound> unacked_rounds_;  // push rounds sent and not yet acknowledged, oldest first
  int64_t max_unacked_rounds_ = 0;
  absl::Status broken_;  // a transport failure ends the store's usefulness
};

}  // namespace t2d::ps
