#include "data/sample_file.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/checksum.h"
#include "common/status_macros.h"

namespace t2d::data {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "sample files are little-endian; add byte swapping");

constexpr char kMagic[8] = {'T', '2', 'D', 'S', 'A', 'M', 'P', 'L'};
constexpr uint32_t kChunkMagic = 0x4b4e4843;  // "CHNK"
constexpr uint32_t kSamplesChunk = 1, kItemsChunk = 2, kEndChunk = 3;
constexpr uint32_t kMaxHeaderBytes = 1u << 20;
constexpr uint32_t kMaxPayloadBytes = 1u << 31;
constexpr size_t kChunkHeaderBytes = 24;
constexpr uint16_t kMaxTagsPerItem = 65535;

template <typename T>
void Put(std::string* s, T v) {
  s->append(reinterpret_cast<const char*>(&v), sizeof(T));
}
template <typename T>
void PutArray(std::string* s, const T* v, size_t n) {
  s->append(reinterpret_cast<const char*>(v), n * sizeof(T));
}

// Bounds-checked cursor over a chunk payload.
class Decoder {
 public:
  Decoder(const std::string& s) : p_(s.data()), end_(s.data() + s.size()) {}
  template <typename T>
  bool Get(T* v) {
    if (static_cast<size_t>(end_ - p_) < sizeof(T)) return false;
    std::memcpy(v, p_, sizeof(T));
    p_ += sizeof(T);
    return true;
  }
  template <typename T>
  bool GetArray(size_t n, std::vector<T>* out) {
    if (static_cast<size_t>(end_ - p_) / sizeof(T) < n) return false;
    const size_t old = out->size();
    out->resize(old + n);
    std::memcpy(out->data() + old, p_, n * sizeof(T));
    p_ += n * sizeof(T);
    return true;
  }
  bool done() const { return p_ == end_; }

 private:
  const char* p_;
  const char* end_;
};

}  // namespace

// ------------------------------------------------------------------------------------------
// Writer

absl::StatusOr<std::unique_ptr<SampleFileWriter>> SampleFileWriter::Create(const std::string& path,
                                                                          const SampleFileHeader& header,
                                                                          size_t chunk_bytes) {
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return absl::PermissionDeniedError(absl::StrCat(tmp, ": cannot create: ", std::strerror(errno)));
  std::unique_ptr<SampleFileWriter> w(new SampleFileWriter(path, f, chunk_bytes));
  w->data_kind_ = header.kind() == SampleFileHeader::ITEMS ? kItemsChunk : kSamplesChunk;
  std::string head(kMagic, sizeof(kMagic));
  Put<uint32_t>(&head, kSampleFormatVersion);
  const std::string h = header.SerializeAsString();
  Put<uint32_t>(&head, static_cast<uint32_t>(h.size()));
  head += h;
  Put<uint32_t>(&head, Crc32(h.data(), h.size()));
  T2D_RETURN_IF_ERROR(w->Write(head.data(), head.size()));
  return w;
}

SampleFileWriter::SampleFileWriter(std::string path, FILE* f, size_t chunk_bytes)
    : path_(std::move(path)), f_(f), chunk_bytes_(chunk_bytes) {}

SampleFileWriter::~SampleFileWriter() {
  if (f_ != nullptr) std::fclose(f_);
  if (!finished_) std::remove((path_ + ".tmp").c_str());
}

absl::Status SampleFileWriter::Write(const void* data, size_t n) {
  if (std::fwrite(data, 1, n, f_) != n) {
    return absl::DataLossError(absl::StrCat(path_, ".tmp: write failed: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status SampleFileWriter::FlushChunk(uint32_t kind) {
  if (kind != kEndChunk && chunk_records_ == 0) return absl::OkStatus();
  if (payload_.size() >= kMaxPayloadBytes) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": a chunk exceeds 2 GiB (one user record too large?)"));
  }
  std::string head;
  Put<uint32_t>(&head, kChunkMagic);
  Put<uint32_t>(&head, kind);
  Put<uint32_t>(&head, chunk_records_);
  Put<uint32_t>(&head, chunk_samples_);
  Put<uint32_t>(&head, static_cast<uint32_t>(payload_.size()));
  Put<uint32_t>(&head, Crc32(payload_.data(), payload_.size()));
  T2D_RETURN_IF_ERROR(Write(head.data(), head.size()));
  T2D_RETURN_IF_ERROR(Write(payload_.data(), payload_.size()));
  if (kind != kEndChunk) ++chunks_;
  payload_.clear();
  chunk_records_ = chunk_samples_ = 0;
  return absl::OkStatus();
}

