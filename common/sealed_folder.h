#pragma once
// Sealed folders: a folder of files plus a MANIFEST (common/manifest.proto, text format) that
// lists every file with its size and CRC-32, written last and atomically. Checkpoints
// (trainer/checkpoint.h) and serving bundles (serving/bundle.h) are sealed folders; a reader
// verifies the manifest before trusting any file.
//
// Thread-safety: free functions on the file system; sealing the same folder from two threads
// is not supported.

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/manifest.pb.h"

namespace t2d {

// Lists and checksums every file under `folder` into `manifest` (replacing its file list and
// setting its format version) and writes it as MANIFEST, last and atomically, then syncs the
// folder. Errors: Internal when the folder cannot be listed or written.
absl::Status SealFolder(const std::string& folder, FolderManifest manifest);

// Reads and checks a sealed folder: the manifest parses, has a known version, and every listed
// file exists with the recorded size and CRC. DataLoss naming the file otherwise.
absl::StatusOr<FolderManifest> VerifyFolder(const std::string& folder);

// fsync of a folder (after a rename or a new file in it); errors are ignored (best effort).
void SyncDir(const std::string& folder);

}  // namespace t2d
