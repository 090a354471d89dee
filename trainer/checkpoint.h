#pragma once
// Checkpoint folders: a consistent cut of a training job written so that a reader never sees a
// partial one.
//
// Layout under the job's checkpoint dir:
//   ckpt-000000001200/            a complete checkpoint of step 1200
//     MANIFEST                    FolderManifest (common/sealed_folder.h): every file, size, CRC
//     ...                         files written by the ranks (shards, dense weights, cursors)
//   tmp-ckpt-000000001300/        a checkpoint being written (ignored by readers, removed later)
// Protocol: every rank writes its files into StagingDir(step); once all have finished (the
// caller's barrier), one rank calls Commit(step), which checksums the files, writes MANIFEST
// last, fsyncs and renames the folder to its final name, then prunes to the newest keep_last.
//
// Thread-safety: free functions on the file system; concurrent Commit of the same step is not
// supported (the job commits from one rank).

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/sealed_folder.h"

namespace t2d::trainer {

// "<dir>/tmp-ckpt-<step>": created (with parents) by PrepareStaging.
std::string StagingDir(const std::string& dir, int64_t step);
absl::Status PrepareStaging(const std::string& dir, int64_t step);

// Seals the staging folder of `step` into "<dir>/ckpt-<step>" with `manifest` (files are listed
// and checksummed here) and keeps the newest `keep_last` complete checkpoints.
absl::StatusOr<std::string> Commit(const std::string& dir, int64_t step, FolderManifest manifest, int keep_last);

// The newest complete and intact checkpoint folder in `dir`. Damaged ones are skipped with a
// warning naming the file; NotFound if none is usable.
absl::StatusOr<std::string> FindLatestCheckpoint(const std::string& dir);

}  // namespace t2d::trainer
