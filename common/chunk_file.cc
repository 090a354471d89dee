#include "common/chunk_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "common/checksum.h"
#include "common/status_macros.h"

namespace t2d {
namespace {

constexpr uint32_t kChunkMagic = 0x4b4e4843;  // "CHNK"
constexpr uint32_t kMaxHeaderBytes = 1u << 20;
// Payload sizes are u32 on disk; 2 GiB keeps well clear of the wrap.
constexpr size_t kMaxPayloadBytes = size_t{1} << 31;

}  // namespace

// ------------------------------------------------------------------------------------------
// Writer

absl::StatusOr<std::unique_ptr<ChunkFileWriter>> ChunkFileWriter::Create(const std::string& path,
                                                                        const ChunkFileFormat& format,
                                                                        absl::string_view header) {
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return absl::InternalError(absl::StrCat(tmp, ": cannot create: ", std::strerror(errno)));
  std::unique_ptr<ChunkFileWriter> w(new ChunkFileWriter(path, format, f));
  std::string head(format.magic, 8);
  PutLe<uint32_t>(&head, format.version);
  PutLe<uint32_t>(&head, static_cast<uint32_t>(header.size()));
  head.append(header.data(), header.size());
  PutLe<uint32_t>(&head, Crc32(header.data(), header.size()));
  T2D_RETURN_IF_ERROR(w->Write(head));
  return w;
}

ChunkFileWriter::ChunkFileWriter(std::string path, const ChunkFileFormat& format, FILE* f)
    : path_(std::move(path)), format_(format), f_(f) {}

ChunkFileWriter::~ChunkFileWriter() {
  if (f_ != nullptr) std::fclose(f_);
  if (!finished_) std::remove((path_ + ".tmp").c_str());
}

absl::Status ChunkFileWriter::Write(absl::string_view bytes) {
  if (std::fwrite(bytes.data(), 1, bytes.size(), f_) != bytes.size()) {
    return absl::InternalError(absl::StrCat(path_, ".tmp: write failed: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status ChunkFileWriter::WriteChunk(uint32_t kind, absl::Span<const uint32_t> counts, absl::string_view payload) {
  if (f_ == nullptr) return absl::FailedPreconditionError(absl::StrCat(path_, ": chunk written after Finish"));
  if (counts.size() != static_cast<size_t>(format_.num_counts)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": a chunk takes ", format_.num_counts, " counts, got ", counts.size()));
  }
  if (payload.size() >= kMaxPayloadBytes) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": a chunk of ", payload.size(), " bytes exceeds 2 GiB"));
  }
  std::string head;
  PutLe<uint32_t>(&head, kChunkMagic);
  PutLe<uint32_t>(&head, kind);
  for (uint32_t c : counts) PutLe<uint32_t>(&head, c);
  PutLe<uint32_t>(&head, static_cast<uint32_t>(payload.size()));
  PutLe<uint32_t>(&head, Crc32(payload.data(), payload.size()));
  T2D_RETURN_IF_ERROR(Write(head));
  return Write(payload);
}

absl::Status ChunkFileWriter::Finish(absl::Span<const int64_t> totals) {
  if (totals.size() != static_cast<size_t>(format_.num_totals)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": the end chunk takes ", format_.num_totals, " totals, got ", totals.size()));
  }
  std::string end;
  PutLeArray(&end, totals.data(), totals.size());
  const std::vector<uint32_t> zeros(static_cast<size_t>(format_.num_counts), 0);
  T2D_RETURN_IF_ERROR(WriteChunk(kEndChunkKind, zeros, end));
  if (std::fflush(f_) != 0 || ::fsync(fileno(f_)) != 0) {
    return absl::InternalError(absl::StrCat(path_, ".tmp: flush failed: ", std::strerror(errno)));
  }
  std::fclose(f_);
  f_ = nullptr;
  if (std::rename((path_ + ".tmp").c_str(), path_.c_str()) != 0) {
    return absl::InternalError(absl::StrCat(path_, ": rename failed: ", std::strerror(errno)));
  }
  finished_ = true;
  return absl::OkStatus();
}

// ------------------------------------------------------------------------------------------
// Reader

absl::StatusOr<std::unique_ptr<ChunkFileReader>> ChunkFileReader::Open(const std::string& path,
                                                                      const ChunkFileFormat& format) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  std::unique_ptr<ChunkFileReader> r(new ChunkFileReader(path, format, f));
  T2D_RETURN_IF_ERROR(r->ReadPreamble());
  return r;
}

ChunkFileReader::ChunkFileReader(std::string path, const ChunkFileFormat& format, FILE* f)
    : path_(std::move(path)), format_(format), f_(f) {}

ChunkFileReader::~ChunkFileReader() { std::fclose(f_); }

absl::Status ChunkFileReader::Truncated(absl::string_view what) const {
  return absl::DataLossError(absl::StrCat(path_, ": truncated file (", what, ")"));
}

