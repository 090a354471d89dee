#include "data/line_reader.h"

#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace t2d::data {
namespace {
constexpr size_t kBufferBytes = 1 << 20;
}  // namespace

absl::StatusOr<std::unique_ptr<LineReader>> LineReader::Open(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  if (std::filesystem::is_directory(path, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": is a directory, expected a file"));
  }
  gzFile gz = gzopen(path.c_str(), "rb");
  if (gz == nullptr) {
    return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  gzbuffer(gz, 1 << 18);
  return std::unique_ptr<LineReader>(new LineReader(path, gz));
}

LineReader::LineReader(std::string path, void* gz) : path_(std::move(path)), gz_(gz) {}

LineReader::~LineReader() { gzclose(static_cast<gzFile>(gz_)); }

std::string LineReader::Where() const { return absl::StrCat(path_, ":", line_number_); }

absl::Status LineReader::Refill() {
  buffer_.resize(kBufferBytes);
  const int n = gzread(static_cast<gzFile>(gz_), buffer_.data(), static_cast<unsigned>(buffer_.size()));
  if (n < 0) {
    int errnum = 0;
    const char* msg = gzerror(static_cast<gzFile>(gz_), &errnum);
    return absl::DataLossError(absl::StrCat(path_, ": read error after line ", line_number_, ": ", msg));
  }
  buffer_.resize(static_cast<size_t>(n));
  begin_ = 0;
  if (n == 0) {
    // gzread returns 0 both at a clean end and at a truncated gzip member; gzerror tells them apart.
    int errnum = 0;
    const char* msg = gzerror(static_cast<gzFile>(gz_), &errnum);
    if (errnum != Z_OK) {
      return absl::DataLossError(absl::StrCat(path_, ": truncated or damaged compressed file after line ",
                                              line_number_, ": ", msg));
    }
    eof_ = true;
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> LineReader::Next(absl::string_view* line) {
  carry_.clear();
  bool have_carry = false;
  while (true) {
    if (begin_ >= buffer_.size()) {
      if (eof_) break;
      absl::Status s = Refill();
      if (!s.ok()) return s;
      if (eof_) break;
    }
    const char* start = buffer_.data() + begin_;
    const size_t avail = buffer_.size() - begin_;
    const void* nl = std::memchr(start, '\n', avail);
    if (nl != nullptr) {
      const size_t len = static_cast<const char*>(nl) - start;
      begin_ += len + 1;
      if (have_carry) {
        carry_.append(start, len);
        *line = carry_;
      } else {
        *line = absl::string_view(start, len);
      }
      ++line_number_;
      if (!line->empty() && line->back() == '\r') line->remove_suffix(1);
      return true;
    }
    carry_.append(start, avail);
    have_carry = true;
    begin_ = buffer_.size();
  }
  if (!have_carry) return false;
  // Last line without a final newline.
  ++line_number_;
  *line = carry_;
  if (!line->empty() && line->back() == '\r') line->remove_suffix(1);
  return true;
}

}  // namespace t2d::data
