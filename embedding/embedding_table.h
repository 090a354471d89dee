#pragma once
// One sparse embedding table (or one shard of it): int64 id -> row of `dim` floats plus the
// optimizer state of that row.
//
// Ids: any int64 value. A Lookup never stores anything: an id without a stored row reads as its
// initial value (RowInitializer, a pure function of (seed, id)). A row is stored when its first
// gradient is applied (after admission, below), so reads at evaluation or serving time cost no
// memory.
//
// Memory: rows live in blocks of kBlockRows records, one allocation per block. A record is
//   uint32 last_update_step | uint32 step_count (Adam only) | float weights[dim] |
//   float state[SparseOptimizer::StateFloats(dim)]
// (4 + 4 x (dim + state) bytes, 4 more with Adam: a dim-16 row-wise Adagrad row takes 72 bytes),
// and an absl::flat_hash_map<int64, uint32> maps ids to record slots (16 bytes + 1 control byte
// per bucket, at a load of 7/16 to 7/8). The id is kept in the index only. Freed slots (evicted
// rows) are reused before the block list grows.
//
// Steps: every ApplyGradients call is one step of this table (step() counts them, from 1).
//
// Admission (admission_min_count = m > 1): an id is stored only on the m-th ApplyGradients call
// that contains it; the gradients of the first m-1 are dropped and counted as `rejected`.
// Pending ids cost 12 bytes plus index overhead each.
//
// Eviction: with eviction_ttl_steps = L, rows whose last update is more than L steps old are
// removed by a sweep that runs every max(1, L/8) steps; with capacity_rows = C, once more than C
// rows are stored the least recently updated are removed (ties: smaller id first) down to
// C - C/16 rows, so the O(rows) selection is amortised over many inserts.
//
// Thread-safety: thread-compatible. Const methods may run concurrently with each other; a
// non-const method needs exclusive access (LocalEmbeddingStore provides the locking).

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "embedding/table_config.pb.h"
#include "embedding/initializer.h"
#include "embedding/sparse_optimizer.h"

namespace t2d::embedding {

struct TableCounters {
  int64_t admitted = 0;  // rows stored (first admitted update)
  int64_t evicted = 0;   // rows removed by TTL or capacity eviction
  int64_t rejected = 0;  // (id, step) gradient rows dropped because the id was not yet admitted
};

class EmbeddingTable {
 public:
  static constexpr uint32_t kBlockRows = 1u << 14;

  // Errors: InvalidArgument if the spec's dim is not positive.
  static absl::StatusOr<std::unique_ptr<EmbeddingTable>> Create(const config::TableConfig& spec);

  EmbeddingTable(const EmbeddingTable&) = delete;
  EmbeddingTable& operator=(const EmbeddingTable&) = delete;

  const config::TableConfig& spec() const { return spec_; }
  int dim() const { return dim_; }
  int state_floats() const { return optimizer_.state_floats(); }

  // Writes ids.size() rows, row-major, to `out`. Ids may repeat and come in any order.
  // Errors: InvalidArgument if out.size() != ids.size() * dim() (out is then untouched).
  absl::Status Lookup(absl::Span<const int64_t> ids, absl::Span<float> out) const;

  // Applies one step of gradients (`grads` row-major, one row per id). Gradients of an id that
  // occurs several times are summed first (in input order) and applied once.
  // Errors: InvalidArgument if grads.size() != ids.size() * dim(), or if a gradient is not
  // finite (nothing is applied then).
  absl::Status ApplyGradients(absl::Span<const int64_t> ids, absl::Span<const float> grads);

  int64_t size() const { return static_cast<int64_t>(index_.size()); }
  int64_t step() const { return step_; }
  const TableCounters& counters() const { return counters_; }
  // Bytes held by rows, index and bookkeeping (allocated capacity, not just used).
  size_t MemoryBytes() const;

  // --- Serialisation support (embedding/shard_file.h). ---
  // A stored row as the record layout above describes it.
  struct RowView {
    int64_t id;
    uint32_t last_update;
    uint32_t aux;
    const float* values;  // weights then optimizer state, dim() + state_floats() floats
  };
  // Calls fn for every stored row, in ascending id order (so files are deterministic).
  void ForEachRow(const std::function<void(const RowView&)>& fn) const;
  // Calls fn(id, count) for every pending (not yet admitted) id, in ascending id order.
  void ForEachPending(const std::function<void(int64_t, uint32_t)>& fn) const;
  // Stores a row read back from a file (replacing any row with that id).
  void PutRow(int64_t id, uint32_t last_update, uint32_t aux, absl::Span<const float> values);
  void PutPending(int64_t id, uint32_t count) { pending_[id] = count; }
  void SetStepAndCounters(int64_t step, const TableCounters& counters) {
    step_ = step;
    counters_ = counters;
  }

 private:
  explicit EmbeddingTable(const config::TableConfig& spec);

  // The record's words (the layout above); records are 4-byte aligned.
  char* Record(uint32_t slot) const {
    return blocks_[slot / kBlockRows].get() + static_cast<size_t>(slot % kBlockRows) * record_bytes_;
  }
  static uint32_t* LastUpdate(char* record) { return reinterpret_cast<uint32_t*>(record); }
  // Adam's per-row step count; nullptr for the optimizers without one.
  uint32_t* StepCount(char* record) const {
    return has_step_count_ ? reinterpret_cast<uint32_t*>(record + sizeof(uint32_t)) : nullptr;
  }
  float* Values(char* record) const { return reinterpret_cast<float*>(record + header_bytes_); }
  uint32_t AllocateSlot();
  uint32_t InsertNew(int64_t id);
  void Remove(int64_t id, uint32_t slot);
  void EvictExpired();
  void EvictToCapacity();

  const config::TableConfig spec_;
  const int dim_;
  const RowInitializer init_;
  const SparseOptimizer optimizer_;
  const bool has_step_count_;
  const size_t header_bytes_;
  const size_t record_bytes_;

  std::vector<std::unique_ptr<char[]>> blocks_;
  uint32_t used_slots_ = 0;            // slots handed out from blocks_ (live or free)
  std::vector<uint32_t> free_slots_;   // evicted slots to reuse
  absl::flat_hash_map<int64_t, uint32_t> index_;
  absl::flat_hash_map<int64_t, uint32_t> pending_;  // admission counts of not-yet-stored ids
  int64_t step_ = 0;
  TableCounters counters_;

  // Scratch for ApplyGradients' de-duplication (kept to avoid per-call allocation).
  absl::flat_hash_map<int64_t, uint32_t> dedup_;
  std::vector<int64_t> unique_ids_;
  std::vector<float> summed_;
};

}  // namespace t2d::embedding
