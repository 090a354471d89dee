#include "embedding/shard_file.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/checksum.h"
#include "embedding/sharding.h"

namespace t2d::embedding {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "shard files are little-endian; add byte swapping");

constexpr char kMagic[8] = {'T', '2', 'D', 'S', 'H', 'A', 'R', 'D'};
constexpr uint32_t kChunkMagic = 0x4b4e4843;  // "CHNK"
constexpr uint32_t kRowsChunk = 1, kPendingChunk = 2, kEndChunk = 3;
constexpr size_t kRowsPerChunk = 4096;
constexpr uint32_t kMaxHeaderBytes = 1u << 20;
constexpr uint32_t kMaxPayloadBytes = 1u << 30;

struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<FILE, FileCloser>;

void Put32(std::string* s, uint32_t v) { s->append(reinterpret_cast<const char*>(&v), 4); }
void Put64(std::string* s, uint64_t v) { s->append(reinterpret_cast<const char*>(&v), 8); }

class Writer {
 public:
  Writer(FILE* f, std::string path) : f_(f), path_(std::move(path)) {}
  absl::Status Write(const std::string& bytes) {
    if (std::fwrite(bytes.data(), 1, bytes.size(), f_) != bytes.size()) {
      return absl::InternalError(absl::StrCat(path_, ": write failed: ", std::strerror(errno)));
    }
    return absl::OkStatus();
  }
  absl::Status Chunk(uint32_t kind, uint32_t count, const std::string& payload) {
    std::string head;
    Put32(&head, kChunkMagic);
    Put32(&head, kind);
    Put32(&head, count);
    Put32(&head, static_cast<uint32_t>(payload.size()));
    Put32(&head, Crc32(payload.data(), payload.size()));
    auto s = Write(head);
    if (!s.ok()) return s;
    return Write(payload);
  }

 private:
  FILE* f_;
  std::string path_;
};

// Reads exact byte counts; running out of file is reported as truncation.
class Reader {
 public:
  Reader(FILE* f, std::string path) : f_(f), path_(std::move(path)) {}
  absl::Status Read(void* dst, size_t n, const char* what) {
    if (std::fread(dst, 1, n, f_) != n) {
      return absl::DataLossError(absl::StrCat(path_, ": truncated while reading ", what, " at byte ", offset_));
    }
    offset_ += n;
    return absl::OkStatus();
  }
  uint64_t offset() const { return offset_; }
  bool AtEof() {
    const int c = std::fgetc(f_);
    if (c == EOF) return true;
    std::ungetc(c, f_);
    return false;
  }
  const std::string& path() const { return path_; }

 private:
  FILE* f_;
  std::string path_;
  uint64_t offset_ = 0;
};

absl::StatusOr<ShardHeader> ReadHeader(Reader* r) {
  char magic[8];
  auto s = r->Read(magic, 8, "magic");
  if (!s.ok()) return s;
  if (std::memcmp(magic, kMagic, 8) != 0) return absl::DataLossError(absl::StrCat(r->path(), ": not an embedding shard file (bad magic)"));
  uint32_t version = 0, bytes = 0, crc = 0;
  if (!(s = r->Read(&version, 4, "format version")).ok()) return s;
  if (version != kShardFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat(r->path(), ": unsupported format version ", version,
                                                      " (this build reads ", kShardFormatVersion, ")"));
  }
  if (!(s = r->Read(&bytes, 4, "header size")).ok()) return s;
  if (bytes > kMaxHeaderBytes) return absl::DataLossError(absl::StrCat(r->path(), ": header size ", bytes, " is implausible"));
  std::string buf(bytes, '\0');
  if (!(s = r->Read(buf.data(), bytes, "header")).ok()) return s;
  if (!(s = r->Read(&crc, 4, "header checksum")).ok()) return s;
  if (crc != Crc32(buf.data(), buf.size())) return absl::DataLossError(absl::StrCat(r->path(), ": header checksum mismatch"));
  ShardHeader h;
  if (!h.ParseFromString(buf)) return absl::DataLossError(absl::StrCat(r->path(), ": header does not parse"));
  if (h.num_shards() < 1 || h.shard_index() < 0 || h.shard_index() >= h.num_shards() || h.table().dim() <= 0 ||
      h.num_rows() < 0 || h.num_pending() < 0 || h.state_floats() < 0) {
    return absl::DataLossError(absl::StrCat(r->path(), ": header fields out of range: ", h.ShortDebugString()));
  }
  return h;
}

}  // namespace

std::string ShardFileName(const std::string& table, int shard_index, int num_shards) {
  return absl::StrFormat("%s.shard-%05d-of-%05d.t2demb", table, shard_index, num_shards);
}

