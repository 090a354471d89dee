// common/sealed_folder.h: what a manifest must catch.
#include "common/sealed_folder.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/checksum.h"

namespace t2d {
namespace {

namespace fs = std::filesystem;

// Bytes ending with their own little-endian CRC-32, as dense.t2dd files do.
std::string WithTrailingCrc(const std::string& payload) {
  const uint32_t crc = Crc32(payload.data(), payload.size());
  char tail[4];
  std::memcpy(tail, &crc, 4);
  return payload + std::string(tail, 4);
}

std::string Read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void Write(const fs::path& p, const std::string& bytes) { std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes; }

class SealedFolderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    root_ = fs::path(::testing::TempDir()) / (std::string("t2d_sealed_") + info->name() + "_" + std::to_string(::getpid()));
    fs::remove_all(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  // A folder of kind BUNDLE holding dense.t2dd and sub/rows.bin.
  fs::path Make(const std::string& name) {
    const fs::path f = root_ / name;
    fs::create_directories(f / "sub");
    Write(f / "dense.t2dd", WithTrailingCrc("state of " + name));
    Write(f / "sub" / "rows.bin", "rows of " + name);
    FolderManifest m;
    m.set_kind(FolderManifest::BUNDLE);
    m.set_step(7);
    const auto s = SealFolder(f.string(), m, kFiles);
    EXPECT_TRUE(s.ok()) << s;
    return f;
  }
  static absl::StatusOr<FolderManifest> Verify(const fs::path& f) {
    return VerifyFolder(f.string(), FolderManifest::BUNDLE, [](const FolderManifest&) { return kFiles; });
  }
  // Replaces `from` by `to` in the manifest's text and reseals its own checksum, as a tool that
  // rewrites manifests carelessly would.
  static void EditManifest(const fs::path& f, const std::string& from, const std::string& to) {
    std::string text = Read(f / "MANIFEST");
    text = text.substr(0, text.rfind("# sha256: "));
    ASSERT_NE(text.find(from), std::string::npos) << text;
    text = absl::StrReplaceAll(text, {{from, to}});
    Write(f / "MANIFEST", absl::StrCat(text, "# sha256: ", Sha256Hex(text.data(), text.size()), "\n"));
  }
  static void ExpectRefused(const absl::StatusOr<FolderManifest>& v, const std::string& naming) {
    ASSERT_FALSE(v.ok()) << "accepted; wanted an error naming " << naming;
    EXPECT_NE(v.status().message().find(naming), std::string::npos) << v.status();
  }

  static inline const std::vector<std::string> kFiles = {"dense.t2dd", "sub/rows.bin"};
  fs::path root_;
};

TEST_F(SealedFolderTest, SealedFolderVerifies) {
  const fs::path f = Make("a");
  auto v = Verify(f);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->format_version(), 2u);
  EXPECT_EQ(v->step(), 7);
  ASSERT_EQ(v->files_size(), 2);
  EXPECT_EQ(v->files(1).name(), "sub/rows.bin");
  EXPECT_EQ(v->files(1).sha256(), Sha256Hex("rows of a", 9));
  // Of another kind: refused.
  auto other = VerifyFolder(f.string(), FolderManifest::CHECKPOINT, [](const FolderManifest&) { return kFiles; });
  EXPECT_EQ(other.status().code(), absl::StatusCode::kFailedPrecondition) << other.status();
}

TEST_F(SealedFolderTest, FileSwappedFromAnotherFolderIsRefused) {
  Make("a");
  const fs::path b = Make("b");
  fs::copy_file(root_ / "a" / "dense.t2dd", b / "dense.t2dd", fs::copy_options::overwrite_existing);
  ExpectRefused(Verify(b), (b / "dense.t2dd").string() + ": checksum differs");
}

TEST_F(SealedFolderTest, ListedSetMustBeExactlyTheExpectedOne) {
  const fs::path f = Make("a");
  // An unlisted file on disk.
  Write(f / "sub" / "extra.bin", "x");
  ExpectRefused(Verify(f), (f / "sub/extra.bin").string() + ": not listed");
  fs::remove(f / "sub" / "extra.bin");
  // A listed file the kind does not hold.
  auto fewer = VerifyFolder(f.string(), FolderManifest::BUNDLE, [](const FolderManifest&) {
    return std::vector<std::string>{"dense.t2dd"};
  });
  ExpectRefused(fewer, (f / "sub/rows.bin").string() + ": listed in the manifest but not part");
  // An expected file neither on disk nor listed.
  auto more = VerifyFolder(f.string(), FolderManifest::BUNDLE, [](const FolderManifest&) {
    return std::vector<std::string>{"dense.t2dd", "sub/rows.bin", "job.textproto"};
  });
  ExpectRefused(more, (f / "job.textproto").string() + ": missing");
  // The header callback's verdict is returned as it is.
  auto header = VerifyFolder(f.string(), FolderManifest::BUNDLE, [](const FolderManifest&) -> absl::StatusOr<std::vector<std::string>> {
    return absl::FailedPreconditionError("another run");
  });
  EXPECT_EQ(header.status().message(), "another run");
  // Sealing refuses a folder that holds more than it lists.
  Write(f / "stray", "x");
  FolderManifest m;
  m.set_kind(FolderManifest::BUNDLE);
  const auto s = SealFolder(f.string(), m, kFiles);
  EXPECT_NE(s.message().find((f / "stray").string()), std::string::npos) << s;
}

TEST_F(SealedFolderTest, ManifestEditsAreRefused) {
  const fs::path f = Make("a");
  const std::string good = Read(f / "MANIFEST");
  // Any byte of the manifest: its own checksum.
  std::string flipped = good;
  flipped[good.find("step: 7") + 6] = '8';
  Write(f / "MANIFEST", flipped);
  ExpectRefused(Verify(f), (f / "MANIFEST").string() + ": checksum differs");
  Write(f / "MANIFEST", good.substr(0, good.size() - 10));
  ExpectRefused(Verify(f), (f / "MANIFEST").string() + ": no checksum line");
  // Edits resealed with a correct self-checksum: each must still be caught.
  const std::vector<std::pair<std::string, std::string>> edits = {
      {"name: \"sub/rows.bin\"", "name: \"../a/sub/rows.bin\""},   // leaves the folder
      {"name: \"sub/rows.bin\"", "name: \"/tmp/rows.bin\""},       // absolute
      {"name: \"sub/rows.bin\"", "name: \"dense.t2dd\""},          // twice
      {"name: \"sub/rows.bin\"", "name: \"sub/other.bin\""},       // renamed
      {"sha256: \"", "sha256: \"0"},                              // not a digest
  };
  for (const auto& [from, to] : edits) {
    Write(f / "MANIFEST", good);
    EditManifest(f, from, to);
    EXPECT_FALSE(Verify(f).ok()) << "accepted the edit " << from << " -> " << to;
  }
  Write(f / "MANIFEST", good);
  ASSERT_TRUE(Verify(f).ok());
}

TEST_F(SealedFolderTest, VersionOneFolderIsRefusedNamingIt) {
  const fs::path f = Make("a");
  Write(f / "MANIFEST", "format_version: 1\nstep: 7\nfiles { name: \"dense.t2dd\" bytes: 14 crc32: 558161692 }\n");
  auto v = Verify(f);
  ExpectRefused(v, f.string() + ": a version 1 bundle");
  EXPECT_EQ(v.status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace t2d
