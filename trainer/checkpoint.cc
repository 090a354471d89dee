#include "trainer/checkpoint.h"

#include <glog/logging.h>
#include <google/protobuf/text_format.h>
#include <google/protobuf/util/message_differencer.h>

#include <algorithm>
#include <filesystem>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "common/checksum.h"
#include "common/file_util.h"
#include "common/sealed_folder.h"
#include "embedding/shard_file.h"

namespace t2d::trainer {
namespace {

namespace fs = std::filesystem;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;

std::string FinalName(int64_t step) { return absl::StrFormat("ckpt-%012d", step); }

// Checkpoint folders in `dir` (by name; complete or not), newest first.
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

// Sets every unset singular field, recursively, to its default. The job protos have no oneofs
// and no recursive messages.
void FillDefaults(Message* m) {
  const auto* d = m->GetDescriptor();
  const auto* r = m->GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (f->is_repeated()) {
      if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
        for (int j = 0; j < r->FieldSize(*m, f); ++j) FillDefaults(r->MutableRepeatedMessage(m, f, j));
      }
      continue;
    }
    if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      FillDefaults(r->MutableMessage(m, f));
      continue;
    }
    if (r->HasField(*m, f)) continue;
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32: r->SetInt32(m, f, f->default_value_int32()); break;
      case FieldDescriptor::CPPTYPE_INT64: r->SetInt64(m, f, f->default_value_int64()); break;
      case FieldDescriptor::CPPTYPE_UINT32: r->SetUInt32(m, f, f->default_value_uint32()); break;
      case FieldDescriptor::CPPTYPE_UINT64: r->SetUInt64(m, f, f->default_value_uint64()); break;
      case FieldDescriptor::CPPTYPE_FLOAT: r->SetFloat(m, f, f->default_value_float()); break;
      case FieldDescriptor::CPPTYPE_DOUBLE: r->SetDouble(m, f, f->default_value_double()); break;
      case FieldDescriptor::CPPTYPE_BOOL: r->SetBool(m, f, f->default_value_bool()); break;
      case FieldDescriptor::CPPTYPE_ENUM: r->SetEnumValue(m, f, f->default_value_enum()->number()); break;
      case FieldDescriptor::CPPTYPE_STRING: r->SetString(m, f, f->default_value_string()); break;
      case FieldDescriptor::CPPTYPE_MESSAGE: break;
    }
  }
}

constexpr char kJobFile[] = "job.textproto";

// Whether the checkpoint in `folder` belongs to `job`'s run although its recorded identity
// differs: its job.textproto (verified by the time this is asked) defines the same run under
// today's schema. That is a checkpoint written by an earlier version of t2diff, whose schema
// lacked fields added since (they read as their defaults) or counted fields that no longer
// define a run (the serving settings).
bool SameRunByConfig(const std::string& folder, const config::JobConfig& job) {
  auto text = ReadFileToString((fs::path(folder) / kJobFile).string());
  config::JobConfig theirs;
  if (!text.ok() || !google::protobuf::TextFormat::ParseFromString(*text, &theirs)) return false;
  return google::protobuf::util::MessageDifferencer::Equals(RunDefiningConfig(theirs), RunDefiningConfig(job));
}

// Why the run of the checkpoint in `folder` is not `job`'s: the run-defining fields that differ,
// from the job.textproto it holds (verified by the time this is asked).
std::string RunDifference(const std::string& folder, const config::JobConfig& job) {
  auto text = ReadFileToString((fs::path(folder) / kJobFile).string());
  config::JobConfig theirs;
  if (!text.ok() || !google::protobuf::TextFormat::ParseFromString(*text, &theirs)) {
    return absl::StrCat("its ", kJobFile, " cannot be read, so the fields that differ are unknown");
  }
  std::string report;
  google::protobuf::util::MessageDifferencer diff;
  diff.ReportDifferencesToString(&report);
  if (diff.Compare(RunDefiningConfig(theirs), RunDefiningConfig(job))) {
    return "the fields that define a run are equal, but the checkpoint's run identity differs";
  }
  // "modified: a.b: x -> y" per line; one line of "checkpoint -> this job" entries.
  report = absl::StrReplaceAll(absl::StripSuffix(report, "\n"), {{"\n", "; "}});
  return absl::StrCat("checkpoint -> this job: ", report);
}

}  // namespace

config::JobConfig RunDefiningConfig(const config::JobConfig& job) {
  config::JobConfig c = job;
  FillDefaults(&c);
  // What may change between a run and its --resume (docs/export.md, "Run identity").
  c.clear_cluster();
  c.clear_eval();
  c.clear_checkpoint();
  c.clear_serving();
  for (auto& table : *c.mutable_tables()) table.clear_init_from();
  auto* t = c.mutable_training();
  t->clear_epochs();
  t->clear_max_steps();
  t->clear_output_dir();
  t->clear_log_every_steps();
  t->clear_replica_check_steps();
  t->clear_nonfinite_policy();
  auto* d = c.mutable_data();
  d->clear_dataset_dir();
  d->clear_input_paths();
  d->clear_item_path();
  d->clear_user_path();
  auto* m = c.mutable_model();
  m->clear_inference_samples();
  m->clear_inference_reverse_steps();
  m->clear_inference_token();
  m->clear_reverse_update();
  m->clear_guidance_weight();
  m->clear_full_softmax_max_items();
  return c;
}

