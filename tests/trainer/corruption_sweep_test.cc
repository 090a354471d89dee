// The corruption sweep (issue 12, "a file that cannot lie"): a small real job writes two
// checkpoints and two serving bundles in process, then 1,000 seeded random corruptions are
// applied, one at a time, to the newest checkpoint, to a bundle, to a sample file (.t2ds) and to
// an embedding shard file. Every one must be refused with the damaged file or folder named, or,
// for the checkpoint, loading must fall back to the previous verified one. Zero accepted, zero
// crashes. The counts per kind are printed.
//
// Manifest edits are written back with a correct closing checksum line (as a tool rewriting
// manifests would), so that it is the manifest's content that must be caught, not its checksum;
// the exception is a bundle's step, which no file corroborates: there only the manifest's own
// checksum guards it, so that edit is left raw.
#include <glog/logging.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "data/sample_file.h"
#include "embedding/embedding_table.h"
#include "embedding/shard_file.h"
#include "serving/bundle.h"
#include "tests/trainer/inproc_job.h"
#include "trainer/checkpoint.h"

namespace t2d::trainer {
namespace {

namespace fs = std::filesystem;
using test_util::ReadManifest;
using test_util::WriteManifest;

constexpr int kCorruptions = 1000;
constexpr uint64_t kSeed = 20251202;

enum Target { kCheckpoint, kBundle, kSampleFile, kShardFile };
const char* const kTargetNames[] = {"checkpoint", "bundle", ".t2ds", ".t2demb"};

// What happened to each corruption of one kind and target.
struct Tally {
  int refused = 0;      // refused, naming the damaged file or folder
  int fell_back = 0;    // (checkpoints) the previous verified checkpoint was loaded instead
  int accepted = 0;     // loaded as if intact: a failure
  int unnamed = 0;      // refused without naming the file or folder: a failure
};

class CorruptionSweepTest : public test_util::InProcJobTest {
 protected:
  // Regular files under `folder`, relative, sorted.
  static std::vector<std::string> Files(const std::string& folder) {
    std::vector<std::string> out;
    for (const auto& e : fs::recursive_directory_iterator(folder)) {
      if (e.is_regular_file()) out.push_back(fs::relative(e.path(), folder).generic_string());
    }
    std::sort(out.begin(), out.end());
    return out;
  }
  static void Restore(const std::string& pristine, const std::string& folder) {
    fs::remove_all(folder);
    fs::copy(pristine, folder, fs::copy_options::recursive);
  }

  std::mt19937_64 rng_{kSeed};
  size_t Pick(size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng_); }

  // A file of `folder` (MANIFEST included) with at least one byte.
  std::string PickNonEmpty(const std::string& folder) {
    const auto files = Files(folder);
    for (;;) {
      const std::string& f = files[Pick(files.size())];
      if (fs::file_size(fs::path(folder) / f) > 0) return f;
    }
  }
  void Truncate(const std::string& path) { fs::resize_file(path, Pick(fs::file_size(path))); }
  void FlipBit(const std::string& path) {
    std::string bytes = ReadAll(path);
    const size_t bit = Pick(bytes.size() * 8);
    bytes[bit / 8] = static_cast<char>(bytes[bit / 8] ^ (1 << (bit % 8)));
    WriteAll(path, bytes);
  }