absl::Status SampleFileWriter::AddUser(int64_t user_id, absl::Span<const int64_t> items,
                                       absl::Span<const int64_t> times,
                                       absl::Span<const absl::Span<const int64_t>> tags,
                                       absl::Span<const TargetRef> targets) {
  const size_t n = items.size();
  if (times.size() != n || tags.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": user ", user_id, ": items/times/tags sizes differ"));
  }
  if (n > (1u << 30)) return absl::InvalidArgumentError(absl::StrCat(path_, ": user ", user_id, ": too long"));
  for (size_t i = 0; i < targets.size(); ++i) {
    const TargetRef& t = targets[i];
    if (t.target >= n || t.session_begin > t.target || (i > 0 && t.target <= targets[i - 1].target)) {
      return absl::InvalidArgumentError(absl::StrCat(path_, ": user ", user_id, ": bad target ", t.target));
    }
  }
  Put<int64_t>(&payload_, user_id);
  Put<uint32_t>(&payload_, static_cast<uint32_t>(n));
  Put<uint32_t>(&payload_, static_cast<uint32_t>(targets.size()));
  PutArray(&payload_, items.data(), n);
  PutArray(&payload_, times.data(), n);
  for (size_t i = 0; i < n; ++i) {
    Put<uint16_t>(&payload_, static_cast<uint16_t>(std::min<size_t>(tags[i].size(), kMaxTagsPerItem)));
  }
  for (size_t i = 0; i < n; ++i) {
    PutArray(&payload_, tags[i].data(), std::min<size_t>(tags[i].size(), kMaxTagsPerItem));
  }
  for (const TargetRef& t : targets) {
    Put<uint32_t>(&payload_, t.target);
    Put<uint32_t>(&payload_, t.session_begin);
  }
  ++chunk_records_;
  chunk_samples_ += static_cast<uint32_t>(targets.size());
  ++records_;
  samples_ += static_cast<int64_t>(targets.size());
  return MaybeFlush();
}

absl::Status SampleFileWriter::AddItem(int64_t id, absl::Span<const int64_t> tags, int64_t count) {
  const size_t nt = std::min<size_t>(tags.size(), kMaxTagsPerItem);
  Put<int64_t>(&payload_, id);
  Put<int64_t>(&payload_, count);
  Put<uint16_t>(&payload_, static_cast<uint16_t>(nt));
  PutArray(&payload_, tags.data(), nt);
  ++chunk_records_;
  ++records_;
  if (payload_.size() >= chunk_bytes_) return FlushChunk(kItemsChunk);
  return absl::OkStatus();
}

absl::Status SampleFileWriter::MaybeFlush() {
  if (payload_.size() >= chunk_bytes_) return FlushChunk(kSamplesChunk);
  return absl::OkStatus();
}

absl::Status SampleFileWriter::Finish() {
  T2D_RETURN_IF_ERROR(FlushChunk(data_kind_));
  Put<int64_t>(&payload_, records_);
  Put<int64_t>(&payload_, samples_);
  Put<int64_t>(&payload_, chunks_);
  T2D_RETURN_IF_ERROR(FlushChunk(kEndChunk));
  if (std::fflush(f_) != 0 || ::fsync(fileno(f_)) != 0) {
    return absl::DataLossError(absl::StrCat(path_, ".tmp: flush failed: ", std::strerror(errno)));
  }
  std::fclose(f_);
  f_ = nullptr;
  if (std::rename((path_ + ".tmp").c_str(), path_.c_str()) != 0) {
    return absl::DataLossError(absl::StrCat(path_, ": rename failed: ", std::strerror(errno)));
  }
  finished_ = true;
  return absl::OkStatus();
}

// ------------------------------------------------------------------------------------------
// Reader