absl::Status WriteShardFile(const std::string& path, const EmbeddingTable& table, int shard_index, int num_shards) {
  const std::string tmp = path + ".tmp";
  File f(std::fopen(tmp.c_str(), "wb"));
  if (!f) return absl::InternalError(absl::StrCat(tmp, ": cannot create: ", std::strerror(errno)));
  Writer w(f.get(), tmp);

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
  std::string head(kMagic, 8), body = h.SerializeAsString();
  Put32(&head, kShardFormatVersion);
  Put32(&head, static_cast<uint32_t>(body.size()));
  head += body;
  Put32(&head, Crc32(body.data(), body.size()));
  absl::Status status = w.Write(head);

  const size_t floats = static_cast<size_t>(table.dim() + table.state_floats());
  std::string payload;
  uint32_t count = 0;
  auto flush = [&](uint32_t kind) {
    if (count == 0 || !status.ok()) return;
    status = w.Chunk(kind, count, payload);
    payload.clear();
    count = 0;
  };
  table.ForEachRow([&](const EmbeddingTable::RowView& row) {
    Put64(&payload, static_cast<uint64_t>(row.id));
    Put32(&payload, row.last_update);
    Put32(&payload, row.aux);
    payload.append(reinterpret_cast<const char*>(row.values), floats * sizeof(float));
    if (++count == kRowsPerChunk) flush(kRowsChunk);
  });
  flush(kRowsChunk);
  table.ForEachPending([&](int64_t id, uint32_t c) {
    Put64(&payload, static_cast<uint64_t>(id));
    Put32(&payload, c);
    if (++count == kRowsPerChunk) flush(kPendingChunk);
  });
  flush(kPendingChunk);
  if (status.ok()) {
    std::string end;
    Put64(&end, static_cast<uint64_t>(table.size()));
    Put64(&end, static_cast<uint64_t>(pending));
    status = w.Chunk(kEndChunk, 0, end);
  }
  if (status.ok() && (std::fflush(f.get()) != 0 || ::fsync(fileno(f.get())) != 0)) {
    status = absl::InternalError(absl::StrCat(tmp, ": flush failed: ", std::strerror(errno)));
  }
  f.reset();
  if (status.ok() && std::rename(tmp.c_str(), path.c_str()) != 0) {
    status = absl::InternalError(absl::StrCat(path, ": rename failed: ", std::strerror(errno)));
  }
  if (!status.ok()) std::remove(tmp.c_str());
  return status;
}

absl::StatusOr<ShardHeader> ReadShardHeader(const std::string& path) {
  File f(std::fopen(path.c_str(), "rb"));
  if (!f) return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  Reader r(f.get(), path);
  return ReadHeader(&r);
}

namespace {

absl::Status LoadOne(const std::string& path, int shard_index, int num_shards, EmbeddingTable* table) {
  File f(std::fopen(path.c_str(), "rb"));
  if (!f) return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  Reader r(f.get(), path);
  auto header = ReadHeader(&r);
  if (!header.ok()) return header.status();
  const size_t floats = static_cast<size_t>(header->table().dim() + header->state_floats());
  const size_t row_bytes = 16 + floats * sizeof(float);
  int64_t rows = 0, pending = 0;
  std::string payload;
  while (true) {
    uint32_t head[5];
    auto s = r.Read(head, sizeof(head), "chunk header");
    if (!s.ok()) return absl::DataLossError(absl::StrCat(s.message(), " (the end chunk is missing)"));
    const uint64_t at = r.offset() - sizeof(head);
    if (head[0] != kChunkMagic) return absl::DataLossError(absl::StrCat(path, ": bad chunk marker at byte ", at));
    const uint32_t kind = head[1], count = head[2], bytes = head[3], crc = head[4];
    if (bytes > kMaxPayloadBytes) return absl::DataLossError(absl::StrCat(path, ": chunk at byte ", at, " claims ", bytes, " bytes"));
    payload.resize(bytes);
    if (!(s = r.Read(payload.data(), bytes, "chunk payload")).ok()) return s;
    if (crc != Crc32(payload.data(), payload.size())) {
      return absl::DataLossError(absl::StrCat(path, ": checksum mismatch in chunk at byte ", at));
    }
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
    } else if (kind == kEndChunk) {
      int64_t totals[2];
      if (bytes != sizeof(totals)) return absl::DataLossError(absl::StrCat(path, ": malformed end chunk"));
      std::memcpy(totals, p, sizeof(totals));
      if (totals[0] != rows || totals[1] != pending || rows != header->num_rows() || pending != header->num_pending()) {
        return absl::DataLossError(absl::StrCat(path, ": row counts disagree (header ", header->num_rows(), "/",
                                                header->num_pending(), ", end chunk ", totals[0], "/", totals[1],
                                                ", chunks ", rows, "/", pending, ")"));
      }
      if (!r.AtEof()) return absl::DataLossError(absl::StrCat(path, ": unexpected bytes after the end chunk"));
      return absl::OkStatus();
    } else {
      return absl::DataLossError(absl::StrCat(path, ": unknown chunk kind ", kind, " at byte ", at));
    }
  }
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
  std::vector<int> seen(static_cast<size_t>(written_shards), -1);
  for (size_t i = 0; i < headers.size(); ++i) {
    if (headers[i].num_shards() != written_shards) {
      return absl::InvalidArgumentError(absl::StrCat(paths[i], ": written as one of ", headers[i].num_shards(),
                                                     " shards, but ", paths[0], " as one of ", written_shards));
    }
    int& slot = seen[static_cast<size_t>(headers[i].shard_index())];
    if (slot >= 0) {
      return absl::InvalidArgumentError(absl::StrCat(paths[i], ": shard ", headers[i].shard_index(), " given twice (also ",
                                                     paths[static_cast<size_t>(slot)], ")"));
    }
    slot = static_cast<int>(i);
  }
  for (int s = 0; s < written_shards; ++s) {
    if (seen[static_cast<size_t>(s)] < 0) {
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
