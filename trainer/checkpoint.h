#pragma once
// Checkpoint folders: a consistent cut of a training job written so that a reader never sees a
// partial one, and never takes one that is damaged or of another run.
//
// Layout under the job's checkpoint dir (contents: trainer/run_state.h, docs/export.md):
//   ckpt-000000001200/            a complete checkpoint of step 1200
//     MANIFEST                    FolderManifest (common/sealed_folder.h) of kind CHECKPOINT:
//                                 step, run identity, every file with its size and SHA-256
//     ...                         files written by the ranks (shards, dense weights, cursors)
//   tmp-ckpt-000000001300/        a checkpoint being written (ignored by readers, removed later)
// Protocol: every rank writes its files into StagingDir(step); once all have finished (the
// caller's barrier), one rank calls Commit(step), which seals the folder (MANIFEST last), fsyncs
// and renames it to its final name, then applies retention.
//
// Run identity: every manifest carries RunId(job), a digest of the config fields that define
// the run; the fields that may change between a run and its --resume (its length, output and
// logging, cluster layout and timeouts, checkpoint cadence, evaluation and inference settings)
// are left out. A checkpoint verifies only for a job of the same run.
//
// Thread-safety: free functions on the file system; concurrent Commit into one dir is not
// supported (the job commits from one rank).

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/sealed_folder.h"
#include "configs/job_config.pb.h"

namespace t2d::trainer {

// The fields of `job` that define its run (see above; the list is in docs/export.md), with
// every default filled in, so that a field left unset and one set to its default are equal.
config::JobConfig RunDefiningConfig(const config::JobConfig& job);
// SHA-256 (hex) of RunDefiningConfig(job) in protobuf text format.
std::string RunId(const config::JobConfig& job);

// The files of a checkpoint of `job` written by `num_workers` workers, every table saved in
// `num_shards` shard files (the servers; 1 for a single-process run), sorted.
std::vector<std::string> CheckpointFiles(const config::JobConfig& job, int num_workers, int num_shards);

// "<dir>/tmp-ckpt-<step>": created (with parents) by PrepareStaging.
std::string StagingDir(const std::string& dir, int64_t step);
absl::Status PrepareStaging(const std::string& dir, int64_t step);

// Seals the staging folder of `step` into "<dir>/ckpt-<step>" (replacing a folder of that step)
// with `manifest`, whose epoch, num_workers and num_servers the caller sets (kind, step and run
// identity are set here). The staging folder must hold exactly CheckpointFiles(job, ...).
// Then retention: of the checkpoints in `dir` that verify as this run's, the newest
// checkpoint.keep_last are kept and the older deleted; any other folder (damaged, of another
// run) is left in place with a warning; deleted ones are renamed to "deleting-ckpt-<step>"
// first. Errors: those of SealFolder; Internal for a failed rename.
absl::StatusOr<std::string> Commit(const std::string& dir, int64_t step, FolderManifest manifest,
                                   const config::JobConfig& job);

// Verifies `folder` as a checkpoint of `job`'s run: VerifyFolder with the files its header
// calls for, a step that matches the folder's name. Errors: DataLoss naming the damaged file or
// folder; FailedPrecondition for a checkpoint of another run (naming the fields that differ) or
// of a newer format.
absl::StatusOr<FolderManifest> VerifyCheckpoint(const std::string& folder, const config::JobConfig& job);

struct VerifiedCheckpoint {
  std::string folder;
  FolderManifest manifest;
};

// The newest checkpoint in `dir` that verifies. Damaged ones are skipped with a warning naming
// the file. Errors: NotFound when `dir` holds no checkpoint folder at all; DataLoss listing
// every reason when it holds some but none verifies; FailedPrecondition (from VerifyCheckpoint)
// when the newest undamaged one is of another run: that is never skipped silently.
absl::StatusOr<VerifiedCheckpoint> FindLatestCheckpoint(const std::string& dir, const config::JobConfig& job);

// For a fresh run: OK when `dir` holds no checkpoint folder; FailedPrecondition naming `dir`
// otherwise (continue that run with --resume, or use another checkpoint.dir). Never deletes.
absl::Status CheckNoCheckpoints(const std::string& dir);

}  // namespace t2d::trainer
