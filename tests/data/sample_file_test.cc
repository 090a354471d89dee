#include "data/sample_file.h"

#include <gtest/gtest.h>

#include <zlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "tests/data/test_util.h"

namespace t2d::data {
namespace {

using testing::TempDir;

SampleFileHeader Header() {
  SampleFileHeader h;
  h.set_kind(SampleFileHeader::SAMPLES);
  h.set_split("train");
  h.set_window(50);
  return h;
}

// Writes `users` users of 5 items each (two targets each) in small chunks.
std::string WriteFile(const std::string& path, int users) {
  auto w = SampleFileWriter::Create(path, Header(), 256);
  EXPECT_TRUE(w.ok());
  std::vector<int64_t> tag_a{7}, tag_b{8, 9}, none;
  for (int u = 0; u < users; ++u) {
    std::vector<int64_t> items{100 + u, 200, 300, 400, 500};
    std::vector<int64_t> times{1, 2, 3, 4, 5};
    std::vector<absl::Span<const int64_t>> tags{tag_a, tag_b, none, tag_a, tag_b};
    std::vector<TargetRef> targets{{2, 1}, {4, 3}};
    EXPECT_TRUE((*w)->AddUser(u, items, times, tags, targets).ok());
  }
  EXPECT_TRUE((*w)->Finish().ok());
  return path;
}

TEST(SampleFileTest, RoundTripAcrossChunks) {
  TempDir dir;
  const std::string path = WriteFile(dir.File("s.t2ds"), 20);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  auto r = SampleFileReader::Open(path);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT((*r)->num_chunks(), 1);
  EXPECT_EQ((*r)->total_samples(), 40);
  EXPECT_EQ((*r)->total_records(), 20);
  EXPECT_EQ((*r)->header().split(), "train");
  int64_t users = 0;
  for (int c = 0; c < (*r)->num_chunks(); ++c) {
    DecodedChunk d;
    ASSERT_TRUE((*r)->ReadChunk(c, &d).ok());
    EXPECT_EQ(static_cast<int64_t>(d.samples.size()), (*r)->chunk_samples(c));
    for (size_t rec = 0; rec < d.user_ids.size(); ++rec, ++users) {
      EXPECT_EQ(d.user_ids[rec], users);
      const uint32_t b = d.user_begin[rec];
      EXPECT_EQ(d.items[b], 100 + users);
      EXPECT_EQ(d.times[b + 4], 5);
      EXPECT_EQ(d.tag_begin[b + 2] - d.tag_begin[b + 1], 2u);
      EXPECT_EQ(d.tags[d.tag_begin[b + 1] + 1], 9);
      EXPECT_EQ(d.tag_begin[b + 3], d.tag_begin[b + 2]);
    }
    EXPECT_EQ(d.samples[1].target - d.user_begin[d.samples[1].record], 4u);
    EXPECT_EQ(d.samples[1].session_begin - d.user_begin[d.samples[1].record], 3u);
  }
  EXPECT_EQ(users, 20);
}

TEST(SampleFileTest, ItemsFile) {
  TempDir dir;
  SampleFileHeader h;
  h.set_kind(SampleFileHeader::ITEMS);
  auto w = SampleFileWriter::Create(dir.File("items.t2ds"), h, 64);
  ASSERT_TRUE(w.ok());
  for (int i = 1; i <= 30; ++i) {
    std::vector<int64_t> tags(static_cast<size_t>(i % 3), i);
    ASSERT_TRUE((*w)->AddItem(i * 10, tags, i).ok());
  }
  ASSERT_TRUE((*w)->Finish().ok());
  auto r = SampleFileReader::Open(dir.File("items.t2ds"));
  ASSERT_TRUE(r.ok()) << r.status();
  auto items = (*r)->ReadAllItems();
  ASSERT_TRUE(items.ok()) << items.status();
  ASSERT_EQ(items->size(), 30u);
  EXPECT_EQ((*items)[4].id, 50);
  EXPECT_EQ((*items)[4].count, 5);
  EXPECT_EQ((*items)[4].tags, (std::vector<int64_t>{5, 5}));
  DecodedChunk d;
  EXPECT_FALSE((*r)->ReadChunk(0, &d).ok());  // not a samples file
}

TEST(SampleFileTest, ChecksumMismatchNamesFileAndChunk) {
  TempDir dir;
  const std::string path = WriteFile(dir.File("bad.t2ds"), 20);
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-60, std::ios::end);  // inside the last data chunk's payload
    char c;
    f.seekg(f.tellp());
    f.read(&c, 1);
    c ^= 0x5a;
    f.seekp(-60, std::ios::end);
    f.write(&c, 1);
  }
  auto r = SampleFileReader::Open(path);
  ASSERT_TRUE(r.ok()) << r.status();
  absl::Status bad;
  for (int c = 0; c < (*r)->num_chunks() && bad.ok(); ++c) {
    DecodedChunk d;
    bad = (*r)->ReadChunk(c, &d);
  }
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(absl::IsDataLoss(bad));
  EXPECT_NE(bad.message().find("bad.t2ds"), std::string::npos);
  EXPECT_NE(bad.message().find("checksum mismatch in chunk"), std::string::npos) << bad;
}

