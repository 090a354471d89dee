#pragma once
// Sealed folders: a folder of a fixed set of files plus a MANIFEST (common/manifest.proto, text
// format) that says what kind of folder it is and lists every file with its size and SHA-256,
// written last and atomically, and ending with a line that holds the SHA-256 of the manifest's
// own text. Checkpoints (trainer/checkpoint.h) and serving bundles (serving/bundle_writer.h) are
// sealed folders; a reader verifies the whole folder before trusting any file. Format:
// docs/formats.md, "Sealed folders".
//
// What verification guarantees: the manifest is intact and of the expected kind; the files it
// lists are exactly the set its kind and header call for (none missing, none extra, none twice,
// every path relative and inside the folder); the folder holds no other file; and every file
// has the recorded size and SHA-256. So a truncated, edited, deleted, added or swapped-in file
// (even one that ends with its own CRC) is refused, naming it.
//
// Thread-safety: free functions on the file system; sealing the same folder from two threads
// is not supported.

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/manifest.pb.h"

namespace t2d {

// Seals `folder`, which must hold exactly `files` (paths relative to it, '/'-separated): records
// each file's size and SHA-256 in `manifest` (whose kind must be set; the version is set here)
// and writes it as MANIFEST, last and atomically, then syncs the folder. Errors: InvalidArgument
// (no kind, a bad path), DataLoss naming a listed file that is missing, Internal naming a file
// in the folder that is not listed or a write that failed.
absl::Status SealFolder(const std::string& folder, FolderManifest manifest, const std::vector<std::string>& files);

// The exact set of files a folder must hold, given its (verified) manifest header: the kind and
// header fields such as the step and the numbers of workers and servers. Called after every
// listed file has been checked, so it may read one of them. An error it returns (for example:
// a header that does not match the folder's name, a checkpoint of another run) is returned by
// VerifyFolder as it is.
using ExpectedFiles = std::function<absl::StatusOr<std::vector<std::string>>(const FolderManifest& header)>;

// Reads and checks a sealed folder of `kind` (see above) and returns its manifest. Errors:
// DataLoss naming the damaged, missing or unlisted file or the folder (a missing MANIFEST: an
// incomplete folder; a version 1 manifest, which recorded CRC-32s only and so cannot be
// verified); FailedPrecondition for a folder of another kind or a newer format version; and
// whatever `expected_files` returns.
absl::StatusOr<FolderManifest> VerifyFolder(const std::string& folder, FolderManifest::Kind kind,
                                            const ExpectedFiles& expected_files);

// fsync of a folder (after a rename or a new file in it); errors are ignored (best effort).
void SyncDir(const std::string& folder);

}  // namespace t2d
