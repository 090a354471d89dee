#include "trainer/checkpoint.h"

#include <fcntl.h>
#include <glog/logging.h>
#include <google/protobuf/text_format.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/checksum.h"
#include "common/file_util.h"

namespace t2d::trainer {
namespace {

namespace fs = std::filesystem;
constexpr uint32_t kManifestVersion = 1;
constexpr char kManifest[] = "MANIFEST";

std::string FinalName(int64_t step) { return absl::StrFormat("ckpt-%012d", step); }

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

void SyncDir(const fs::path& p) {
  const int fd = ::open(p.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// Complete checkpoints in `dir`, newest first.
std::vector<std::pair<int64_t, fs::path>> ListCheckpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    int64_t step = 0;
    if (name.rfind("ckpt-", 0) == 0 && absl::SimpleAtoi(name.substr(5), &step)) out.emplace_back(step, e.path());
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  return out;
}

}  // namespace

std::string StagingDir(const std::string& dir, int64_t step) {
  return (fs::path(dir) / absl::StrFormat("tmp-ckpt-%012d", step)).string();
}

absl::Status PrepareStaging(const std::string& dir, int64_t step) {
  std::error_code ec;
  const std::string staging = StagingDir(dir, step);
  fs::remove_all(staging, ec);
  fs::create_directories(staging, ec);
  if (ec) return absl::InternalError(absl::StrCat(staging, ": cannot create: ", ec.message()));
  return absl::OkStatus();
}

absl::Status SealFolder(const std::string& folder, CheckpointManifest manifest) {
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
  SyncDir(root);
  return absl::OkStatus();
}

absl::StatusOr<std::string> Commit(const std::string& dir, int64_t step, CheckpointManifest manifest, int keep_last) {
  const fs::path staging = StagingDir(dir, step);
  std::error_code ec;
  manifest.set_step(step);
  if (auto s = SealFolder(staging.string(), manifest); !s.ok()) return s;
  const fs::path final_path = fs::path(dir) / FinalName(step);
  fs::remove_all(final_path, ec);
  fs::rename(staging, final_path, ec);
  if (ec) return absl::InternalError(absl::StrCat(final_path.string(), ": rename failed: ", ec.message()));
  SyncDir(dir);
  const auto all = ListCheckpoints(dir);
  for (size_t i = static_cast<size_t>(std::max(keep_last, 1)); i < all.size(); ++i) fs::remove_all(all[i].second, ec);
  return final_path.string();
}

absl::StatusOr<CheckpointManifest> VerifyCheckpoint(const std::string& folder) {
  const fs::path manifest_path = fs::path(folder) / kManifest;
  auto text = ReadFileToString(manifest_path.string());
  if (!text.ok()) return absl::DataLossError(absl::StrCat(manifest_path.string(), ": missing (incomplete checkpoint)"));
  CheckpointManifest m;
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

absl::StatusOr<std::string> FindLatestCheckpoint(const std::string& dir) {
  for (const auto& [step, path] : ListCheckpoints(dir)) {
    auto m = VerifyCheckpoint(path.string());
    if (m.ok()) return path.string();
    LOG(WARNING) << "skipping damaged checkpoint: " << m.status().message();
  }
  return absl::NotFoundError(absl::StrCat(dir, ": no complete checkpoint"));
}

}  // namespace t2d::trainer
