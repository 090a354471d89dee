#pragma once
// LocalEmbeddingStore: the in-process EmbeddingStore, holding shard `shard_index` of
// `num_shards` of every table (0 of 1 for a single-process run).
//
// Pull reads the rows at once into a buffer held for its ticket, and Wait copies them out: a
// pull observes the table at the Pull() call, which is what RemoteEmbeddingStore gives in sync
// mode, so the in-process twin runs the trainer's prefetch path with the same values. Lookup
// skips the buffer (the shard server's pull path writes rows straight into its reply).
//
// Thread-safety: thread-safe. Each table has its own reader/writer lock: lookups of a table run
// concurrently, gradient applications to it are exclusive, and different tables never block
// each other. Tickets are shared by all threads: any thread may wait for any ticket.

#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include <mutex>
#include <shared_mutex>
#include "embedding/embedding_store.h"
#include "embedding/embedding_table.h"

namespace t2d::embedding {

class LocalEmbeddingStore : public EmbeddingStore {
 public:
  // Errors: InvalidArgument for a table spec that EmbeddingTable::Create rejects, or bad shards.
  static absl::StatusOr<std::unique_ptr<LocalEmbeddingStore>> Create(const std::vector<config::TableConfig>& tables,
                                                                     int shard_index = 0, int num_shards = 1);

  int num_tables() const override { return static_cast<int>(tables_.size()); }
  const config::TableConfig& table_config(int table) const override { return tables_[static_cast<size_t>(table)]->table->spec(); }
  absl::StatusOr<Ticket> Pull(int table, absl::Span<const int64_t> ids) override;
  absl::Status Wait(Ticket ticket, absl::Span<float> out) override;
  absl::Status Lookup(int table, absl::Span<const int64_t> ids, absl::Span<float> out) override;
  absl::Status ApplyGradients(int table, absl::Span<const int64_t> ids, absl::Span<const float> grads) override;
  absl::StatusOr<std::vector<TableStats>> Stats() override;
  // Files are named ShardFileName(table, shard_index, num_shards).
  absl::Status Save(const std::string& dir) override;
  absl::Status Load(const std::string& dir) override;
  absl::Status LoadTable(int table, const std::string& dir) override;

  int shard_index() const { return shard_index_; }
  int num_shards() const { return num_shards_; }

 private:
  struct Entry {
    mutable std::shared_mutex mu;
    std::unique_ptr<EmbeddingTable> table;  // the pointer is fixed; the table is guarded by mu
  };
  LocalEmbeddingStore(int shard_index, int num_shards) : shard_index_(shard_index), num_shards_(num_shards) {}
  absl::Status CheckTable(int table) const;

  const int shard_index_;
  const int num_shards_;
  std::vector<std::unique_ptr<Entry>> tables_;
  std::mutex tickets_mu_;  // guards next_ticket_ and pulled_
  Ticket next_ticket_ = 1;
  absl::flat_hash_map<Ticket, std::vector<float>> pulled_;  // rows of each ticket
};

}  // namespace t2d::embedding
