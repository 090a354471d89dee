#pragma once
// EmbeddingStore: the boundary through which the trainer reads and updates sparse rows.
//
// Implementations: LocalEmbeddingStore (in-process tables; used by servers for their shards and
// by single-process runs and tests) and ps::RemoteEmbeddingStore (worker side, talks to the
// parameter servers). The trainer and the tests do not care which one they hold.
//
// Id contract: ids are any int64 values, may repeat and come in any order. Lookup (and Pull then
// Wait) returns one row per input position, in the caller's order. ApplyGradients sums the gradients of repeated
// ids before one optimizer update per distinct id, and counts as one step of the table.
// Callers that want to save bandwidth deduplicate first; correctness does not depend on it.
//
// Tables are addressed by their index in the job config's `tables` list.
//
// Thread-safety: each implementation states its own; callers must not assume more than one
// caller at a time unless it says so.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "embedding/table_config.pb.h"

namespace t2d::embedding {

struct TableStats {
  std::string name;
  int64_t rows = 0;       // stored rows
  int64_t step = 0;       // gradient applications
  int64_t admitted = 0;
  int64_t evicted = 0;
  int64_t rejected = 0;
  int64_t memory_bytes = 0;
};

class EmbeddingStore {
 public:
  virtual ~EmbeddingStore() = default;

  virtual int num_tables() const = 0;
  virtual const config::TableConfig& table_config(int table) const = 0;
  int dim(int table) const { return table_config(table).dim(); }

  // Reading rows comes in two halves so that a caller can overlap a read with other work, such
  // as prefetching the next batch while the current one trains:
  //   EmbeddingStore::Ticket next = *store.Pull(table, next_ids);   // the read starts now
  //   ... compute and push the current step ...
  //   store.Wait(next, rows);                                       // rows of next_ids
  //
  // What a pull observes: the table after every ApplyGradients of it that this caller made
  // before the Pull() call, however late Wait comes. LocalEmbeddingStore reads the rows during
  // Pull (so it also sees other threads' calls that returned before it, and none after);
  // RemoteEmbeddingStore in sync mode is served after every round this worker has pushed (with
  // the other workers' pushes of those rounds, none of later rounds). The two therefore return
  // the same rows for the same gradients. Async remote stores relax this to the staleness bound
  // (ps/remote_embedding_store.h).
  //
  // Tickets: never 0 (callers may use 0 for "none"). Several may be outstanding and they may be
  // waited for in any order, each exactly once: Wait consumes its ticket whatever it returns. A
  // ticket never waited for holds its rows until the store goes away (RemoteEmbeddingStore
  // drains it in Shutdown).
  using Ticket = uint64_t;

  // Starts reading the rows of `ids` (the id contract above). Errors: InvalidArgument (bad table
  // index, more ids than one request can carry); remote stores: the transport's error. On error
  // there is no ticket.
  virtual absl::StatusOr<Ticket> Pull(int table, absl::Span<const int64_t> ids) = 0;

  // Writes the rows of `ticket`, one row of dim(table) floats per id given to Pull, row-major,
  // into `out`. Errors: InvalidArgument (unknown or already waited ticket, out.size() !=
  // ids.size() * dim); remote stores: a server's error reply, DataLoss for a malformed reply,
  // DeadlineExceeded when servers do not answer. On error `out` is unspecified.
  virtual absl::Status Wait(Ticket ticket, absl::Span<float> out) = 0;

  // Pull, then Wait. The arguments are checked first, so a bad table or buffer reads nothing.
  // Errors: those of Pull and Wait. An implementation may override it only with a faster path
  // that gives the same rows and error codes (LocalEmbeddingStore does, so that a server writes
  // pulled rows straight into its reply without a per-ticket buffer).
  virtual absl::Status Lookup(int table, absl::Span<const int64_t> ids, absl::Span<float> out) {
    if (table < 0 || table >= num_tables()) {
      return absl::InvalidArgumentError(absl::StrCat("no table with index ", table, " (", num_tables(), " tables)"));
    }
    const size_t need = ids.size() * static_cast<size_t>(dim(table));
    if (out.size() != need) {
      return absl::InvalidArgumentError(absl::StrCat("table \"", table_config(table).name(), "\": lookup of ", ids.size(),
                                                     " ids needs ", need, " floats, buffer has ", out.size()));
    }
    absl::StatusOr<Ticket> ticket = Pull(table, ids);
    if (!ticket.ok()) return ticket.status();
    return Wait(*ticket, out);
  }

  // Applies `grads` (same layout as Lookup's output) with the table's optimizer.
  // Errors: InvalidArgument (bad table, size mismatch, non-finite gradient: nothing applied).
  virtual absl::Status ApplyGradients(int table, absl::Span<const int64_t> ids, absl::Span<const float> grads) = 0;

  // Per-table statistics (summed over shards for remote stores).
  virtual absl::StatusOr<std::vector<TableStats>> Stats() = 0;

  // Writes every table's shard files into the existing folder `dir`.
  virtual absl::Status Save(const std::string& dir) = 0;
  // Replaces the contents of every table with the shard files in `dir` (any number of shards).
  virtual absl::Status Load(const std::string& dir) = 0;
  // Replaces the contents of `table` alone with its shard files in `dir` (found by the table's
  // name; any number of shards), leaving the other tables as they are. Errors as Load, and
  // InvalidArgument for a bad table index; a failed load leaves the table as it was.
  virtual absl::Status LoadTable(int table, const std::string& dir) = 0;
};

}  // namespace t2d::embedding
