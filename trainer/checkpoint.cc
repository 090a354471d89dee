#include "trainer/checkpoint.h"

#include <glog/logging.h>

#include <algorithm>
#include <filesystem>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/sealed_folder.h"

namespace t2d::trainer {
namespace {

namespace fs = std::filesystem;

std::string FinalName(int64_t step) { return absl::StrFormat("ckpt-%012d", step); }

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

absl::StatusOr<std::string> Commit(const std::string& dir, int64_t step, FolderManifest manifest, int keep_last) {
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

absl::StatusOr<std::string> FindLatestCheckpoint(const std::string& dir) {
  for (const auto& [step, path] : ListCheckpoints(dir)) {
    auto m = VerifyFolder(path.string());
    if (m.ok()) return path.string();
    LOG(WARNING) << "skipping damaged checkpoint: " << m.status().message();
  }
  return absl::NotFoundError(absl::StrCat(dir, ": no complete checkpoint"));
}

}  // namespace t2d::trainer
