#pragma once
// Groups an interaction log by user in bounded memory, for `t2diff prepare` of raw logs larger
// than memory (an external merge sort).
//
// Rows are buffered up to `buffer_bytes`; a full buffer is sorted and written to a run file in
// `scratch_dir`, and ForEachUser merges the runs. The order is exactly that of a stable sort of
// the whole log by user (and, with by_time, by time): equal keys keep input order, so the
// result does not depend on the buffer size. A log that fits the buffer never touches disk.
// Memory: the buffer, plus a 1 MiB read buffer per run while merging, plus one user's rows.
//
// Ownership: the sorter owns its run files ("<scratch_dir>/.prepare-sort-<pid>-<n>.tmp") and removes
// them when destroyed, also after an error.
// Errors: a run file that cannot be written or read back whole is an error naming the file.
// Thread-safety: none; one thread uses a sorter.

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "data/sources.h"

namespace t2d::data {

class UserRowSorter {
 public:
  // One user's rows as ForEachUser hands them: the positives in sequence order, and how many rows
  // the user had in all (positives plus those the positives filter dropped).
  using UserFn = absl::FunctionRef<absl::Status(int64_t user, absl::Span<const Interaction> positives, int64_t rows)>;

  // buffer_bytes: at least one row's worth (32 bytes). by_time: order each user's rows by time.
  static absl::StatusOr<std::unique_ptr<UserRowSorter>> Create(std::string scratch_dir, int64_t buffer_bytes,
                                                               bool by_time);
  ~UserRowSorter();
  UserRowSorter(const UserRowSorter&) = delete;
  UserRowSorter& operator=(const UserRowSorter&) = delete;

  // Adds one row (input order). May write a run file.
  absl::Status Add(const Interaction& row, bool positive);
  // Ends the input. Add may not follow.
  absl::Status Finish();
  // After Finish: hands every user to `fn`, ascending user id. May be called again (it re-reads
  // the runs). An error from `fn` ends the pass and is returned.
  absl::Status ForEachUser(UserFn fn);

  int64_t rows() const { return rows_; }
  int runs() const { return static_cast<int>(run_paths_.size()); }  // run files written (0: in memory)

  struct Row {
    int64_t user;
    int64_t item;
    int64_t time;
    uint32_t index;     // position in its run: the stable tie-break
    uint32_t positive;  // 1 or 0
  };

 private:
  UserRowSorter() = default;
  void SortBuffer();
  absl::Status Spill();

  std::string scratch_dir_;
  size_t capacity_ = 0;  // rows the buffer may hold
  bool by_time_ = true;
  bool finished_ = false;
  int64_t rows_ = 0;
  std::vector<Row> buffer_;
  std::vector<std::string> run_paths_;
  std::vector<int64_t> run_rows_;
};

// int64 values written raw to a scratch file, for KthSmallestInFile; the file is removed with the
// object. Create fails naming the file if it cannot be made; Add and Close when it cannot be written.
class Int64Spill {
 public:
  static absl::StatusOr<std::unique_ptr<Int64Spill>> Create(std::string path);
  ~Int64Spill();
  Int64Spill(const Int64Spill&) = delete;
  Int64Spill& operator=(const Int64Spill&) = delete;

  absl::Status Add(int64_t value);
  absl::Status Close();  // before reading the file
  const std::string& path() const { return path_; }
  int64_t count() const { return count_; }

 private:
  Int64Spill(std::string path, std::FILE* f) : path_(std::move(path)), file_(f) {}
  std::string path_;
  std::FILE* file_;
  int64_t count_ = 0;
};

// The k-th smallest (0-based) of the int64 values stored raw, native order, in `path` (`count`
// of them), found in four 16-bit radix passes over the file with constant memory: a time quantile
// of a log larger than memory. InvalidArgument if k >= count; a short file is DataLoss naming it.
absl::StatusOr<int64_t> KthSmallestInFile(const std::string& path, int64_t count, int64_t k);

}  // namespace t2d::data