TEST(SampleFileTest, TruncatedAndForeignFilesAreErrors) {
  TempDir dir;
  const std::string path = WriteFile(dir.File("t.t2ds"), 20);
  const auto size = std::filesystem::file_size(path);
  for (uintmax_t cut : {size - 1, size - 30, size / 2, uintmax_t{10}}) {
    std::filesystem::copy_file(path, dir.File("cut.t2ds"), std::filesystem::copy_options::overwrite_existing);
    std::filesystem::resize_file(dir.File("cut.t2ds"), cut);
    auto r = SampleFileReader::Open(dir.File("cut.t2ds"));
    ASSERT_FALSE(r.ok()) << "cut at " << cut;
    EXPECT_TRUE(absl::IsDataLoss(r.status())) << r.status();
    EXPECT_NE(r.status().message().find("cut.t2ds"), std::string::npos);
  }
  testing::WriteText(dir.File("text.t2ds"), "this is not a sample file at all");
  auto r = SampleFileReader::Open(dir.File("text.t2ds"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("not a t2d sample file"), std::string::npos);
  // A newer format version is refused with a clear message.
  std::filesystem::copy_file(path, dir.File("v3.t2ds"));
  {
    std::fstream f(dir.File("v3.t2ds"), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(8);
    const uint32_t v = kSampleFormatVersion + 1;
    f.write(reinterpret_cast<const char*>(&v), 4);
  }
  r = SampleFileReader::Open(dir.File("v3.t2ds"));
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(r.status())) << r.status();
  EXPECT_NE(r.status().message().find("unsupported format version 3 (this build reads 1 to 2)"), std::string::npos)
      << r.status();
  EXPECT_FALSE(SampleFileReader::Open(dir.File("missing.t2ds")).ok());
}

// Opens `path` and reads everything in it, as the reader and the catalogue do.
absl::Status ReadWholeFile(const std::string& path) {
  auto r = SampleFileReader::Open(path);
  if (!r.ok()) return r.status();
  if ((*r)->header().kind() == SampleFileHeader::ITEMS) return (*r)->ReadAllItems().status();
  for (int c = 0; c < (*r)->num_chunks(); ++c) {
    DecodedChunk d;
    if (absl::Status s = (*r)->ReadChunk(c, &d); !s.ok()) return s;
  }
  return absl::OkStatus();
}

// Every single-bit flip of a samples file and of an items file is refused, naming the file. The
// end chunk's header counts used to be read without a look: a flip there went unnoticed.
TEST(SampleFileTest, EveryBitFlipIsRefused) {
  TempDir dir;
  const std::string samples = WriteFile(dir.File("s.t2ds"), 3);
  SampleFileHeader h;
  h.set_kind(SampleFileHeader::ITEMS);
  auto w = SampleFileWriter::Create(dir.File("i.t2ds"), h, 32);
  ASSERT_TRUE(w.ok());
  for (int i = 1; i <= 4; ++i) ASSERT_TRUE((*w)->AddItem(i, std::vector<int64_t>(static_cast<size_t>(i % 2), i), i).ok());
  ASSERT_TRUE((*w)->Finish().ok());
  for (const std::string& path : {samples, dir.File("i.t2ds")}) {
    ASSERT_TRUE(ReadWholeFile(path).ok()) << ReadWholeFile(path);
    std::ifstream in(path, std::ios::binary);
    const std::string good((std::istreambuf_iterator<char>(in)), {});
    const std::string flipped = dir.File("flipped.t2ds");
    int accepted = 0;
    for (size_t byte = 0; byte < good.size(); ++byte) {
      for (int bit = 0; bit < 8; ++bit) {
        std::string bad = good;
        bad[byte] = static_cast<char>(bad[byte] ^ (1 << bit));
        testing::WriteText(flipped, bad);
        const absl::Status s = ReadWholeFile(flipped);
        if (s.ok()) {
          if (++accepted <= 5) ADD_FAILURE() << path << ": a flip of bit " << bit << " of byte " << byte << " of "
                                             << good.size() << " was accepted";
          continue;
        }
        EXPECT_NE(s.message().find("flipped.t2ds"), std::string::npos) << s;
      }
    }
    EXPECT_EQ(accepted, 0) << path;
  }
}

// One user record as the format lays it out: 2 items, tags {5} and {}, one target.
std::string OneRecord(int64_t user) {
  std::string r;
  PutLe<int64_t>(&r, user);
  PutLe<uint32_t>(&r, 2);
  PutLe<uint32_t>(&r, 1);
  for (int64_t v : {11, 12, 1000, 1001}) PutLe<int64_t>(&r, v);  // items, then times
  PutLe<uint16_t>(&r, 1);
  PutLe<uint16_t>(&r, 0);
  PutLe<int64_t>(&r, 5);
  PutLe<uint32_t>(&r, 1);  // target
  PutLe<uint32_t>(&r, 0);  // session begin
  return r;
}

// Writes a samples file with the framing alone: `version`, and one chunk of `kind` and `payload`.
void WriteRaw(const std::string& path, uint32_t version, uint32_t kind, const std::string& payload) {
  const ChunkFileFormat format = {"T2DSAMPL", version, 2, 3, "a t2d sample file"};
  auto w = ChunkFileWriter::Create(path, format, Header().SerializeAsString());
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->WriteChunk(kind, {1, 1}, payload).ok());
  ASSERT_TRUE((*w)->Finish({1, 1, 1}).ok());
}