std::string RunId(const config::JobConfig& job) {
  std::string text;
  google::protobuf::TextFormat::PrintToString(RunDefiningConfig(job), &text);
  return Sha256Hex(text.data(), text.size());
}

std::vector<std::string> CheckpointFiles(const config::JobConfig& job, int num_workers, int num_shards) {
  std::vector<std::string> files = {"dense.t2dd", "evals.textproto", kJobFile};
  for (int w = 0; w < num_workers; ++w) files.push_back(absl::StrCat("worker-", w, ".textproto"));
  for (const auto& table : job.tables()) {
    for (int i = 0; i < num_shards; ++i) files.push_back("sparse/" + embedding::ShardFileName(table.name(), i, num_shards));
  }
  std::sort(files.begin(), files.end());
  return files;
}

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

absl::StatusOr<FolderManifest> VerifyCheckpoint(const std::string& folder, const config::JobConfig& job) {
  const std::string run_id = RunId(job);
  return VerifyFolder(folder, FolderManifest::CHECKPOINT, [&](const FolderManifest& m) -> absl::StatusOr<std::vector<std::string>> {
    const fs::path path = fs::path(folder).lexically_normal();
    const std::string name = (path.has_filename() ? path : path.parent_path()).filename().string();
    if (name != FinalName(m.step())) {
      return absl::DataLossError(absl::StrCat(folder, ": the manifest says step ", m.step(), ", the folder's name another"));
    }
    if (m.num_workers() < 1 || m.num_servers() < 1) {
      return absl::DataLossError(absl::StrCat(folder, ": the manifest says ", m.num_workers(), " workers and ",
                                              m.num_servers(), " servers"));
    }
    if (m.run_id() != run_id && !SameRunByConfig(folder, job)) {
      return absl::FailedPreconditionError(absl::StrCat(
          folder, ": a checkpoint of another run (", RunDifference(folder, job),
          "); resume it with the settings it was written with, or start this run with another checkpoint.dir"));
    }
    return CheckpointFiles(job, m.num_workers(), m.num_servers());
  });
}

absl::StatusOr<std::string> Commit(const std::string& dir, int64_t step, FolderManifest manifest,
                                   const config::JobConfig& job) {
  const fs::path staging = StagingDir(dir, step);
  std::error_code ec;
  manifest.set_kind(FolderManifest::CHECKPOINT);
  manifest.set_step(step);
  manifest.set_run_id(RunId(job));
  const auto files = CheckpointFiles(job, manifest.num_workers(), manifest.num_servers());
  if (auto s = SealFolder(staging.string(), manifest, files); !s.ok()) return s;
  const fs::path final_path = fs::path(dir) / FinalName(step);
  fs::remove_all(final_path, ec);
  fs::rename(staging, final_path, ec);
  if (ec) return absl::InternalError(absl::StrCat(final_path.string(), ": rename failed: ", ec.message()));
  SyncDir(dir);
  // Retention counts only checkpoints that verify as this run's (the new one was sealed from
  // the files just written), so the newest verified one is never deleted, and a damaged or
  // foreign folder is neither counted nor deleted. A checkpoint is renamed before it is
  // deleted, so that a crash in between leaves a "deleting-" folder (no reader takes one; the
  // next commit removes it) rather than a half-deleted checkpoint.
  int kept = 0;
  std::vector<fs::path> doomed;
  for (const auto& [s, path] : ListCheckpoints(dir)) {
    if (path != final_path) {
      auto v = VerifyCheckpoint(path.string(), job);
      if (!v.ok()) {
        LOG(WARNING) << "retention leaves " << path.string() << " in place: " << v.status().message();
        continue;
      }
    }
    if (++kept > std::max(job.checkpoint().keep_last(), 1)) {
      const fs::path to = fs::path(dir) / ("deleting-" + path.filename().string());
      fs::rename(path, to, ec);
    }
  }
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().filename().string().rfind("deleting-ckpt-", 0) == 0) doomed.push_back(e.path());
  }
  for (const auto& path : doomed) fs::remove_all(path, ec);
  return final_path.string();
}

absl::StatusOr<VerifiedCheckpoint> FindLatestCheckpoint(const std::string& dir, const config::JobConfig& job) {
  const auto all = ListCheckpoints(dir);
  if (all.empty()) return absl::NotFoundError(absl::StrCat(dir, ": no checkpoint"));
  std::vector<std::string> reasons;
  for (const auto& [step, path] : all) {
    auto m = VerifyCheckpoint(path.string(), job);
    if (m.ok()) return VerifiedCheckpoint{path.string(), *std::move(m)};
    if (!absl::IsDataLoss(m.status())) return m.status();
    LOG(WARNING) << "skipping damaged checkpoint: " << m.status().message();
    reasons.emplace_back(m.status().message());
  }
  return absl::DataLossError(absl::StrCat(dir, ": holds ", all.size(), " checkpoint(s) and none verifies: ",
                                          absl::StrJoin(reasons, "; ")));
}

absl::Status CheckNoCheckpoints(const std::string& dir) {
  const auto all = ListCheckpoints(dir);
  if (all.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      dir, " already holds ", all.size(), " checkpoint(s) (newest: ", all.front().second.filename().string(),
      "); continue that run with --resume, or give this run another checkpoint.dir (nothing was deleted)"));
}

}  // namespace t2d::trainer