absl::StatusOr<std::unique_ptr<SampleFileReader>> SampleFileReader::Open(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  std::unique_ptr<SampleFileReader> r(new SampleFileReader(path, f));
  T2D_RETURN_IF_ERROR(r->Init());
  return r;
}

SampleFileReader::~SampleFileReader() { std::fclose(f_); }

absl::Status SampleFileReader::Init() {
  std::error_code ec;
  const int64_t file_size = static_cast<int64_t>(std::filesystem::file_size(path_, ec));
  if (ec) return absl::DataLossError(absl::StrCat(path_, ": cannot stat: ", ec.message()));
  auto truncated = [&](const std::string& what) {
    return absl::DataLossError(absl::StrCat(path_, ": truncated file (", what, ")"));
  };
  char magic[8];
  uint32_t version = 0, header_bytes = 0;
  if (std::fread(magic, 1, 8, f_) != 8) return truncated("no magic");
  if (std::memcmp(magic, kMagic, 8) != 0) return absl::DataLossError(absl::StrCat(path_, ": not a t2d sample file"));
  if (std::fread(&version, 4, 1, f_) != 1 || std::fread(&header_bytes, 4, 1, f_) != 1) return truncated("header");
  if (version != kSampleFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat(path_, ": format version ", version, ", this build reads version ",
                                                      kSampleFormatVersion));
  }
  if (header_bytes > kMaxHeaderBytes) return absl::DataLossError(absl::StrCat(path_, ": bad header size"));
  std::string h(header_bytes, '\0');
  uint32_t crc = 0;
  if (std::fread(h.data(), 1, header_bytes, f_) != header_bytes || std::fread(&crc, 4, 1, f_) != 1) {
    return truncated("header");
  }
  if (crc != Crc32(h.data(), h.size())) return absl::DataLossError(absl::StrCat(path_, ": header checksum mismatch"));
  if (!header_.ParseFromString(h)) return absl::DataLossError(absl::StrCat(path_, ": unreadable header"));
  int64_t offset = 8 + 4 + 4 + header_bytes + 4;
  while (true) {
    uint32_t head[6];
    if (offset + static_cast<int64_t>(kChunkHeaderBytes) > file_size) {
      return truncated(absl::StrCat("no end chunk after ", chunks_.size(), " chunks"));
    }
    if (std::fseek(f_, offset, SEEK_SET) != 0 || std::fread(head, 4, 6, f_) != 6) return truncated("chunk header");
    if (head[0] != kChunkMagic) {
      return absl::DataLossError(absl::StrCat(path_, ": bad chunk magic at byte ", offset, " (chunk ", chunks_.size(), ")"));
    }
    const int64_t payload_offset = offset + static_cast<int64_t>(kChunkHeaderBytes);
    if (payload_offset + head[4] > file_size) return truncated(absl::StrCat("chunk ", chunks_.size()));
    if (head[1] == kEndChunk) {
      std::string p(head[4], '\0');
      if (std::fread(p.data(), 1, p.size(), f_) != p.size()) return truncated("end chunk");
      if (head[5] != Crc32(p.data(), p.size()) || p.size() != 24) {
        return absl::DataLossError(absl::StrCat(path_, ": end chunk checksum mismatch"));
      }
      int64_t totals[3];
      std::memcpy(totals, p.data(), 24);
      if (totals[0] != total_records_ || totals[1] != total_samples_ || totals[2] != static_cast<int64_t>(chunks_.size())) {
        return absl::DataLossError(absl::StrCat(path_, ": end chunk totals do not match the chunks"));
      }
      if (payload_offset + static_cast<int64_t>(p.size()) != file_size) {
        return absl::DataLossError(absl::StrCat(path_, ": trailing bytes after the end chunk"));
      }
      return absl::OkStatus();
    }
    if (head[1] != kSamplesChunk && head[1] != kItemsChunk) {
      return absl::DataLossError(absl::StrCat(path_, ": unknown chunk kind ", head[1], " (chunk ", chunks_.size(), ")"));
    }
    chunks_.push_back({payload_offset, head[2], head[3], head[4], head[5]});
    total_records_ += head[2];
    total_samples_ += head[3];
    offset = payload_offset + head[4];
  }
}

