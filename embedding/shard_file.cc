#include "embedding/shard_file.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/chunk_file.h"
#include "common/status_macros.h"
#include "embedding/sharding.h"

namespace t2d::embedding {
namespace {

// Rows chunks carry counts = {rows}, pending chunks {ids}; the end chunk's totals are
// {rows, pending}.
constexpr ChunkFileFormat kFormat = {"T2DSHARD", kShardFormatVersion, 1, 2, "an embedding shard file"};
constexpr uint32_t kRowsChunk = 1, kPendingChunk = 2;
constexpr size_t kRowsPerChunk = 4096;

// Parses and checks the header of an open shard file.
absl::StatusOr<ShardHeader> ParseHeader(const ChunkFileReader& r) {
  ShardHeader h;
  if (!h.ParseFromString(r.header())) return absl::DataLossError(absl::StrCat(r.path(), ": header does not parse"));
  if (h.num_shards() < 1 || h.shard_index() < 0 || h.shard_index() >= h.num_shards() || h.table().dim() <= 0 ||
      h.num_rows() < 0 || h.num_pending() < 0 || h.state_floats() < 0) {
    return absl::DataLossError(absl::StrCat(r.path(), ": header fields out of range: ", h.ShortDebugString()));
  }
  return h;
}

}  // namespace

std::string ShardFileName(const std::string& table, int shard_index, int num_shards) {
  return absl::StrFormat("%s.shard-%05d-of-%05d.t2demb", table, shard_index, num_shards);
}

absl::Status WriteShardFile(const std::string& path, const EmbeddingTable& table, int shard_index, int num_shards) {
  ShardHeader h;
  h.set_format_version(kShardFormatVersion);
  *h.mutable_table() = table.spec();
  h.set_shard_index(shard_index);
  h.set_num_shards(num_shards);
  h.set_step(table.step());
  h.set_admitted(table.counters().admitted);
  h.set_evicted(table.counters().evicted);
  h.set_rejected(table.counters().rejected);
  h.set_num_rows(table.size());
  int64_t pending = 0;
  table.ForEachPending([&](int64_t, uint32_t) { ++pending; });
  h.set_num_pending(pending);
  h.set_state_floats(table.state_floats());
  T2D_ASSIGN_OR_RETURN(auto w, ChunkFileWriter::Create(path, kFormat, h.SerializeAsString()));

  const size_t floats = static_cast<size_t>(table.dim() + table.state_floats());
  absl::Status status;  // the first error; the table is walked with callbacks that cannot return it
  std::string payload;
  uint32_t count = 0;
  auto flush = [&](uint32_t kind) {
    if (count == 0 || !status.ok()) return;
    status = w->WriteChunk(kind, {count}, payload);
    payload.clear();
    count = 0;
  };
  table.ForEachRow([&](const EmbeddingTable::RowView& row) {
    PutLe<int64_t>(&payload, row.id);
    PutLe<uint32_t>(&payload, row.last_update);
    PutLe<uint32_t>(&payload, row.aux);
    PutLeArray(&payload, row.values, floats);
    if (++count == kRowsPerChunk) flush(kRowsChunk);
  });
  flush(kRowsChunk);
  table.ForEachPending([&](int64_t id, uint32_t c) {
    PutLe<int64_t>(&payload, id);
    PutLe<uint32_t>(&payload, c);
    if (++count == kRowsPerChunk) flush(kPendingChunk);
  });
  flush(kPendingChunk);
  T2D_RETURN_IF_ERROR(status);
  return w->Finish({table.size(), pending});
}

absl::StatusOr<ShardHeader> ReadShardHeader(const std::string& path) {
  T2D_ASSIGN_OR_RETURN(auto r, ChunkFileReader::Open(path, kFormat));
  return ParseHeader(*r);
}

namespace {

absl::Status LoadOne(const std::string& path, int shard_index, int num_shards, EmbeddingTable* table) {
  T2D_ASSIGN_OR_RETURN(auto r, ChunkFileReader::Open(path, kFormat));
  T2D_ASSIGN_OR_RETURN(const ShardHeader header, ParseHeader(*r));
  const size_t floats = static_cast<size_t>(header.table().dim() + header.state_floats());
  const size_t row_bytes = 16 + floats * sizeof(float);
  int64_t rows = 0, pending = 0;
  std::string payload;
  ChunkInfo chunk;
  while (true) {
    T2D_ASSIGN_OR_RETURN(bool more, r->NextChunk(&chunk));
    if (!more) break;
    T2D_RETURN_IF_ERROR(r->ReadPayload(chunk, &payload));
    const uint32_t kind = chunk.kind, count = chunk.counts[0], bytes = chunk.payload_bytes;
    const int64_t at = chunk.offset;
    const char* p = payload.data();
    if (kind == kRowsChunk) {
      if (static_cast<size_t>(count) * row_bytes != bytes) {
        return absl::DataLossError(absl::StrCat(path, ": rows chunk at byte ", at, " has ", bytes, " bytes for ", count, " rows"));
      }
      for (uint32_t i = 0; i < count; ++i, p += row_bytes) {
        int64_t id;
        uint32_t last, aux;
        std::memcpy(&id, p, 8);
        std::memcpy(&last, p + 8, 4);
        std::memcpy(&aux, p + 12, 4);
        if (ShardOf(id, num_shards) != shard_index) continue;
        table->PutRow(id, last, aux, absl::Span<const float>(reinterpret_cast<const float*>(p + 16), floats));
      }
      rows += count;
    } else if (kind == kPendingChunk) {
      if (static_cast<size_t>(count) * 12 != bytes) {
        return absl::DataLossError(absl::StrCat(path, ": pending chunk at byte ", at, " has ", bytes, " bytes for ", count, " ids"));
      }
      for (uint32_t i = 0; i < count; ++i, p += 12) {
        int64_t id;
        uint32_t c;
        std::memcpy(&id, p, 8);
        std::memcpy(&c, p + 8, 4);
        if (ShardOf(id, num_shards) == shard_index) table->PutPending(id, c);
      }
      pending += count;
    } else {
      return absl::DataLossError(absl::StrCat(path, ": unknown chunk kind ", kind, " at byte ", at));
    }
  }
  const std::vector<int64_t>& totals = r->end_totals();
  if (totals[0] != rows || totals[1] != pending || rows != header.num_rows() || pending != header.num_pending()) {
    return absl::DataLossError(absl::StrCat(path, ": row counts disagree (header ", header.num_rows(), "/",
                                            header.num_pending(), ", end chunk ", totals[0], "/", totals[1],
                                            ", chunks ", rows, "/", pending, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status LoadShardFiles(const std::vector<std::string>& paths, int shard_index, int num_shards,
                            EmbeddingTable* table) {
  if (paths.empty()) return absl::InvalidArgumentError("no shard files given");
  // Check the set first (headers only), so a mismatch is found before any row is loaded.
  std::vector<ShardHeader> headers;
  for (const auto& p : paths) {
    auto h = ReadShardHeader(p);
    if (!h.ok()) return h.status();
    const auto& spec = table->spec();
    if (h->table().name() != spec.name() || h->table().dim() != spec.dim() ||
        h->table().optimizer().kind() != spec.optimizer().kind() || h->state_floats() != table->state_floats()) {
      return absl::FailedPreconditionError(absl::StrCat(
          p, ": written for table \"", h->table().name(), "\" dim ", h->table().dim(), " optimizer ",
          config::SparseOptimizerConfig::Kind_Name(h->table().optimizer().kind()), ", cannot load into table \"",
          spec.name(), "\" dim ", spec.dim(), " optimizer ", config::SparseOptimizerConfig::Kind_Name(spec.optimizer().kind())));
    }
    headers.push_back(*std::move(h));
  }
  const int written_shards = headers[0].num_shards();
  // Keyed by shard index, not sized by num_shards: a damaged header may claim 2^31 shards.
  absl::flat_hash_map<int, size_t> seen;
  for (size_t i = 0; i < headers.size(); ++i) {
    if (headers[i].num_shards() != written_shards) {
      return absl::InvalidArgumentError(absl::StrCat(paths[i], ": written as one of ", headers[i].num_shards(),
                                                     " shards, but ", paths[0], " as one of ", written_shards));
    }
    auto [slot, added] = seen.emplace(headers[i].shard_index(), i);
    if (!added) {
      return absl::InvalidArgumentError(absl::StrCat(paths[i], ": shard ", headers[i].shard_index(), " given twice (also ",
                                                     paths[slot->second], ")"));
    }
  }
  // Ends at the first missing index, which is at most paths.size().
  for (int s = 0; s < written_shards; ++s) {
    if (!seen.contains(s)) {
      return absl::InvalidArgumentError(absl::StrCat("shard set of table \"", table->spec().name(), "\" is incomplete: ",
                                                     ShardFileName(table->spec().name(), s, written_shards), " is missing"));
    }
  }
  const bool same_partition = written_shards == num_shards;
  int64_t step = 0;
  TableCounters counters;
  for (size_t i = 0; i < paths.size(); ++i) {
    // With the same partitioning only the file of our own shard can hold our rows.
    if (same_partition && headers[i].shard_index() != shard_index) continue;
    auto s = LoadOne(paths[i], shard_index, num_shards, table);
    if (!s.ok()) return s;
    if (same_partition) counters = {headers[i].admitted(), headers[i].evicted(), headers[i].rejected()};
  }
  for (const auto& h : headers) step = std::max<int64_t>(step, h.step());
  table->SetStepAndCounters(step, counters);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> FindShardFiles(const std::string& dir, const std::string& table) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::vector<std::string> out;
  const std::string prefix = table + ".shard-";
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(prefix, 0) == 0 && name.size() > 7 && name.substr(name.size() - 7) == ".t2demb") {
      out.push_back(e.path().string());
    }
  }
  if (ec) return absl::NotFoundError(absl::StrCat(dir, ": cannot list: ", ec.message()));
  if (out.empty()) return absl::NotFoundError(absl::StrCat(dir, ": no shard files of table \"", table, "\""));
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace t2d::embedding
