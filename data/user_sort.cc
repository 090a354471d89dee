#include "data/user_sort.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <queue>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace t2d::data {
namespace {

constexpr size_t kReadRows = (1u << 20) / sizeof(UserRowSorter::Row);

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

absl::StatusOr<File> OpenFile(const std::string& path, const char* mode) {
  File f(std::fopen(path.c_str(), mode));
  if (f == nullptr) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  return f;
}

// A run file being merged: its rows come in through a 1 MiB buffer.
struct Cursor {
  File file;
  std::string path;
  int run = 0;
  int64_t left = 0;  // rows not yet read from the file
  std::vector<UserRowSorter::Row> rows;
  size_t next = 0;

  absl::Status Refill() {
    const size_t n = static_cast<size_t>(std::min<int64_t>(left, static_cast<int64_t>(kReadRows)));
    rows.resize(n);
    next = 0;
    if (n == 0) return absl::OkStatus();
    if (std::fread(rows.data(), sizeof(UserRowSorter::Row), n, file.get()) != n) {
      return absl::DataLossError(absl::StrCat(path, ": run file ends early (", left, " rows were still due)"));
    }
    left -= static_cast<int64_t>(n);
    return absl::OkStatus();
  }
  bool done() const { return next == rows.size(); }
  const UserRowSorter::Row& row() const { return rows[next]; }
};

}  // namespace

absl::StatusOr<std::unique_ptr<UserRowSorter>> UserRowSorter::Create(std::string scratch_dir, int64_t buffer_bytes,
                                                                     bool by_time) {
  if (buffer_bytes < static_cast<int64_t>(sizeof(Row))) {
    return absl::InvalidArgumentError(absl::StrCat("sort buffer of ", buffer_bytes, " bytes holds no row"));
  }
  std::unique_ptr<UserRowSorter> s(new UserRowSorter());
  s->scratch_dir_ = std::move(scratch_dir);
  // The run index is a uint32.
  s->capacity_ = static_cast<size_t>(std::min<int64_t>(buffer_bytes / static_cast<int64_t>(sizeof(Row)), UINT32_MAX));
  s->by_time_ = by_time;
  return s;
}

UserRowSorter::~UserRowSorter() {
  std::error_code ec;
  for (const auto& p : run_paths_) std::filesystem::remove(p, ec);
}

absl::Status UserRowSorter::Add(const Interaction& row, bool positive) {
  if (finished_) return absl::FailedPreconditionError("UserRowSorter::Add after Finish");
  if (buffer_.size() == capacity_) T2D_RETURN_IF_ERROR(Spill());
  // The whole buffer at once: growing it by doubling would leave the smaller copies behind in
  // the heap (the launcher keeps freed memory, model/malloc_tuning.h), about doubling the peak.
  // Pages are resident only once written, so a small log costs only its rows.
  if (buffer_.capacity() < capacity_) buffer_.reserve(capacity_);
  buffer_.push_back({row.user, row.item, row.time, static_cast<uint32_t>(buffer_.size()), positive ? 1u : 0u});
  ++rows_;
  return absl::OkStatus();
}

void UserRowSorter::SortBuffer() {
  const bool by_time = by_time_;
  std::sort(buffer_.begin(), buffer_.end(), [by_time](const Row& a, const Row& b) {
    if (a.user != b.user) return a.user < b.user;
    if (by_time && a.time != b.time) return a.time < b.time;
    return a.index < b.index;
  });
}

absl::Status UserRowSorter::Spill() {
  SortBuffer();
  const std::string path =
      (std::filesystem::path(scratch_dir_) / absl::StrCat(".prepare-sort-", getpid(), "-", run_paths_.size(), ".tmp")).string();
  run_paths_.push_back(path);  // from here on the destructor removes it
  run_rows_.push_back(static_cast<int64_t>(buffer_.size()));
  T2D_ASSIGN_OR_RETURN(File f, OpenFile(path, "wb"));
  if (std::fwrite(buffer_.data(), sizeof(Row), buffer_.size(), f.get()) != buffer_.size() || std::fflush(f.get()) != 0) {
    return absl::ResourceExhaustedError(absl::StrCat(path, ": cannot write a sort run of ", buffer_.size() * sizeof(Row),
                                                     " bytes: ", std::strerror(errno)));
  }
  if (std::fclose(f.release()) != 0) {
    return absl::ResourceExhaustedError(absl::StrCat(path, ": cannot write a sort run: ", std::strerror(errno)));
  }
  buffer_.clear();
  return absl::OkStatus();
}

absl::Status UserRowSorter::Finish() {
  if (finished_) return absl::OkStatus();
  finished_ = true;
  if (run_paths_.empty()) {
    SortBuffer();
    return absl::OkStatus();
  }
  if (!buffer_.empty()) T2D_RETURN_IF_ERROR(Spill());
  std::vector<Row>().swap(buffer_);  // the merge needs the memory
  return absl::OkStatus();
}

