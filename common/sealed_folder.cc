#include "common/sealed_folder.h"

#include <fcntl.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/checksum.h"
#include "common/file_util.h"

namespace t2d {
namespace {

namespace fs = std::filesystem;
constexpr uint32_t kManifestVersion = 2;
constexpr char kManifest[] = "MANIFEST";
// The manifest's last line: this prefix, the SHA-256 of every byte before the line, '\n'. A
// comment to the text-format parser, so the manifest stays plain protobuf text.
constexpr char kSelfSumPrefix[] = "# sha256: ";
constexpr size_t kHexDigits = 64;

// Keeps the first parse error, for the DataLoss message (the parser would log each to stderr).
class FirstParseError : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column, const std::string& message) override {
    if (error.empty()) error = absl::StrCat(" (", line + 1, ":", column + 1, ": ", message, ")");
  }
  std::string error;
};

std::string KindName(FolderManifest::Kind kind) { return absl::AsciiStrToLower(FolderManifest::Kind_Name(kind)); }

absl::StatusOr<std::pair<int64_t, std::string>> SizeAndSha256(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return absl::DataLossError(absl::StrCat(p.string(), ": missing or unreadable"));
  std::vector<char> buf(1 << 20);
  Sha256 sha;
  int64_t bytes = 0;
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto n = static_cast<size_t>(in.gcount());
    sha.Update(buf.data(), n);
    bytes += static_cast<int64_t>(n);
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat(p.string(), ": read error"));
  return std::make_pair(bytes, sha.HexDigest());
}

// Why `name` cannot be a file of a sealed folder, or "" when it can: it must stay inside the
// folder, so no absolute path and no empty, "." or ".." component.
std::string NameProblem(const std::string& name) {
  if (name.empty()) return "empty name";
  if (name[0] == '/') return "absolute path";
  for (absl::string_view part : absl::StrSplit(name, '/')) {
    if (part.empty() || part == "." || part == "..") return "path leaves the folder or is not canonical";
  }
  if (name == kManifest) return "the manifest itself";
  return "";
}

bool IsHex64(const std::string& s) {
  return s.size() == kHexDigits && std::all_of(s.begin(), s.end(), [](char c) { return absl::ascii_isxdigit(c) && !absl::ascii_isupper(c); });
}

// Every file under `root` but the MANIFEST, as '/'-separated relative paths (anything that is
// not a folder counts as a file: a link or a fifo is as foreign to a sealed folder as a file).
absl::StatusOr<std::set<std::string>> FilesOnDisk(const fs::path& root) {
  std::set<std::string> out;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_directory(ec) && !it->is_symlink(ec)) continue;
    const std::string name = fs::relative(it->path(), root, ec).generic_string();
    if (name != kManifest) out.insert(name);
  }
  if (ec) return absl::DataLossError(absl::StrCat(root.string(), ": cannot list: ", ec.message()));
  return out;
}

}  // namespace

