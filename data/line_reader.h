#pragma once
// Line-by-line reading of text input files, plain or gzip (detected from the content, so a
// ".gz" name is not required), with the file name and 1-based line number kept for error
// messages. Lines are returned without the trailing "\n" / "\r\n".
//
// Ownership: the reader owns the zlib handle. Thread-compatible (one thread per reader).
// Errors: NotFound / PermissionDenied for a file that cannot be opened, DataLoss for a read
// error or a truncated gzip stream; every message names the file.

#include <cstdint>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace t2d::data {

class LineReader {
 public:
  static absl::StatusOr<std::unique_ptr<LineReader>> Open(const std::string& path);
  ~LineReader();
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  // Sets *line to the next line (valid until the next call) and returns true; false at the end
  // of the file. A read error is returned as a status.
  absl::StatusOr<bool> Next(absl::string_view* line);

  const std::string& path() const { return path_; }
  // Line number of the line last returned by Next (1-based; 0 before the first).
  int64_t line_number() const { return line_number_; }
  // "path:line", for error messages.
  std::string Where() const;

 private:
  LineReader(std::string path, void* gz);
  absl::Status Refill();

  std::string path_;
  void* gz_;  // gzFile; void* keeps zlib.h out of this header
  std::string buffer_;
  size_t begin_ = 0;  // first unread byte in buffer_
  bool eof_ = false;
  int64_t line_number_ = 0;
  std::string carry_;  // a line that straddled two buffer fills
};

}  // namespace t2d::data
