#include "data/sample_file.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace t2d::data {
namespace {

// Data chunks carry counts = {records, samples}; the end chunk's totals are
// {records, samples, chunks}.
constexpr ChunkFileFormat kFormat = {"T2DSAMPL", kSampleFormatVersion, 2, 3, "a t2d sample file",
                                     kOldestSampleFormatVersion};
constexpr uint32_t kSamplesChunk = 1, kItemsChunk = 2, kDeflatedSamplesChunk = 4, kDeflatedProfileSamplesChunk = 5;
// Most profile fields a record may carry (data/user_profiles.h, kMaxUserFields).
constexpr int kMaxRecordFields = 64;
// zlib's level 1: most of the size for a fraction of the time of the higher levels (the
// generator writes hundreds of MB/s of records).
constexpr int kDeflateLevel = 1;
// Deflate cannot shrink data by more than about 1032:1; a size beyond that (or beyond the
// framing's 2 GiB payload limit) is a damaged chunk, refused before anything is allocated.
constexpr uint64_t kMaxDeflateRatio = 1032;
constexpr uint64_t kMaxRawChunkBytes = uint64_t{1} << 31;
constexpr uint16_t kMaxTagsPerItem = 65535;

}  // namespace

// ------------------------------------------------------------------------------------------
// Writer

absl::StatusOr<std::unique_ptr<SampleFileWriter>> SampleFileWriter::Create(const std::string& path,
                                                                          const SampleFileHeader& header,
                                                                          size_t chunk_bytes) {
  const int fields = header.kind() == SampleFileHeader::SAMPLES ? header.user_fields() : 0;
  if (fields < 0 || fields > kMaxRecordFields) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", fields, " profile fields (0 to ", kMaxRecordFields, ")"));
  }
  T2D_ASSIGN_OR_RETURN(auto file, ChunkFileWriter::Create(path, kFormat, header.SerializeAsString()));
  const uint32_t kind = header.kind() == SampleFileHeader::ITEMS ? kItemsChunk
                        : fields > 0                             ? kDeflatedProfileSamplesChunk
                                                                 : kDeflatedSamplesChunk;
  return std::unique_ptr<SampleFileWriter>(new SampleFileWriter(path, std::move(file), kind, chunk_bytes, fields));
}

SampleFileWriter::SampleFileWriter(std::string path, std::unique_ptr<ChunkFileWriter> file, uint32_t data_kind,
                                   size_t chunk_bytes, int user_fields)
    : path_(std::move(path)),
      file_(std::move(file)),
      data_kind_(data_kind),
      chunk_bytes_(chunk_bytes),
      user_fields_(user_fields) {}

absl::Status SampleFileWriter::MaybeFlush(bool always) {
  if (chunk_records_ == 0 || (!always && payload_.size() < chunk_bytes_)) return absl::OkStatus();
  if (data_kind_ == kDeflatedSamplesChunk || data_kind_ == kDeflatedProfileSamplesChunk) {
    // The framing refuses payloads of 2 GiB or more; the raw records obey the same limit so
    // that every file written here reads back.
    if (payload_.size() >= kMaxRawChunkBytes) {
      return absl::InvalidArgumentError(absl::StrCat(path_, ": a chunk of ", payload_.size(),
                                                     " bytes of records (2 GiB or more; lower data.chunk_bytes)"));
    }
    uLongf size = compressBound(static_cast<uLong>(payload_.size()));
    deflated_.resize(4 + size);
    const auto raw = static_cast<uint32_t>(payload_.size());
    std::memcpy(deflated_.data(), &raw, 4);
    if (compress2(reinterpret_cast<Bytef*>(deflated_.data() + 4), &size, reinterpret_cast<const Bytef*>(payload_.data()),
                  static_cast<uLong>(payload_.size()), kDeflateLevel) != Z_OK) {
      return absl::InternalError(absl::StrCat(path_, ": cannot deflate a chunk of ", payload_.size(), " bytes"));
    }
    deflated_.resize(4 + size);
    T2D_RETURN_IF_ERROR(file_->WriteChunk(data_kind_, {chunk_records_, chunk_samples_}, deflated_));
  } else {
    T2D_RETURN_IF_ERROR(file_->WriteChunk(data_kind_, {chunk_records_, chunk_samples_}, payload_));
  }
  ++chunks_;
  payload_.clear();
  chunk_records_ = chunk_samples_ = 0;
  return absl::OkStatus();
}