// Data sets prepared before chunks were deflated (version 1, kind 1) still read; a deflated chunk
// in a version-1 file does not.
TEST(SampleFileTest, Version1FilesStillRead) {
  TempDir dir;
  WriteRaw(dir.File("v1.t2ds"), 1, 1, OneRecord(42));
  auto r = SampleFileReader::Open(dir.File("v1.t2ds"));
  ASSERT_TRUE(r.ok()) << r.status();
  DecodedChunk d;
  ASSERT_TRUE((*r)->ReadChunk(0, &d).ok());
  EXPECT_EQ(d.user_ids, std::vector<int64_t>{42});
  EXPECT_EQ(d.items, (std::vector<int64_t>{11, 12}));
  EXPECT_EQ(d.times, (std::vector<int64_t>{1000, 1001}));
  EXPECT_EQ(d.tags, std::vector<int64_t>{5});
  ASSERT_EQ(d.samples.size(), 1u);
  EXPECT_EQ(d.samples[0].target, 1u);
  // An items chunk in a samples file is not a sample chunk either.
  WriteRaw(dir.File("k2.t2ds"), 2, 2, OneRecord(42));
  r = SampleFileReader::Open(dir.File("k2.t2ds"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("unknown chunk kind 2 (chunk 0)"), std::string::npos) << r.status();
  WriteRaw(dir.File("v1k4.t2ds"), 1, 4, "xxxxxxxx");
  r = SampleFileReader::Open(dir.File("v1k4.t2ds"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("unknown chunk kind 4"), std::string::npos) << r.status();
}

// Samples are deflated: the 200 records below take 170 bytes each raw (34,000 in all).
TEST(SampleFileTest, SampleChunksAreDeflated) {
  TempDir dir;
  const std::string path = WriteFile(dir.File("s.t2ds"), 200);
  EXPECT_LT(std::filesystem::file_size(path), 34000u / 3) << "raw records take 34,000 bytes";
  auto r = SampleFileReader::Open(path);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)->total_records(), 200);
}

