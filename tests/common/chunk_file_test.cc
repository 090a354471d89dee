#include "common/chunk_file.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"

namespace t2d {
namespace {

namespace fs = std::filesystem;

constexpr ChunkFileFormat kFormat = {"T2DTEST!", 7, 2, 1, "a test file"};

// The file kFormat gives for header "hi", one chunk (kind 1, counts 3 and 4, payload "abc")
// and the total 5, byte by byte. CRCs: zlib.crc32(b"hi") = 0xd8932aac,
// zlib.crc32(b"abc") = 0x352441c2, zlib.crc32(struct.pack("<q", 5)) = 0x2dc2d10d.
const std::string& TinyFile() {
  static const std::string* bytes = new std::string(
      "T2DTEST!"
      "\x07\x00\x00\x00"      // version
      "\x02\x00\x00\x00"      // header bytes
      "hi"                    // header
      "\xac\x2a\x93\xd8"      // crc32(header)
      "CHNK"                  // 0x4b4e4843
      "\x01\x00\x00\x00"      // kind
      "\x03\x00\x00\x00"      // counts[0]
      "\x04\x00\x00\x00"      // counts[1]
      "\x03\x00\x00\x00"      // payload bytes
      "\xc2\x41\x24\x35"      // crc32(payload)
      "abc"                   // payload
      "CHNK"                  // end chunk
      "\x03\x00\x00\x00"      // kind 3
      "\x00\x00\x00\x00"      // counts[0]
      "\x00\x00\x00\x00"      // counts[1]
      "\x08\x00\x00\x00"      // payload bytes
      "\x0d\xd1\xc2\x2d"      // crc32(payload)
      "\x05\x00\x00\x00\x00\x00\x00\x00",  // total
      81);
  return *bytes;
}

class ChunkFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("t2d_chunk_file_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    path_ = (dir_ / "f.bin").string();
  }
  void TearDown() override { fs::remove_all(dir_); }

  void WriteTiny() {
    auto w = ChunkFileWriter::Create(path_, kFormat, "hi");
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_TRUE((*w)->WriteChunk(1, {3, 4}, "abc").ok());
    ASSERT_TRUE((*w)->Finish({5}).ok());
  }