absl::Status SampleFileWriter::AddUser(int64_t user_id, absl::Span<const int64_t> items,
                                       absl::Span<const int64_t> times,
                                       absl::Span<const absl::Span<const int64_t>> tags,
                                       absl::Span<const TargetRef> targets,
                                       absl::Span<const int64_t> user_features) {
  const size_t n = items.size();
  if (!user_features.empty() && user_features.size() != static_cast<size_t>(user_fields_)) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": user ", user_id, ": ", user_features.size(),
                                                   " profile keys, the file has ", user_fields_, " fields"));
  }
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
  PutLe<int64_t>(&payload_, user_id);
  PutLe<uint32_t>(&payload_, static_cast<uint32_t>(n));
  PutLe<uint32_t>(&payload_, static_cast<uint32_t>(targets.size()));
  for (int f = 0; f < user_fields_; ++f) PutLe<int64_t>(&payload_, user_features.empty() ? 0 : user_features[static_cast<size_t>(f)]);
  PutLeArray(&payload_, items.data(), n);
  PutLeArray(&payload_, times.data(), n);
  for (size_t i = 0; i < n; ++i) {
    PutLe<uint16_t>(&payload_, static_cast<uint16_t>(std::min<size_t>(tags[i].size(), kMaxTagsPerItem)));
  }
  for (size_t i = 0; i < n; ++i) {
    PutLeArray(&payload_, tags[i].data(), std::min<size_t>(tags[i].size(), kMaxTagsPerItem));
  }
  for (const TargetRef& t : targets) {
    PutLe<uint32_t>(&payload_, t.target);
    PutLe<uint32_t>(&payload_, t.session_begin);
  }
  ++chunk_records_;
  chunk_samples_ += static_cast<uint32_t>(targets.size());
  ++records_;
  samples_ += static_cast<int64_t>(targets.size());
  return MaybeFlush();
}

absl::Status SampleFileWriter::AddItem(int64_t id, absl::Span<const int64_t> tags, int64_t count) {
  const size_t nt = std::min<size_t>(tags.size(), kMaxTagsPerItem);
  PutLe<int64_t>(&payload_, id);
  PutLe<int64_t>(&payload_, count);
  PutLe<uint16_t>(&payload_, static_cast<uint16_t>(nt));
  PutLeArray(&payload_, tags.data(), nt);
  ++chunk_records_;
  ++records_;
  return MaybeFlush();
}

absl::Status SampleFileWriter::Finish() {
  T2D_RETURN_IF_ERROR(MaybeFlush(/*always=*/true));
  return file_->Finish({records_, samples_, chunks_});
}

// ------------------------------------------------------------------------------------------
// Reader

absl::StatusOr<std::unique_ptr<SampleFileReader>> SampleFileReader::Open(const std::string& path) {
  T2D_ASSIGN_OR_RETURN(auto file, ChunkFileReader::Open(path, kFormat));
  std::unique_ptr<SampleFileReader> r(new SampleFileReader(std::move(file)));
  T2D_RETURN_IF_ERROR(r->Init());
  return r;
}

absl::Status SampleFileReader::Init() {
  if (!header_.ParseFromString(file_->header())) return absl::DataLossError(absl::StrCat(path(), ": unreadable header"));
  if (header_.user_fields() < 0 || header_.user_fields() > kMaxRecordFields) {
    return absl::DataLossError(absl::StrCat(path(), ": header says ", header_.user_fields(), " profile fields (0 to ",
                                            kMaxRecordFields, ")"));
  }
  ChunkInfo c;
  while (true) {
    T2D_ASSIGN_OR_RETURN(bool more, file_->NextChunk(&c));
    if (!more) break;
    // Each file kind has its chunk kinds; deflated records came with version 2.
    // Records carry profile keys exactly when the header has fields.
    const bool known = header_.kind() == SampleFileHeader::ITEMS ? c.kind == kItemsChunk
                       : header_.user_fields() > 0
                           ? c.kind == kDeflatedProfileSamplesChunk
                           : c.kind == kSamplesChunk || (c.kind == kDeflatedSamplesChunk && file_->version() >= 2);
    if (!known) {
      return absl::DataLossError(absl::StrCat(path(), ": unknown chunk kind ", c.kind, " (chunk ", c.index, ")"));
    }
    chunks_.push_back(c);
    total_records_ += c.counts[0];
    total_samples_ += c.counts[1];
  }
  const std::vector<int64_t>& totals = file_->end_totals();
  if (totals[0] != total_records_ || totals[1] != total_samples_ || totals[2] != num_chunks()) {
    return absl::DataLossError(absl::StrCat(path(), ": end chunk totals do not match the chunks"));
  }
  return absl::OkStatus();
}