absl::Status UserRowSorter::ForEachUser(UserFn fn) {
  if (!finished_) return absl::FailedPreconditionError("UserRowSorter::ForEachUser before Finish");
  std::vector<Interaction> positives;
  int64_t user = 0, count = 0;
  auto take = [&](const Row& r) -> absl::Status {
    if (count > 0 && r.user != user) {
      T2D_RETURN_IF_ERROR(fn(user, positives, count));
      positives.clear();
      count = 0;
    }
    user = r.user;
    ++count;
    if (r.positive) positives.push_back({r.user, r.item, r.time});
    return absl::OkStatus();
  };
  if (run_paths_.empty()) {
    for (const Row& r : buffer_) T2D_RETURN_IF_ERROR(take(r));
  } else {
    std::vector<Cursor> cursors(run_paths_.size());
    for (size_t i = 0; i < cursors.size(); ++i) {
      Cursor& c = cursors[i];
      c.path = run_paths_[i];
      c.run = static_cast<int>(i);
      c.left = run_rows_[i];
      T2D_ASSIGN_OR_RETURN(c.file, OpenFile(c.path, "rb"));
      T2D_RETURN_IF_ERROR(c.Refill());
    }
    // Equal keys come from the earlier run first: runs hold consecutive stretches of the input.
    const bool by_time = by_time_;
    auto after = [&](int a, int b) {
      const Row& x = cursors[a].row();
      const Row& y = cursors[b].row();
      if (x.user != y.user) return x.user > y.user;
      if (by_time && x.time != y.time) return x.time > y.time;
      return a > b;
    };
    std::priority_queue<int, std::vector<int>, decltype(after)> heap(after);
    for (size_t i = 0; i < cursors.size(); ++i) {
      if (!cursors[i].done()) heap.push(static_cast<int>(i));
    }
    while (!heap.empty()) {
      const int i = heap.top();
      heap.pop();
      Cursor& c = cursors[static_cast<size_t>(i)];
      T2D_RETURN_IF_ERROR(take(c.row()));
      if (++c.next == c.rows.size()) T2D_RETURN_IF_ERROR(c.Refill());
      if (!c.done()) heap.push(i);
    }
  }
  if (count > 0) T2D_RETURN_IF_ERROR(fn(user, positives, count));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Int64Spill>> Int64Spill::Create(std::string path) {
  T2D_ASSIGN_OR_RETURN(File f, OpenFile(path, "wb"));
  return std::unique_ptr<Int64Spill>(new Int64Spill(std::move(path), f.release()));
}

Int64Spill::~Int64Spill() {
  if (file_ != nullptr) std::fclose(file_);
  std::error_code ec;
  std::filesystem::remove(path_, ec);
}

absl::Status Int64Spill::Add(int64_t value) {
  if (file_ == nullptr || std::fwrite(&value, sizeof(value), 1, file_) != 1) {
    return absl::ResourceExhaustedError(absl::StrCat(path_, ": cannot write: ", std::strerror(errno)));
  }
  ++count_;
  return absl::OkStatus();
}

absl::Status Int64Spill::Close() {
  const bool ok = file_ != nullptr && std::fclose(file_) == 0;
  file_ = nullptr;
  if (!ok) return absl::ResourceExhaustedError(absl::StrCat(path_, ": cannot write: ", std::strerror(errno)));
  return absl::OkStatus();
}

absl::StatusOr<int64_t> KthSmallestInFile(const std::string& path, int64_t count, int64_t k) {
  if (k < 0 || k >= count) return absl::InvalidArgumentError(absl::StrCat("rank ", k, " of ", count, " values"));
  // Values as unsigned keys in the same order; each pass fixes the next 16 bits of the answer.
  auto key = [](int64_t v) { return static_cast<uint64_t>(v) ^ (uint64_t{1} << 63); };
  uint64_t prefix = 0;
  std::vector<int64_t> block(1 << 17);
  std::vector<int64_t> hist(1 << 16);
  for (int pass = 0; pass < 4; ++pass) {
    const int shift = 48 - 16 * pass;
    std::fill(hist.begin(), hist.end(), 0);
    T2D_ASSIGN_OR_RETURN(File f, OpenFile(path, "rb"));
    int64_t left = count;
    while (left > 0) {
      const size_t n = static_cast<size_t>(std::min<int64_t>(left, static_cast<int64_t>(block.size())));
      if (std::fread(block.data(), sizeof(int64_t), n, f.get()) != n) {
        return absl::DataLossError(absl::StrCat(path, ": ends before its ", count, " values"));
      }
      left -= static_cast<int64_t>(n);
      for (size_t i = 0; i < n; ++i) {
        const uint64_t u = key(block[i]);
        if (pass == 0 || (u >> (shift + 16)) == prefix) ++hist[(u >> shift) & 0xFFFF];
      }
    }
    size_t b = 0;
    while (b < hist.size() && k >= hist[b]) k -= hist[b++];
    if (b == hist.size()) return absl::DataLossError(absl::StrCat(path, ": changed while it was read"));
    prefix = (prefix << 16) | b;
  }
  return static_cast<int64_t>(prefix ^ (uint64_t{1} << 63));
}

}  // namespace t2d::data