  // Opens `contents` as a kFormat file and reads everything, as a format's reader would.
  absl::Status ReadAll(const std::string& contents, const ChunkFileFormat& format = kFormat) {
    EXPECT_TRUE(WriteFileAtomic(path_, contents).ok());
    auto r = ChunkFileReader::Open(path_, format);
    if (!r.ok()) return r.status();
    // Walk the chunk headers first, then read the payloads (as the sample file reader does).
    std::vector<ChunkInfo> chunks(1);
    while (true) {
      auto more = (*r)->NextChunk(&chunks.back());
      if (!more.ok()) return more.status();
      if (!*more) break;
      chunks.emplace_back();
    }
    chunks.pop_back();
    std::string payload;
    for (const ChunkInfo& chunk : chunks) {
      if (auto s = (*r)->ReadPayload(chunk, &payload); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  // Expects `contents` to be refused with `code` and a message naming the file and `text`.
  void ExpectRefused(const std::string& contents, const std::string& text,
                     absl::StatusCode code = absl::StatusCode::kDataLoss) {
    const absl::Status s = ReadAll(contents);
    EXPECT_EQ(s.code(), code) << s;
    EXPECT_NE(s.message().find(path_), std::string::npos) << s;
    EXPECT_NE(s.message().find(text), std::string::npos) << s;
  }

  fs::path dir_;
  std::string path_;
};

TEST(ByteHelpersTest, LittleEndianAndBoundsChecked) {
  std::string s;
  PutLe<uint32_t>(&s, 0x01020304);
  PutLe<int16_t>(&s, -2);
  const int64_t v[] = {1, -1};
  PutLeArray(&s, v, 2);
  EXPECT_EQ(s, std::string("\x04\x03\x02\x01\xfe\xff"
                           "\x01\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff",
                           22));
  ByteReader r(s);
  uint32_t u = 0;
  int16_t h = 0;
  std::vector<int64_t> back{9};
  ASSERT_TRUE(r.Get(&u));
  ASSERT_TRUE(r.Get(&h));
  EXPECT_EQ(u, 0x01020304u);
  EXPECT_EQ(h, -2);
  EXPECT_FALSE(r.GetArray(3, &back));  // 16 bytes left, not 24
  EXPECT_EQ(r.pos(), 6u);
  ASSERT_TRUE(r.GetArray(2, &back));
  EXPECT_EQ(back, (std::vector<int64_t>{9, 1, -1}));
  EXPECT_TRUE(r.done());
  EXPECT_FALSE(r.Get(&h));
  EXPECT_EQ(r.left(), 0u);
}

TEST_F(ChunkFileTest, ExactLayoutOfATinyFile) {
  WriteTiny();
  EXPECT_EQ(*ReadFileToString(path_), TinyFile());
  EXPECT_FALSE(fs::exists(path_ + ".tmp"));
}

TEST_F(ChunkFileTest, RoundTrip) {
  constexpr ChunkFileFormat kOneCount = {"T2DONE..", 1, 1, 2, "a one-count file"};
  auto w = ChunkFileWriter::Create(path_, kOneCount, std::string(300, 'h'));
  ASSERT_TRUE(w.ok()) << w.status();
  const std::vector<std::string> payloads = {"first", "", std::string(5000, 'x')};
  const uint32_t kinds[] = {1, 2, 7};  // any kind but kEndChunkKind
  for (size_t i = 0; i < payloads.size(); ++i) {
    ASSERT_TRUE((*w)->WriteChunk(kinds[i], {static_cast<uint32_t>(10 * i)}, payloads[i]).ok());
  }
  ASSERT_TRUE((*w)->Finish({-1, 1LL << 40}).ok());
  EXPECT_FALSE((*w)->WriteChunk(1, {0}, "late").ok());

  auto r = ChunkFileReader::Open(path_, kOneCount);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->header(), std::string(300, 'h'));
  std::vector<ChunkInfo> chunks;
  ChunkInfo c;
  while (true) {
    auto more = (*r)->NextChunk(&c);
    ASSERT_TRUE(more.ok()) << more.status();
    if (!*more) break;
    chunks.push_back(c);
  }
  EXPECT_EQ((*r)->end_totals(), (std::vector<int64_t>{-1, 1LL << 40}));
  ASSERT_EQ(chunks.size(), 3u);
  // Payloads can be read in any order after the walk.
  for (int i = 2; i >= 0; --i) {
    const ChunkInfo& chunk = chunks[static_cast<size_t>(i)];
    EXPECT_EQ(chunk.index, i);
    EXPECT_EQ(chunk.kind, kinds[i]);
    EXPECT_EQ(chunk.counts[0], static_cast<uint32_t>(10 * i));
    std::string payload;
    ASSERT_TRUE((*r)->ReadPayload(chunk, &payload).ok());
    EXPECT_EQ(payload, payloads[static_cast<size_t>(i)]);
  }
  // Header 8 + 4 + 4 + 300 + 4 bytes, then chunk headers of 20 bytes.
  EXPECT_EQ(chunks[0].offset, 320);
  EXPECT_EQ(chunks[1].offset, 320 + 20 + 5);
}

TEST_F(ChunkFileTest, WriterRefusesWrongCountsAndCleansUp) {
  {
    auto w = ChunkFileWriter::Create(path_, kFormat, "hi");
    ASSERT_TRUE(w.ok());
    EXPECT_EQ((*w)->WriteChunk(1, {3}, "abc").code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ((*w)->Finish({1, 2}).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(fs::exists(path_ + ".tmp"));
  }
  // Destroyed without a successful Finish: nothing under either name.
  EXPECT_FALSE(fs::exists(path_));
  EXPECT_FALSE(fs::exists(path_ + ".tmp"));
  EXPECT_EQ(ChunkFileWriter::Create((dir_ / "no" / "f").string(), kFormat, "").status().code(),
            absl::StatusCode::kInternal);
}

TEST_F(ChunkFileTest, TheTinyFileReadsBack) { EXPECT_TRUE(ReadAll(TinyFile()).ok()) << ReadAll(TinyFile()); }

TEST_F(ChunkFileTest, EveryTruncationIsRefused) {
  const std::string& good = TinyFile();
  for (size_t len = 0; len < good.size(); ++len) {
    const absl::Status s = ReadAll(good.substr(0, len));
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << len << ": " << s;
    EXPECT_NE(s.message().find(path_), std::string::npos) << s;
  }
  // Cut at a chunk boundary or inside a payload: reported as a truncated file.
  ExpectRefused(good.substr(0, 22), "truncated file (no end chunk after 0 chunks)");
  ExpectRefused(good.substr(0, 49), "truncated file (no end chunk after 1 chunks)");
  ExpectRefused(good.substr(0, 47), "truncated file (chunk 0 at byte 22 runs past the end)");
}

TEST_F(ChunkFileTest, EveryCorruptionIsRefused) {
  auto with = [](size_t at, const std::string& bytes) {
    std::string s = TinyFile();
    s.replace(at, bytes.size(), bytes);
    return s;
  };
  ExpectRefused(with(0, "X"), "not a test file (bad magic)");
  ExpectRefused(with(8, "\x08"), "unsupported format version 8 (this build reads 7)",
                absl::StatusCode::kFailedPrecondition);
  ExpectRefused(with(12, std::string("\x01\x00\x10\x00", 4)), "header size 1048577 is implausible");
  ExpectRefused(with(17, "o"), "header checksum mismatch");             // header byte
  ExpectRefused(with(18, "\xad"), "header checksum mismatch");             // header crc
  ExpectRefused(with(22, "D"), "bad chunk magic at byte 22 (chunk 0)");    // chunk marker
  ExpectRefused(with(46, "x"), "checksum mismatch in chunk 0 at byte 22");  // payload
  ExpectRefused(with(42, "\xc3"), "checksum mismatch in chunk 0 at byte 22");  // payload crc
  // Payload sizes that do not fit: beyond the file, or shifting the next chunk header.
  ExpectRefused(with(38, std::string("\xff\xff\xff\x7f", 4)), "truncated file (chunk 0 at byte 22 runs past the end)");
  ExpectRefused(with(38, "\x04"), "bad chunk magic at byte 50 (chunk 1)");
  ExpectRefused(with(80, "\x06"), "checksum mismatch in chunk 1 at byte 49");  // end total
  // The end chunk's counts are not under its checksum; they are written as zeros and must read so.
  ExpectRefused(with(57, "\x01"), "malformed end chunk (counts 1 0, not zero)");
  ExpectRefused(with(64, "\x80"), "malformed end chunk (counts 0 2147483648, not zero)");
  ExpectRefused(TinyFile() + "junk", "trailing bytes after the end chunk");
  // An end chunk with another number of totals than the format has.
  constexpr ChunkFileFormat kTwoTotals = {"T2DTEST!", 7, 2, 2, "a test file"};
  const absl::Status s = ReadAll(TinyFile(), kTwoTotals);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(s.message().find(path_ + ": malformed end chunk (8 bytes)"), std::string::npos) << s;
  // A missing file.
  EXPECT_EQ(ChunkFileReader::Open((dir_ / "absent").string(), kFormat).status().code(), absl::StatusCode::kNotFound);
}

// A format that grew from version 5 to 7 reads files of 5, 6 and 7 (and says which), no others.
TEST_F(ChunkFileTest, AcceptedVersionRange) {
  constexpr ChunkFileFormat kGrown = {"T2DTEST!", 7, 2, 1, "a test file", /*oldest_version=*/5};
  for (char v : {'\x05', '\x06', '\x07'}) {
    std::string file = TinyFile();
    file[8] = v;
    EXPECT_TRUE(ReadAll(file, kGrown).ok()) << static_cast<int>(v);
    auto r = ChunkFileReader::Open(path_, kGrown);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ((*r)->version(), static_cast<uint32_t>(v));
  }
  for (char v : {'\x04', '\x08'}) {
    std::string file = TinyFile();
    file[8] = v;
    const absl::Status s = ReadAll(file, kGrown);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_NE(s.message().find(absl::StrCat("unsupported format version ", static_cast<int>(v), " (this build reads 5 to 7)")),
              std::string::npos)
        << s;
  }
}

}  // namespace
}  // namespace t2d
