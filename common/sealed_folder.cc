#include "common/sealed_folder.h"

#include <fcntl.h>
#include <google/protobuf/text_format.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/checksum.h"
#include "common/file_util.h"

namespace t2d {
namespace {

namespace fs = std::filesystem;
constexpr uint32_t kManifestVersion = 1;
constexpr char kManifest[] = "MANIFEST";

absl::StatusOr<std::pair<int64_t, uint32_t>> SizeAndCrc(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return absl::DataLossError(absl::StrCat(p.string(), ": missing or unreadable"));
  std::vector<char> buf(1 << 20);
  uint32_t crc = 0;
  int64_t bytes = 0;
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto n = static_cast<size_t>(in.gcount());
    crc = Crc32(buf.data(), n, crc);
    bytes += static_cast<int64_t>(n);
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat(p.string(), ": read error"));
  return std::make_pair(bytes, crc);
}

}  // namespace

void SyncDir(const std::string& folder) {
  const int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

absl::Status SealFolder(const std::string& folder, FolderManifest manifest) {
  const fs::path root = folder;
  std::error_code ec;
  std::vector<fs::path> files;
  for (const auto& e : fs::recursive_directory_iterator(root, ec)) {
    if (e.is_regular_file() && e.path().filename() != kManifest) files.push_back(e.path());
  }
  if (ec) return absl::InternalError(absl::StrCat(folder, ": cannot list: ", ec.message()));
  std::sort(files.begin(), files.end());
  manifest.set_format_version(kManifestVersion);
  manifest.clear_files();
  for (const auto& f : files) {
    auto sc = SizeAndCrc(f);
    if (!sc.ok()) return sc.status();
    auto* entry = manifest.add_files();
    entry->set_name(fs::relative(f, root).string());
    entry->set_bytes(sc->first);
    entry->set_crc32(sc->second);
  }
  std::string text;
  google::protobuf::TextFormat::PrintToString(manifest, &text);
  if (auto s = WriteFileAtomic((root / kManifest).string(), text); !s.ok()) return s;
  SyncDir(root.string());
  return absl::OkStatus();
}

absl::StatusOr<FolderManifest> VerifyFolder(const std::string& folder) {
  const fs::path manifest_path = fs::path(folder) / kManifest;
  auto text = ReadFileToString(manifest_path.string());
  if (!text.ok()) return absl::DataLossError(absl::StrCat(manifest_path.string(), ": missing (incomplete folder)"));
  FolderManifest m;
  if (!google::protobuf::TextFormat::ParseFromString(*text, &m)) {
    return absl::DataLossError(absl::StrCat(manifest_path.string(), ": does not parse"));
  }
  if (m.format_version() != kManifestVersion) {
    return absl::FailedPreconditionError(absl::StrCat(manifest_path.string(), ": unsupported version ", m.format_version()));
  }
  for (const auto& f : m.files()) {
    const fs::path p = fs::path(folder) / f.name();
    auto sc = SizeAndCrc(p);
    if (!sc.ok()) return sc.status();
    if (sc->first != f.bytes()) {
      return absl::DataLossError(absl::StrCat(p.string(), ": size ", sc->first, " differs from the manifest's ", f.bytes()));
    }
    if (sc->second != f.crc32()) return absl::DataLossError(absl::StrCat(p.string(), ": checksum differs from the manifest"));
  }
  return m;
}

}  // namespace t2d
