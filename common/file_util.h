#pragma once
// File helpers with Status errors that name the file. Thread-safe (no shared state).

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace t2d {

// Reads a whole file. NotFound if it does not exist, DataLoss/Internal on read errors.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// Writes `contents` to `path` atomically: a temporary file in the same folder, fsync, rename.
// A reader never sees a half-written file; on error the old file (if any) is untouched.
absl::Status WriteFileAtomic(const std::string& path, const std::string& contents);

}  // namespace t2d
