#pragma once
// The chunked, checksummed framing shared by the binary file formats (sample files
// data/sample_file.h, embedding shard files embedding/shard_file.h), and the little-endian byte
// helpers those formats and the dense state files (model/dense_state.h) encode with.
//
// Layout (little-endian; a ChunkFileFormat names the magic, the version and the field counts):
//   magic[8] | u32 version | u32 header_bytes (<= 1 MiB) | header | u32 crc32(header)
//   chunk*:  u32 0x4b4e4843 ("CHNK") | u32 kind | u32 counts[num_counts] | u32 payload_bytes |
//            u32 crc32(payload) | payload
//   end:     a chunk of kind kEndChunkKind, counts 0 (checked: they are outside the checksums),
//            payload i64 totals[num_totals]; it must be the last bytes of the file.
// What the header, the other chunk kinds, the counts and the totals mean is up to the format;
// this layer writes them and checks the framing (the formats check the meaning).
//
// Ownership: writers and readers own their FILE handle. A writer writes "<path>.tmp" and renames
// it over `path` in Finish; destroyed before a successful Finish it removes the .tmp file, so
// `path` holds the old file or a complete new one.
// Thread-safety: writers and readers are thread-compatible (one thread per object); the byte
// helpers are pure.
// Errors name the file. Readers: NotFound (no file), PermissionDenied (cannot open), DataLoss
// (bad magic, implausible header size, checksum mismatch, a chunk that runs past the end of the
// file or a missing end chunk, both "truncated file", a malformed end chunk (non-zero counts, a
// payload of the wrong size), bytes after it),
// FailedPrecondition (a format version outside the accepted range). Writers: InvalidArgument (a payload of 2 GiB or
// more, a count or total list of the wrong length), FailedPrecondition (a chunk after Finish),
// Internal (I/O failures).

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace t2d {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the file formats are little-endian; add byte swapping");

// Appends `v` (an arithmetic type) as its little-endian bytes.
template <typename T>
void PutLe(std::string* out, T v) {
  out->append(reinterpret_cast<const char*>(&v), sizeof(T));
}
template <typename T>
void PutLeArray(std::string* out, const T* v, size_t n) {
  out->append(reinterpret_cast<const char*>(v), n * sizeof(T));
}

// A bounds-checked little-endian cursor over bytes it does not own (they must outlive it). A
// read that asks for more bytes than are left returns false and leaves the cursor where it was.
class ByteReader {
 public:
  explicit ByteReader(absl::string_view bytes) : bytes_(bytes) {}

  bool GetBytes(void* dst, size_t n) {
    if (left() < n) return false;
    if (n == 0) return true;  // dst may be null (an empty vector's data()): memcpy must not see it
    std::memcpy(dst, bytes_.data() + pos_, n);
    pos_ += n;
    return true;
  }
  template <typename T>
  bool Get(T* v) {
    return GetBytes(v, sizeof(T));
  }
  // Appends `n` values to `out`.
  template <typename T>
  bool GetArray(size_t n, std::vector<T>* out) {
    if (left() / sizeof(T) < n) return false;
    const size_t old = out->size();
    out->resize(old + n);
    return GetBytes(out->data() + old, n * sizeof(T));
  }

  size_t pos() const { return pos_; }
  size_t left() const { return bytes_.size() - pos_; }
  bool done() const { return pos_ == bytes_.size(); }

 private:
  absl::string_view bytes_;
  size_t pos_ = 0;
};

// The end chunk's kind in every format.
inline constexpr uint32_t kEndChunkKind = 3;
inline constexpr int kMaxChunkCounts = 2;

// What distinguishes one chunked format from another.
struct ChunkFileFormat {
  const char* magic;        // exactly 8 characters, e.g. "T2DSAMPL"
  uint32_t version;         // written; readers refuse any other (but see oldest_version)
  int num_counts;           // u32 counts in each chunk header, 1..kMaxChunkCounts
  int num_totals;           // i64 totals in the end chunk's payload
  const char* description;  // for errors: "<path>: not <description> (bad magic)"
  // Readers also accept the versions from this one up to `version` (0: `version` only), so a
  // format can grow while its older files stay readable. Writers always write `version`.
  uint32_t oldest_version = 0;
};

// A data chunk's header as read from the file.
struct ChunkInfo {
  int index = 0;       // 0-based among the file's data chunks
  int64_t offset = 0;  // of the chunk's "CHNK" marker
  uint32_t kind = 0;
  std::array<uint32_t, kMaxChunkCounts> counts{};  // the first format.num_counts are set
  uint32_t payload_bytes = 0;
  uint32_t crc = 0;
};

class ChunkFileWriter {
 public:
  // Creates "<path>.tmp" and writes the magic, version and `header`.
  static absl::StatusOr<std::unique_ptr<ChunkFileWriter>> Create(const std::string& path, const ChunkFileFormat& format,
                                                                 absl::string_view header);
  ~ChunkFileWriter();
  ChunkFileWriter(const ChunkFileWriter&) = delete;
  ChunkFileWriter& operator=(const ChunkFileWriter&) = delete;

  // Appends one chunk; `counts` holds format.num_counts values.
  absl::Status WriteChunk(uint32_t kind, absl::Span<const uint32_t> counts, absl::string_view payload);
  // Appends the end chunk with `totals` (format.num_totals values), then flushes, fsyncs and
  // renames the file into place. Nothing may be written after it.
  absl::Status Finish(absl::Span<const int64_t> totals);

 private:
  ChunkFileWriter(std::string path, const ChunkFileFormat& format, FILE* f);
  absl::Status Write(absl::string_view bytes);

  std::string path_;  // the final name; the file being written is path_ + ".tmp"
  ChunkFileFormat format_;
  FILE* f_;
  bool finished_ = false;
};

// Reads one file of a chunked format. Open checks the magic, version and header checksum;
// NextChunk walks the chunk headers without reading the payloads (so a truncated file is found
// before any payload is read), and ReadPayload reads and checks any chunk seen so far.
class ChunkFileReader {
 public:
  static absl::StatusOr<std::unique_ptr<ChunkFileReader>> Open(const std::string& path, const ChunkFileFormat& format);
  ~ChunkFileReader();
  ChunkFileReader(const ChunkFileReader&) = delete;
  ChunkFileReader& operator=(const ChunkFileReader&) = delete;

  const std::string& path() const { return path_; }
  // The file's format version (within the format's accepted range).
  uint32_t version() const { return version_; }
  // The header's bytes (checksum verified).
  const std::string& header() const { return header_; }

  // Reads the next data chunk's header into *chunk and returns true. At the end chunk, checks
  // it (checksum, size, last in the file), keeps its totals and returns false; do not call
  // again after that.
  absl::StatusOr<bool> NextChunk(ChunkInfo* chunk);
  // The end chunk's totals (format.num_totals values) once NextChunk has returned false.
  const std::vector<int64_t>& end_totals() const { return end_totals_; }
  // Reads the payload of a chunk returned by NextChunk into *payload and checks its checksum.
  absl::Status ReadPayload(const ChunkInfo& chunk, std::string* payload);

 private:
  ChunkFileReader(std::string path, const ChunkFileFormat& format, FILE* f);
  absl::Status ReadPreamble();
  absl::Status Truncated(absl::string_view what) const;
  int64_t chunk_header_bytes() const { return 4 * (4 + format_.num_counts); }

  std::string path_;
  ChunkFileFormat format_;
  FILE* f_;
  int64_t file_size_ = 0;
  uint32_t version_ = 0;
  std::string header_;
  int64_t next_offset_ = 0;  // of the next chunk header
  int num_chunks_ = 0;       // data chunks walked so far
  std::vector<int64_t> end_totals_;
};

}  // namespace t2d
