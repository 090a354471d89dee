#include "embedding/local_embedding_store.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "embedding/shard_file.h"

namespace t2d::embedding {

absl::StatusOr<std::unique_ptr<LocalEmbeddingStore>> LocalEmbeddingStore::Create(
    const std::vector<config::TableConfig>& tables, int shard_index, int num_shards) {
  if (num_shards < 1 || shard_index < 0 || shard_index >= num_shards) {
    return absl::InvalidArgumentError(absl::StrCat("bad shard ", shard_index, " of ", num_shards));
  }
  std::unique_ptr<LocalEmbeddingStore> store(new LocalEmbeddingStore(shard_index, num_shards));
  for (const auto& spec : tables) {
    auto t = EmbeddingTable::Create(spec);
    if (!t.ok()) return t.status();
    auto e = std::make_unique<Entry>();
    e->table = *std::move(t);
    store->tables_.push_back(std::move(e));
  }
  return store;
}

absl::Status LocalEmbeddingStore::CheckTable(int table) const {
  if (table < 0 || table >= num_tables()) {
    return absl::InvalidArgumentError(absl::StrCat("no table with index ", table, " (", num_tables(), " tables)"));
  }
  return absl::OkStatus();
}

absl::Status LocalEmbeddingStore::Lookup(int table, absl::Span<const int64_t> ids, absl::Span<float> out) {
  if (auto s = CheckTable(table); !s.ok()) return s;
  Entry& e = *tables_[static_cast<size_t>(table)];
  std::shared_lock<std::shared_mutex> lock(e.mu);
  return e.table->Lookup(ids, out);
}

absl::StatusOr<EmbeddingStore::Ticket> LocalEmbeddingStore::Pull(int table, absl::Span<const int64_t> ids) {
  if (auto s = CheckTable(table); !s.ok()) return s;
  std::vector<float> rows(ids.size() * static_cast<size_t>(dim(table)));
  if (auto s = LocalEmbeddingStore::Lookup(table, ids, absl::MakeSpan(rows)); !s.ok()) return s;
  std::lock_guard<std::mutex> lock(tickets_mu_);
  const Ticket ticket = next_ticket_++;
  pulled_.emplace(ticket, std::move(rows));
  return ticket;
}

absl::Status LocalEmbeddingStore::Wait(Ticket ticket, absl::Span<float> out) {
  std::vector<float> rows;
  {
    std::lock_guard<std::mutex> lock(tickets_mu_);
    auto it = pulled_.find(ticket);
    if (it == pulled_.end()) return absl::InvalidArgumentError(absl::StrCat("unknown or already waited ticket ", ticket));
    rows = std::move(it->second);
    pulled_.erase(it);
  }
  if (out.size() != rows.size()) {
    return absl::InvalidArgumentError(absl::StrCat("ticket ", ticket, " holds ", rows.size(), " floats, buffer has ", out.size()));
  }
  std::copy(rows.begin(), rows.end(), out.begin());
  return absl::OkStatus();
}

absl::Status LocalEmbeddingStore::ApplyGradients(int table, absl::Span<const int64_t> ids, absl::Span<const float> grads) {
  if (auto s = CheckTable(table); !s.ok()) return s;
  Entry& e = *tables_[static_cast<size_t>(table)];
  std::lock_guard<std::shared_mutex> lock(e.mu);
  return e.table->ApplyGradients(ids, grads);
}

absl::StatusOr<std::vector<TableStats>> LocalEmbeddingStore::Stats() {
  std::vector<TableStats> out;
  for (const auto& e : tables_) {
    std::shared_lock<std::shared_mutex> lock(e->mu);
    const EmbeddingTable& t = *e->table;
    out.push_back({t.spec().name(), t.size(), t.step(), t.counters().admitted, t.counters().evicted,
                   t.counters().rejected, static_cast<int64_t>(t.MemoryBytes())});
  }
  return out;
}

absl::Status LocalEmbeddingStore::Save(const std::string& dir) {
  for (const auto& e : tables_) {
    std::shared_lock<std::shared_mutex> lock(e->mu);
    const std::string path = dir + "/" + ShardFileName(e->table->spec().name(), shard_index_, num_shards_);
    if (auto s = WriteShardFile(path, *e->table, shard_index_, num_shards_); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status LocalEmbeddingStore::Load(const std::string& dir) {
  for (int t = 0; t < num_tables(); ++t) T2D_RETURN_IF_ERROR(LoadTable(t, dir));
  return absl::OkStatus();
}

absl::Status LocalEmbeddingStore::LoadTable(int table, const std::string& dir) {
  if (auto s = CheckTable(table); !s.ok()) return s;
  auto& e = tables_[static_cast<size_t>(table)];
  std::lock_guard<std::shared_mutex> lock(e->mu);
  auto files = FindShardFiles(dir, e->table->spec().name());
  if (!files.ok()) return files.status();
  // Load into a fresh table so a failed load leaves the current contents intact.
  auto fresh = EmbeddingTable::Create(e->table->spec());
  if (!fresh.ok()) return fresh.status();
  if (auto s = LoadShardFiles(*files, shard_index_, num_shards_, fresh->get()); !s.ok()) return s;
  e->table = *std::move(fresh);
  return absl::OkStatus();
}

}  // namespace t2d::embedding
