#pragma once
// EmbeddingStore: the boundary through which the trainer reads and updates sparse rows.
//
// Implementations: LocalEmbeddingStore (in-process tables; used by servers for their shards and
// by single-process runs and tests) and ps::RemoteEmbeddingStore (worker side, talks to the
// parameter servers). The trainer and the tests do not care which one they hold.
//
// Id contract: ids are any int64 values, may repeat and come in any order. Lookup returns one
// row per input position, in the caller's order. ApplyGradients sums the gradients of repeated
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
#include "absl/types/span.h"
#include "configs/job_config.pb.h"

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

  // Writes ids.size() rows of dim(table) floats, row-major, into `out`.
  // Errors: InvalidArgument (bad table index, out.size() != ids.size() * dim); Unavailable /
  // DeadlineExceeded for remote stores whose servers do not answer. On error `out` is unspecified.
  virtual absl::Status Lookup(int table, absl::Span<const int64_t> ids, absl::Span<float> out) = 0;

  // Applies `grads` (same layout as Lookup's output) with the table's optimizer.
  // Errors: InvalidArgument (bad table, size mismatch, non-finite gradient: nothing applied).
  virtual absl::Status ApplyGradients(int table, absl::Span<const int64_t> ids, absl::Span<const float> grads) = 0;

  // Per-table statistics (summed over shards for remote stores).
  virtual absl::StatusOr<std::vector<TableStats>> Stats() = 0;

  // Writes every table's shard files into the existing folder `dir`.
  virtual absl::Status Save(const std::string& dir) = 0;
  // Replaces the contents of every table with the shard files in `dir` (any number of shards).
  virtual absl::Status Load(const std::string& dir) = 0;
};

}  // namespace t2d::embedding