absl::Status SampleFileReader::ReadPayload(int i, std::string* payload) {
  if (i < 0 || i >= num_chunks()) return absl::OutOfRangeError(absl::StrCat(path_, ": no chunk ", i));
  const ChunkInfo& c = chunks_[i];
  payload->resize(c.payload_bytes);
  if (std::fseek(f_, c.offset, SEEK_SET) != 0 || std::fread(payload->data(), 1, c.payload_bytes, f_) != c.payload_bytes) {
    return absl::DataLossError(absl::StrCat(path_, ": cannot read chunk ", i, ": ", std::strerror(errno)));
  }
  if (Crc32(payload->data(), payload->size()) != c.crc) {
    return absl::DataLossError(absl::StrCat(path_, ": checksum mismatch in chunk ", i));
  }
  return absl::OkStatus();
}

absl::Status SampleFileReader::ReadChunk(int i, DecodedChunk* out) {
  if (header_.kind() != SampleFileHeader::SAMPLES) {
    return absl::FailedPreconditionError(absl::StrCat(path_, ": not a samples file"));
  }
  T2D_RETURN_IF_ERROR(ReadPayload(i, &scratch_));
  const ChunkInfo& c = chunks_[i];
  out->user_ids.clear();
  out->user_begin.assign(1, 0);
  out->items.clear();
  out->times.clear();
  out->tag_begin.assign(1, 0);
  out->tags.clear();
  out->samples.clear();
  Decoder d(scratch_);
  auto bad = [&](const std::string& what) {
    return absl::DataLossError(absl::StrCat(path_, ": malformed record in chunk ", i, ": ", what));
  };
  std::vector<uint16_t> counts;
  std::vector<uint32_t> targets;
  for (uint32_t r = 0; r < c.records; ++r) {
    int64_t user = 0;
    uint32_t n = 0, nt = 0;
    if (!d.Get(&user) || !d.Get(&n) || !d.Get(&nt)) return bad("record header");
    const uint32_t base = static_cast<uint32_t>(out->items.size());
    if (!d.GetArray(n, &out->items) || !d.GetArray(n, &out->times)) return bad("items");
    counts.clear();
    if (!d.GetArray(n, &counts)) return bad("tag counts");
    size_t total_tags = 0;
    for (uint16_t k : counts) {
      total_tags += k;
      out->tag_begin.push_back(out->tag_begin.back() + k);
    }
    if (!d.GetArray(total_tags, &out->tags)) return bad("tags");
    targets.clear();
    if (!d.GetArray(2 * static_cast<size_t>(nt), &targets)) return bad("targets");
    for (uint32_t t = 0; t < nt; ++t) {
      const uint32_t target = targets[2 * t], session = targets[2 * t + 1];
      if (target >= n || session > target) return bad("target out of range");
      out->samples.push_back({r, base + target, base + session});
    }
    out->user_ids.push_back(user);
    out->user_begin.push_back(static_cast<uint32_t>(out->items.size()));
  }
  if (!d.done()) return bad("trailing bytes");
  if (out->samples.size() != c.samples) return bad("sample count differs from the chunk header");
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ItemRecord>> SampleFileReader::ReadAllItems() {
  if (header_.kind() != SampleFileHeader::ITEMS) {
    return absl::FailedPreconditionError(absl::StrCat(path_, ": not an items file"));
  }
  std::vector<ItemRecord> items;
  items.reserve(static_cast<size_t>(total_records_));
  for (int i = 0; i < num_chunks(); ++i) {
    T2D_RETURN_IF_ERROR(ReadPayload(i, &scratch_));
    Decoder d(scratch_);
    for (uint32_t r = 0; r < chunks_[i].records; ++r) {
      ItemRecord item;
      uint16_t nt = 0;
      if (!d.Get(&item.id) || !d.Get(&item.count) || !d.Get(&nt) || !d.GetArray(nt, &item.tags)) {
        return absl::DataLossError(absl::StrCat(path_, ": malformed item record in chunk ", i));
      }
      items.push_back(std::move(item));
    }
    if (!d.done()) return absl::DataLossError(absl::StrCat(path_, ": trailing bytes in chunk ", i));
  }
  return items;
}

}  // namespace t2d::data