// A deflated chunk whose checksum is right but whose contents are not a zlib stream of the size
// it names (a writer bug or a forged file) is DataLoss naming the file and chunk, and a size no
// zlib stream of that length can inflate to is refused before anything is allocated.
TEST(SampleFileTest, BadDeflatedChunksAreRefused) {
  TempDir dir;
  auto read = [&](const std::string& payload) {
    WriteRaw(dir.File("d.t2ds"), 2, 4, payload);
    auto r = SampleFileReader::Open(dir.File("d.t2ds"));
    if (!r.ok()) return r.status();
    DecodedChunk d;
    return (*r)->ReadChunk(0, &d);
  };
  const std::string record = OneRecord(7);
  std::string good(4, '\0');
  const auto raw = static_cast<uint32_t>(record.size());
  std::memcpy(good.data(), &raw, 4);
  uLongf size = compressBound(raw);
  std::string stream(size, '\0');
  ASSERT_EQ(compress2(reinterpret_cast<Bytef*>(stream.data()), &size, reinterpret_cast<const Bytef*>(record.data()), raw, 1),
            Z_OK);
  stream.resize(size);
  EXPECT_TRUE(read(good + stream).ok()) << read(good + stream);

  auto expect = [&](const std::string& payload, const std::string& what) {
    const absl::Status s = read(payload);
    EXPECT_TRUE(absl::IsDataLoss(s)) << s;
    EXPECT_NE(s.message().find("d.t2ds: deflated chunk 0: " + what), std::string::npos) << s;
  };
  expect("ab", "no size");
  expect(good + "not a zlib stream", "the zlib stream does not inflate to");
  std::string small = good;
  small[0] = static_cast<char>(small[0] - 1);  // one byte fewer than the stream holds
  expect(small + stream, "the zlib stream does not inflate to");
  std::string bloated = good;  // 1 MiB from a stream of a few dozen bytes: beyond deflate's ratio
  const uint32_t mib = 1u << 20;
  std::memcpy(bloated.data(), &mib, 4);
  expect(bloated + stream, "a size of 1048576 bytes from");
  expect(good + stream + "tail", "4 bytes after the zlib stream");
  std::string huge(4, '\0');
  const uint32_t lie = 0xFFFFFFFFu;
  std::memcpy(huge.data(), &lie, 4);
  expect(huge + stream, "a size of 4294967295 bytes from");
}

TEST(SampleFileTest, WriterRejectsBadTargets) {
  TempDir dir;
  auto w = SampleFileWriter::Create(dir.File("w.t2ds"), Header(), 1024);
  ASSERT_TRUE(w.ok());
  std::vector<int64_t> items{1, 2}, times{1, 2};
  std::vector<int64_t> none;
  std::vector<absl::Span<const int64_t>> tags{none, none};
  std::vector<TargetRef> beyond{{2, 0}};
  EXPECT_FALSE((*w)->AddUser(1, items, times, tags, beyond).ok());
  std::vector<TargetRef> session_after{{1, 2}};
  EXPECT_FALSE((*w)->AddUser(1, items, times, tags, session_after).ok());
  // Without Finish nothing appears under the final name.
  w->reset();
  EXPECT_FALSE(std::filesystem::exists(dir.File("w.t2ds")));
  EXPECT_FALSE(std::filesystem::exists(dir.File("w.t2ds.tmp")));
}

}  // namespace
}  // namespace t2d::data