absl::Status SampleFileReader::ReadPayload(int i, std::string* payload) {
  if (i < 0 || i >= num_chunks()) return absl::OutOfRangeError(absl::StrCat(path(), ": no chunk ", i));
  return file_->ReadPayload(chunks_[i], payload);
}

absl::Status SampleFileReader::ReadChunk(int i, DecodedChunk* out) {
  if (header_.kind() != SampleFileHeader::SAMPLES) {
    return absl::FailedPreconditionError(absl::StrCat(path(), ": not a samples file"));
  }
  T2D_RETURN_IF_ERROR(ReadPayload(i, &scratch_));
  const ChunkInfo& c = chunks_[i];
  absl::string_view records = scratch_;
  if (c.kind == kDeflatedSamplesChunk || c.kind == kDeflatedProfileSamplesChunk) {
    T2D_RETURN_IF_ERROR(Inflate(i));
    records = inflated_;
  }
  out->user_ids.clear();
  out->user_features.clear();
  out->user_begin.assign(1, 0);
  out->items.clear();
  out->times.clear();
  out->tag_begin.assign(1, 0);
  out->tags.clear();
  out->samples.clear();
  ByteReader d(records);
  auto bad = [&](const std::string& what) {
    return absl::DataLossError(absl::StrCat(path(), ": malformed record in chunk ", i, ": ", what));
  };
  std::vector<uint16_t> counts;
  std::vector<uint32_t> targets;
  for (uint32_t r = 0; r < c.counts[0]; ++r) {
    int64_t user = 0;
    uint32_t n = 0, nt = 0;
    if (!d.Get(&user) || !d.Get(&n) || !d.Get(&nt)) return bad("record header");
    if (!d.GetArray(static_cast<size_t>(header_.user_fields()), &out->user_features)) return bad("profile keys");
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
  if (out->samples.size() != c.counts[1]) return bad("sample count differs from the chunk header");
  return absl::OkStatus();
}

absl::Status SampleFileReader::Inflate(int i) {
  auto bad = [&](const std::string& what) {
    return absl::DataLossError(absl::StrCat(path(), ": deflated chunk ", i, ": ", what));
  };
  uint32_t raw = 0;
  if (scratch_.size() < 4) return bad("no size");
  std::memcpy(&raw, scratch_.data(), 4);
  const uint64_t stream = scratch_.size() - 4;
  if (raw >= kMaxRawChunkBytes || raw > stream * kMaxDeflateRatio + 64) {
    return bad(absl::StrCat("a size of ", raw, " bytes from ", stream, " deflated bytes is implausible"));
  }
  inflated_.resize(raw);
  uLongf size = raw;
  uLong consumed = static_cast<uLong>(stream);
  const int z = uncompress2(reinterpret_cast<Bytef*>(inflated_.data()), &size,
                            reinterpret_cast<const Bytef*>(scratch_.data() + 4), &consumed);
  if (z != Z_OK || size != raw) {
    return bad(absl::StrCat("the zlib stream does not inflate to ", raw, " bytes (zlib code ", z, ", ", size, " bytes)"));
  }
  if (consumed != stream) return bad(absl::StrCat(stream - consumed, " bytes after the zlib stream"));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ItemRecord>> SampleFileReader::ReadAllItems() {
  if (header_.kind() != SampleFileHeader::ITEMS) {
    return absl::FailedPreconditionError(absl::StrCat(path(), ": not an items file"));
  }
  std::vector<ItemRecord> items;
  items.reserve(static_cast<size_t>(total_records_));
  for (int i = 0; i < num_chunks(); ++i) {
    T2D_RETURN_IF_ERROR(ReadPayload(i, &scratch_));
    ByteReader d(scratch_);
    for (uint32_t r = 0; r < chunks_[i].counts[0]; ++r) {
      ItemRecord item;
      uint16_t nt = 0;
      if (!d.Get(&item.id) || !d.Get(&item.count) || !d.Get(&nt) || !d.GetArray(nt, &item.tags)) {
        return absl::DataLossError(absl::StrCat(path(), ": malformed item record in chunk ", i));
      }
      items.push_back(std::move(item));
    }
    if (!d.done()) return absl::DataLossError(absl::StrCat(path(), ": trailing bytes in chunk ", i));
  }
  return items;
}

}  // namespace t2d::data