void SyncDir(const std::string& folder) {
  const int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

absl::Status SealFolder(const std::string& folder, FolderManifest manifest, const std::vector<std::string>& files) {
  const fs::path root = folder;
  if (manifest.kind() == FolderManifest::KIND_UNKNOWN) {
    return absl::InvalidArgumentError(absl::StrCat(folder, ": sealing a folder of no kind"));
  }
  std::set<std::string> listed;
  for (const std::string& name : files) {
    if (const std::string why = NameProblem(name); !why.empty() || !listed.insert(name).second) {
      return absl::InvalidArgumentError(absl::StrCat(folder, ": cannot list \"", name, "\": ", why.empty() ? "twice" : why));
    }
  }
  auto on_disk = FilesOnDisk(root);
  if (!on_disk.ok()) return absl::InternalError(on_disk.status().message());
  for (const std::string& name : *on_disk) {
    if (listed.count(name) == 0) {
      return absl::InternalError(absl::StrCat((root / name).string(), ": not part of a ", KindName(manifest.kind())));
    }
  }
  manifest.set_format_version(kManifestVersion);
  manifest.clear_files();
  for (const std::string& name : listed) {  // sorted
    auto sc = SizeAndSha256(root / name);
    if (!sc.ok()) return sc.status();
    auto* entry = manifest.add_files();
    entry->set_name(name);
    entry->set_bytes(sc->first);
    entry->set_sha256(sc->second);
  }
  std::string text;
  if (!google::protobuf::TextFormat::PrintToString(manifest, &text)) {
    return absl::InternalError(absl::StrCat(folder, ": cannot print the manifest"));
  }
  absl::StrAppend(&text, kSelfSumPrefix, Sha256Hex(text.data(), text.size()), "\n");
  if (auto s = WriteFileAtomic((root / kManifest).string(), text); !s.ok()) return s;
  SyncDir(root.string());
  return absl::OkStatus();
}

absl::StatusOr<FolderManifest> VerifyFolder(const std::string& folder, FolderManifest::Kind kind,
                                            const ExpectedFiles& expected_files) {
  const fs::path root = folder;
  const std::string manifest_path = (root / kManifest).string();
  auto text = ReadFileToString(manifest_path);
  if (!text.ok()) return absl::DataLossError(absl::StrCat(manifest_path, ": missing (incomplete folder)"));
  FolderManifest m;
  FirstParseError parse_error;
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&parse_error);
  const bool parsed = parser.ParseFromString(*text, &m);
  // The manifest's own checksum first, so that any edit of it is damage (and the folder is
  // skipped like any damaged one) rather than a header to act on.
  const size_t line = text->rfind(kSelfSumPrefix);
  const size_t body = line == std::string::npos ? 0 : line;
  const bool has_sum = line != std::string::npos && (line == 0 || (*text)[line - 1] == '\n') &&
                       text->size() == line + sizeof(kSelfSumPrefix) - 1 + kHexDigits + 1 && text->back() == '\n';
  if (!has_sum) {
    if (parsed && m.format_version() == 1) {
      return absl::DataLossError(absl::StrCat(folder, ": a version 1 ", KindName(kind), " (its manifest records CRC-32s, "
                                              "which cannot tell a file swapped in from another folder): not trusted; "
                                              "see docs/formats.md, \"Sealed folders\""));
    }
    return absl::DataLossError(absl::StrCat(manifest_path, ": no checksum line at its end (truncated or edited)"));
  }
  if (Sha256Hex(text->data(), body) != text->substr(line + sizeof(kSelfSumPrefix) - 1, kHexDigits)) {
    return absl::DataLossError(absl::StrCat(manifest_path, ": checksum differs (the manifest was edited or damaged)"));
  }
  if (!parsed) return absl::DataLossError(absl::StrCat(manifest_path, ": does not parse", parse_error.error));
  if (m.format_version() > kManifestVersion) {
    return absl::FailedPreconditionError(absl::StrCat(manifest_path, ": format version ", m.format_version(),
                                                      " is newer than this t2diff reads (", kManifestVersion, ")"));
  }
  if (m.format_version() != kManifestVersion) {
    return absl::DataLossError(absl::StrCat(manifest_path, ": format version ", m.format_version(), " with a checksum line"));
  }
  if (m.kind() != kind) {
    return absl::FailedPreconditionError(absl::StrCat(folder, ": a ", KindName(m.kind()), " where a ", KindName(kind),
                                                      " is expected"));
  }
  std::set<std::string> listed;
  for (const auto& f : m.files()) {
    if (const std::string why = NameProblem(f.name()); !why.empty()) {
      return absl::DataLossError(absl::StrCat(manifest_path, ": entry \"", f.name(), "\": ", why));
    }
    if (!listed.insert(f.name()).second) {
      return absl::DataLossError(absl::StrCat(manifest_path, ": lists ", f.name(), " twice"));
    }
    if (!IsHex64(f.sha256()) || f.bytes() < 0) {
      return absl::DataLossError(absl::StrCat(manifest_path, ": entry ", f.name(), " has no valid size and SHA-256"));
    }
  }
  auto on_disk = FilesOnDisk(root);
  if (!on_disk.ok()) return on_disk.status();
  for (const std::string& name : *on_disk) {
    if (listed.count(name) == 0) return absl::DataLossError(absl::StrCat((root / name).string(), ": not listed in the manifest"));
  }
  for (const auto& f : m.files()) {
    const fs::path p = root / f.name();
    auto sc = SizeAndSha256(p);
    if (!sc.ok()) return sc.status();
    if (sc->first != f.bytes()) {
      return absl::DataLossError(absl::StrCat(p.string(), ": size ", sc->first, " differs from the manifest's ", f.bytes()));
    }
    if (sc->second != f.sha256()) return absl::DataLossError(absl::StrCat(p.string(), ": checksum differs from the manifest"));
  }
  auto expected = expected_files(m);
  if (!expected.ok()) return expected.status();
  const std::set<std::string> want(expected->begin(), expected->end());
  for (const std::string& name : want) {
    if (listed.count(name) == 0) {
      return absl::DataLossError(absl::StrCat((root / name).string(), ": missing, and missing from the manifest of this ", KindName(kind)));
    }
  }
  for (const std::string& name : listed) {
    if (want.count(name) == 0) {
      return absl::DataLossError(absl::StrCat((root / name).string(), ": listed in the manifest but not part of this ",
                                              KindName(kind), " (as its header describes it)"));
    }
  }
  return m;
}

}  // namespace t2d