  // Applies corruption `kind` to the sealed folder `folder`; `other` is a folder of the same kind
  // (another checkpoint or bundle) to swap files from. Returns false if the kind does not apply
  // (then nothing was changed).
  bool CorruptFolder(const std::string& kind, const std::string& folder, const std::string& other, bool bundle) {
    if (kind == "truncate") {
      Truncate(folder + "/" + PickNonEmpty(folder));
    } else if (kind == "bit-flip") {
      FlipBit(folder + "/" + PickNonEmpty(folder));
    } else if (kind == "delete-file") {
      const auto files = Files(folder);
      fs::remove(fs::path(folder) / files[Pick(files.size())]);
    } else if (kind == "extra-file") {
      WriteAll(folder + (!bundle && Pick(2) ? "/sparse/" : "/") + "stray.bin", "x");
    } else if (kind == "swap-from-other") {
      // The same file of the other folder, where the two differ.
      std::vector<std::string> differ;
      for (const auto& f : Files(folder)) {
        if (f != "MANIFEST" && fs::exists(fs::path(other) / f) && ReadAll(folder + "/" + f) != ReadAll(other + "/" + f)) {
          differ.push_back(f);
        }
      }
      if (differ.empty()) return false;
      const std::string& f = differ[Pick(differ.size())];
      fs::copy_file(fs::path(other) / f, fs::path(folder) / f, fs::copy_options::overwrite_existing);
    } else if (kind == "swap-manifest") {
      fs::copy_file(fs::path(other) / "MANIFEST", fs::path(folder) / "MANIFEST", fs::copy_options::overwrite_existing);
    } else {
      FolderManifest m = ReadManifest(folder);
      const int i = static_cast<int>(Pick(static_cast<size_t>(m.files_size())));
      if (kind == "manifest-drop-entry") {
        m.mutable_files()->DeleteSubrange(i, 1);
      } else if (kind == "manifest-duplicate-entry") {
        *m.add_files() = m.files(i);
      } else if (kind == "manifest-rename-entry") {
        m.mutable_files(i)->set_name(m.files(i).name() + (Pick(2) ? ".old" : "x"));
      } else if (kind == "manifest-edit-checksum") {
        std::string& sha = *m.mutable_files(i)->mutable_sha256();
        const size_t at = Pick(sha.size());
        sha[at] = sha[at] == '0' ? '1' : '0';
      } else if (kind == "manifest-edit-step") {
        if (bundle) {  // raw: see the file comment
          std::string text = ReadAll(folder + "/MANIFEST");
          const size_t at = text.find("step: ");
          text.insert(at + 6, "1");
          WriteAll(folder + "/MANIFEST", text);
          return true;
        }
        m.set_step(m.step() + (Pick(2) ? 1 : -1));
      } else if (kind == "manifest-header-only") {
        m.clear_files();
      } else if (kind == "manifest-dotdot-entry") {
        // An entry that leaves the folder, with the size and digest of the file it points at.
        const std::string name = m.files(i).name();
        const FolderManifest theirs = ReadManifest(other);
        for (const auto& f : theirs.files()) {
          if (f.name() == name) *m.mutable_files(i) = f;
        }
        m.mutable_files(i)->set_name("../" + fs::path(other).filename().string() + "/" + name);
      } else {
        ADD_FAILURE() << "unknown kind " << kind;
      }
      WriteManifest(folder, m);
    }
    return true;
  }
};

TEST_F(CorruptionSweepTest, ThousandCorruptionsAreRefusedOrFallBack) {
  const std::string ckpt_dir = dir_ + "/ckpt";
  const config::JobConfig job = Job({"checkpoint.dir=" + ckpt_dir, "checkpoint.every_steps=2", "training.max_steps=4"});
  PrepareData(job);
  ASSERT_TRUE(Run(job, false).ok());
  const std::string older = ckpt_dir + "/ckpt-000000000002", newest = ckpt_dir + "/ckpt-000000000004";
  ASSERT_TRUE(fs::exists(older) && fs::exists(newest));
  // Two bundles: of this run (step 4) and of another run of 2 steps.
  const std::string bundle = dir_ + "/bundle", other_bundle = dir_ + "/bundle_other";
  {
    auto t = NewTrainer(job, false);
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_TRUE((*t)->LoadLatestModel().ok());
    ASSERT_TRUE((*t)->Export(bundle).ok());
    const config::JobConfig other = Job({"checkpoint.dir=" + dir_ + "/ckpt_other", "training.max_steps=2"});
    ASSERT_TRUE(Run(other, false).ok());
    auto u = NewTrainer(other, false);
    ASSERT_TRUE(u.ok()) << u.status();
    ASSERT_TRUE((*u)->LoadLatestModel().ok());
    ASSERT_TRUE((*u)->Export(other_bundle).ok());
  }
  ASSERT_TRUE(serving::Bundle::Load(bundle).ok());
  const std::string pristine_ckpt = dir_ + "/pristine_ckpt", pristine_bundle = dir_ + "/pristine_bundle";
  fs::copy(newest, pristine_ckpt, fs::copy_options::recursive);
  fs::copy(bundle, pristine_bundle, fs::copy_options::recursive);
  // A sample file and a shard file, each corrupted as a copy at the same place.
  std::vector<std::string> sample_files;
  for (const auto& e : fs::directory_iterator(dir_ + "/data")) {
    if (e.path().extension() == ".t2ds") sample_files.push_back(e.path().string());
  }
  std::sort(sample_files.begin(), sample_files.end());
  ASSERT_FALSE(sample_files.empty());
  const std::string shard_name = embedding::ShardFileName("item_id", 0, 1);
  const std::string shard_src = pristine_ckpt + "/sparse/" + shard_name;
  const std::string scratch = dir_ + "/scratch";
  fs::create_directories(scratch);

  auto loader = NewTrainer(job, false);
  ASSERT_TRUE(loader.ok()) << loader.status();
  ASSERT_TRUE((*loader)->LoadLatestModel().ok());
  ASSERT_EQ((*loader)->step(), 4);

  const std::vector<std::string> folder_kinds = {
      "truncate", "bit-flip", "delete-file", "extra-file", "swap-from-other", "swap-manifest",
      "manifest-drop-entry", "manifest-duplicate-entry", "manifest-rename-entry", "manifest-edit-checksum",
      "manifest-edit-step", "manifest-header-only", "manifest-dotdot-entry"};
  const std::vector<std::string> file_kinds = {"truncate", "bit-flip"};
  std::map<std::pair<std::string, std::string>, Tally> tally;  // (target, kind)
  std::vector<std::string> failures;
  const int saved_level = FLAGS_minloglevel;
  FLAGS_minloglevel = google::GLOG_ERROR;  // a warning per skipped checkpoint would drown the output
  const auto start = std::chrono::steady_clock::now();
  for (int n = 0; n < kCorruptions; ++n) {
    // About 55% checkpoints, 25% bundles, 10% each sample and shard files.
    const size_t r = Pick(20);
    const Target target = r < 11 ? kCheckpoint : r < 16 ? kBundle : r < 18 ? kSampleFile : kShardFile;
    const auto& kinds = target <= kBundle ? folder_kinds : file_kinds;
    const std::string kind = kinds[Pick(kinds.size())];
    Tally& t = tally[{kTargetNames[target], kind}];
    absl::Status refused;  // the refusal; OK when the corrupted thing was accepted
    std::string must_name;
    bool fell_back = false;
    if (target == kCheckpoint) {
      Restore(pristine_ckpt, newest);
      if (!CorruptFolder(kind, newest, older, false)) {
        --n;
        continue;
      }
      must_name = newest;
      refused = VerifyCheckpoint(newest, job).status();
      // The trainer's own path: the newest that verifies, or an error.
      const absl::Status load = (*loader)->LoadLatestModel();
      if (load.ok() && (*loader)->step() == 2) {
        fell_back = true;
      } else if (load.ok()) {
        refused = absl::OkStatus();  // step 4 loaded: accepted
      } else if (refused.ok()) {
        refused = load;
      }
    } else if (target == kBundle) {
      Restore(pristine_bundle, bundle);
      if (!CorruptFolder(kind, bundle, other_bundle, true)) {
        --n;
        continue;
      }
      must_name = bundle;
      refused = serving::Bundle::Load(bundle).status();
    } else {
      const std::string src = target == kSampleFile ? sample_files[Pick(sample_files.size())] : shard_src;
      const std::string path = scratch + "/" + fs::path(src).filename().string();
      fs::copy_file(src, path, fs::copy_options::overwrite_existing);
      if (kind == "truncate") {
        Truncate(path);
      } else {
        FlipBit(path);
      }
      must_name = path;
      if (target == kSampleFile) {
        refused = [&]() -> absl::Status {
          auto reader = data::SampleFileReader::Open(path);
          if (!reader.ok()) return reader.status();
          if ((*reader)->header().kind() == data::SampleFileHeader::ITEMS) return (*reader)->ReadAllItems().status();
          data::DecodedChunk chunk;
          for (int i = 0; i < (*reader)->num_chunks(); ++i) {
            if (auto s = (*reader)->ReadChunk(i, &chunk); !s.ok()) return s;
          }
          return absl::OkStatus();
        }();
      } else {
        auto table = embedding::EmbeddingTable::Create(job.tables(0));
        ASSERT_TRUE(table.ok());
        refused = embedding::LoadShardFiles({path}, 0, 1, table->get());
      }
    }
    const std::string what = absl::StrCat("#", n, " ", kTargetNames[target], " ", kind);
    if (refused.ok()) {
      ++t.accepted;
      failures.push_back(absl::StrCat(what, ": accepted"));
    } else if (refused.message().find(must_name) == std::string::npos) {
      ++t.unnamed;
      failures.push_back(absl::StrCat(what, ": refused without naming ", must_name, ": ", refused.ToString()));
    } else if (fell_back) {
      ++t.fell_back;
    } else {
      ++t.refused;
    }
  }
  FLAGS_minloglevel = saved_level;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  int total = 0, bad = 0;
  std::printf("%-10s %-26s %8s %9s %8s %7s\n", "target", "corruption", "refused", "fell back", "accepted", "unnamed");
  for (const auto& [key, t] : tally) {
    std::printf("%-10s %-26s %8d %9d %8d %7d\n", key.first.c_str(), key.second.c_str(), t.refused, t.fell_back,
                t.accepted, t.unnamed);
    total += t.refused + t.fell_back + t.accepted + t.unnamed;
    bad += t.accepted + t.unnamed;
  }
  std::printf("%d corruptions (seed %llu) in %.1f s: %d refused or fell back, %d accepted or unnamed\n", total,
              static_cast<unsigned long long>(kSeed), seconds, total - bad, bad);
  EXPECT_EQ(total, kCorruptions);
  EXPECT_EQ(bad, 0);
  for (size_t i = 0; i < failures.size() && i < 20; ++i) ADD_FAILURE() << failures[i];
}

}  // namespace
}  // namespace t2d::trainer