absl::Status ChunkFileReader::ReadPreamble() {
  struct stat st;
  if (::fstat(fileno(f_), &st) != 0) {
    return absl::DataLossError(absl::StrCat(path_, ": cannot stat: ", std::strerror(errno)));
  }
  file_size_ = static_cast<int64_t>(st.st_size);
  char magic[8];
  uint32_t version = 0, header_bytes = 0, crc = 0;
  if (std::fread(magic, 1, 8, f_) != 8) return Truncated("no magic");
  if (std::memcmp(magic, format_.magic, 8) != 0) {
    return absl::DataLossError(absl::StrCat(path_, ": not ", format_.description, " (bad magic)"));
  }
  if (std::fread(&version, 4, 1, f_) != 1) return Truncated("header");
  const uint32_t oldest = format_.oldest_version > 0 ? format_.oldest_version : format_.version;
  if (version < oldest || version > format_.version) {
    return absl::FailedPreconditionError(absl::StrCat(
        path_, ": unsupported format version ", version, " (this build reads ",
        oldest == format_.version ? absl::StrCat(oldest) : absl::StrCat(oldest, " to ", format_.version), ")"));
  }
  version_ = version;
  if (std::fread(&header_bytes, 4, 1, f_) != 1) return Truncated("header");
  if (header_bytes > kMaxHeaderBytes) {
    return absl::DataLossError(absl::StrCat(path_, ": header size ", header_bytes, " is implausible"));
  }
  header_.resize(header_bytes);
  if (std::fread(header_.data(), 1, header_bytes, f_) != header_bytes || std::fread(&crc, 4, 1, f_) != 1) {
    return Truncated("header");
  }
  if (crc != Crc32(header_.data(), header_.size())) {
    return absl::DataLossError(absl::StrCat(path_, ": header checksum mismatch"));
  }
  next_offset_ = 8 + 4 + 4 + static_cast<int64_t>(header_bytes) + 4;
  return absl::OkStatus();
}

absl::StatusOr<bool> ChunkFileReader::NextChunk(ChunkInfo* chunk) {
  *chunk = ChunkInfo();
  chunk->index = num_chunks_;
  chunk->offset = next_offset_;
  if (next_offset_ + chunk_header_bytes() > file_size_) {
    return Truncated(absl::StrCat("no end chunk after ", num_chunks_, " chunks"));
  }
  uint32_t head[4 + kMaxChunkCounts];
  const size_t words = static_cast<size_t>(chunk_header_bytes() / 4);
  if (std::fseek(f_, next_offset_, SEEK_SET) != 0 || std::fread(head, 4, words, f_) != words) {
    return Truncated("chunk header");
  }
  if (head[0] != kChunkMagic) {
    return absl::DataLossError(
        absl::StrCat(path_, ": bad chunk magic at byte ", next_offset_, " (chunk ", num_chunks_, ")"));
  }
  chunk->kind = head[1];
  for (int i = 0; i < format_.num_counts; ++i) chunk->counts[i] = head[2 + i];
  chunk->payload_bytes = head[words - 2];
  chunk->crc = head[words - 1];
  const int64_t end = next_offset_ + chunk_header_bytes() + chunk->payload_bytes;
  if (end > file_size_) {
    return Truncated(absl::StrCat("chunk ", num_chunks_, " at byte ", next_offset_, " runs past the end"));
  }
  next_offset_ = end;
  if (chunk->kind != kEndChunkKind) {
    ++num_chunks_;
    return true;
  }
  // The writer puts zeros in the end chunk's counts; they are outside every checksum, so a
  // flipped bit there is only found by looking.
  for (int i = 0; i < format_.num_counts; ++i) {
    if (chunk->counts[i] == 0) continue;
    std::string counts;
    for (int j = 0; j < format_.num_counts; ++j) absl::StrAppend(&counts, j == 0 ? "" : " ", chunk->counts[j]);
    return absl::DataLossError(absl::StrCat(path_, ": malformed end chunk (counts ", counts, ", not zero)"));
  }
  std::string payload;
  T2D_RETURN_IF_ERROR(ReadPayload(*chunk, &payload));
  if (payload.size() != sizeof(int64_t) * static_cast<size_t>(format_.num_totals)) {
    return absl::DataLossError(absl::StrCat(path_, ": malformed end chunk (", payload.size(), " bytes)"));
  }
  if (end != file_size_) return absl::DataLossError(absl::StrCat(path_, ": trailing bytes after the end chunk"));
  end_totals_.resize(static_cast<size_t>(format_.num_totals));
  std::memcpy(end_totals_.data(), payload.data(), payload.size());
  return false;
}

absl::Status ChunkFileReader::ReadPayload(const ChunkInfo& chunk, std::string* payload) {
  payload->resize(chunk.payload_bytes);
  if (std::fseek(f_, chunk.offset + chunk_header_bytes(), SEEK_SET) != 0 ||
      std::fread(payload->data(), 1, payload->size(), f_) != payload->size()) {
    return absl::DataLossError(absl::StrCat(path_, ": cannot read chunk ", chunk.index, ": ", std::strerror(errno)));
  }
  if (Crc32(payload->data(), payload->size()) != chunk.crc) {
    return absl::DataLossError(
        absl::StrCat(path_, ": checksum mismatch in chunk ", chunk.index, " at byte ", chunk.offset));
  }
  return absl::OkStatus();
}

}  // namespace t2d
