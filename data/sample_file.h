#pragma once
// The binary sample and items files (.t2ds) of a prepared data set; format in
// docs/data-format.md. A samples file holds user records: a slice of the user's time-ordered
// positive sequence (item ids as raw int64, timestamps, tags per item) and the target
// positions of one split inside that slice, each with the start of its current session. One
// stored behaviour serves every target after it, so a user's sequence is stored once per
// split instead of once per sample.
//
// Layout (little-endian; the framing is common/chunk_file.h):
//   "T2DSAMPL" | u32 version | u32 header_bytes | SampleFileHeader | u32 crc32(header)
//   chunk*:  u32 'CHNK' | u32 kind | u32 records | u32 samples | u32 payload_bytes | u32 crc | payload
//   end:     a chunk of kind 3 whose payload is i64 records | i64 samples | i64 chunks
// Chunk kinds: 1 user records, 2 catalogue items, 4 user records deflated (payload: u32 size of
// the records | zlib stream of them), 5 as 4 with the user's F profile keys (i64 each) after
// each record's header, written when the header's user_fields F is above 0 (so files without
// profile fields are as before, and an older build refuses kind 5 by name). Version 2 writes samples as kind 4, because the raw records
// take about 93 bytes a behaviour (ids, times and tags as 64-bit values, and a user's history
// again in each split's file) and deflate takes that to about a quarter; version 1 files (kind
// 1) still read.
//
// Writers write to "<path>.tmp" and rename on Finish, so a path holds a complete file or none.
// Readers check magic, version, sizes and every chunk's CRC; errors (DataLoss for damage or
// truncation, FailedPrecondition for a version mismatch) name the file and the chunk.
//
// Thread-safety: writer and reader objects are thread-compatible; DecodeChunk is const.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/chunk_file.h"
#include "data/dataset.pb.h"

namespace t2d::data {

inline constexpr uint32_t kSampleFormatVersion = 2;
// The oldest version this build reads (data sets prepared by earlier builds).
inline constexpr uint32_t kOldestSampleFormatVersion = 1;

// One target inside a user record: `target` indexes the record's items; the current session
// of its history is [session_begin, target).
struct TargetRef {
  uint32_t target = 0;
  uint32_t session_begin = 0;
};

// A chunk of a samples file, decoded. Items of all users are concatenated.
struct DecodedChunk {
  std::vector<int64_t> user_ids;      // per record
  std::vector<int64_t> user_features; // per record: header.user_fields profile keys (0: missing)
  std::vector<uint32_t> user_begin;   // per record: first item (index into items); + end sentinel
  std::vector<int64_t> items;
  std::vector<int64_t> times;
  std::vector<uint32_t> tag_begin;    // per item: first tag (index into tags); + end sentinel
  std::vector<int64_t> tags;
  struct Sample {
    uint32_t record;
    uint32_t target;         // absolute index into items
    uint32_t session_begin;  // absolute index into items
  };
  std::vector<Sample> samples;
};

// An item of the catalogue.
struct ItemRecord {
  int64_t id = 0;
  std::vector<int64_t> tags;
  int64_t count = 0;  // positive interactions in the prepared sequences (0: not computed)
};

class SampleFileWriter {
 public:
  // Creates "<path>.tmp". chunk_bytes: payload size at which a chunk is closed.
  static absl::StatusOr<std::unique_ptr<SampleFileWriter>> Create(const std::string& path,
                                                                  const SampleFileHeader& header,
                                                                  size_t chunk_bytes);
  SampleFileWriter(const SampleFileWriter&) = delete;
  SampleFileWriter& operator=(const SampleFileWriter&) = delete;

  // Appends one user record. items/times/tags have one entry per behaviour (tags[i] are the
  // tags of items[i]); targets are sorted, within range and each has session_begin <= target.
  // user_features: the header's user_fields profile keys (empty: all missing).
  absl::Status AddUser(int64_t user_id, absl::Span<const int64_t> items, absl::Span<const int64_t> times,
                       absl::Span<const absl::Span<const int64_t>> tags, absl::Span<const TargetRef> targets,
                       absl::Span<const int64_t> user_features = {});
  // Appends one catalogue item (ITEMS files).
  absl::Status AddItem(int64_t id, absl::Span<const int64_t> tags, int64_t count);
  // Writes the end chunk, flushes, fsyncs and renames into place.
  absl::Status Finish();

  int64_t records() const { return records_; }
  int64_t samples() const { return samples_; }

 private:
  SampleFileWriter(std::string path, std::unique_ptr<ChunkFileWriter> file, uint32_t data_kind, size_t chunk_bytes,
                   int user_fields);
  // Writes the pending records as a chunk once they reach chunk_bytes_ (or `always`).
  absl::Status MaybeFlush(bool always = false);

  std::string path_;
  std::unique_ptr<ChunkFileWriter> file_;
  uint32_t data_kind_;
  size_t chunk_bytes_;
  int user_fields_;
  std::string payload_;
  std::string deflated_;  // scratch for a deflated chunk
  uint32_t chunk_records_ = 0, chunk_samples_ = 0;
  int64_t records_ = 0, samples_ = 0, chunks_ = 0;
};

// Random access to the chunks of one .t2ds file. Open reads the header and walks the chunk
// headers (not the payloads), so opening is cheap and truncation is found at once.
class SampleFileReader {
 public:
  static absl::StatusOr<std::unique_ptr<SampleFileReader>> Open(const std::string& path);
  SampleFileReader(const SampleFileReader&) = delete;
  SampleFileReader& operator=(const SampleFileReader&) = delete;

  const SampleFileHeader& header() const { return header_; }
  const std::string& path() const { return file_->path(); }
  int num_chunks() const { return static_cast<int>(chunks_.size()); }
  int64_t chunk_samples(int i) const { return chunks_[i].counts[1]; }
  int64_t total_samples() const { return total_samples_; }
  int64_t total_records() const { return total_records_; }

  // Reads, checks and decodes chunk i of a SAMPLES file.
  absl::Status ReadChunk(int i, DecodedChunk* out);
  // Reads every record of an ITEMS file.
  absl::StatusOr<std::vector<ItemRecord>> ReadAllItems();

 private:
  explicit SampleFileReader(std::unique_ptr<ChunkFileReader> file) : file_(std::move(file)) {}
  absl::Status Init();
  absl::Status ReadPayload(int i, std::string* payload);
  // Inflates the deflated chunk i held in scratch_ into inflated_.
  absl::Status Inflate(int i);

  std::unique_ptr<ChunkFileReader> file_;
  SampleFileHeader header_;
  std::vector<ChunkInfo> chunks_;  // counts = {records, samples}
  int64_t total_samples_ = 0, total_records_ = 0;
  std::string scratch_, inflated_;
};

}  // namespace t2d::data
