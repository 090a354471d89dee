#pragma once
// The item index of a serving bundle: top-k item rows by inner product with a query (user)
// vector. Catalogues of up to ServingConfig.exact_max_items items get an exact flat index;
// larger ones an approximate one (IVF or HNSW, configs/job_config.proto). Backed by faiss,
// which stays out of this header.
//
// Rows: the index holds the item vectors as rows 0..size()-1, in the order given to Build, and
// answers with those row numbers.
// Ownership: an ItemIndex owns its faiss index; results are returned by value.
// Thread-safety: Search, Write, WithRowsReplaced and the accessors are const and may run
// concurrently with each other. (faiss adds to global, unsynchronised statistics counters while
// searching IVF and HNSW indexes; nothing reads them.)
// Threads: a search runs on its caller's thread alone: for the duration of the call it lowers
// the caller's OpenMP thread count to 1 (an OpenMP setting is per thread; other threads are
// unaffected) and restores it. Building, and replacing rows, use ServingConfig.index_threads.
// Errors: bad arguments are InvalidArgument; a missing file NotFound; a file that is not a whole
// item index of the expected size is DataLoss naming the file; faiss's own failures are caught
// here and returned as Internal with its message. No exception leaves this interface.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "configs/job_config.pb.h"

namespace t2d::serving {

// One query's hits, best first: rows[i] scored scores[i], the exact inner product (every kind
// stores the full vectors; only which rows are found is approximate).
struct Hits {
  std::vector<int64_t> rows;
  std::vector<float> scores;
};

class ItemIndex {
 public:
  enum class Kind { kFlat, kIvf, kHnsw };

  // Indexes `n` vectors of `dim` floats (row-major, vectors.size() == n * dim, all finite).
  // The kind follows `config` (exact up to exact_max_items). IVF training is deterministic: the
  // same vectors and config give the same index, byte for byte, whatever the thread count.
  static absl::StatusOr<std::unique_ptr<ItemIndex>> Build(absl::Span<const float> vectors, int64_t n,
                                                          int64_t dim, const config::ServingConfig& config);

  // Writes the index to `path` atomically (common/file_util.h: WriteFileAtomic).
  absl::Status Write(const std::string& path) const;
  // Reads an index written by Write. Its size and dimension must be `expected_n` and
  // `expected_dim` (DataLoss naming both values otherwise). The search-time settings
  // (ivf_nprobe, hnsw_ef_search) and index_threads come from `config`, so they can change
  // without rebuilding; the kind comes from the file.
  static absl::StatusOr<std::unique_ptr<ItemIndex>> Read(const std::string& path, int64_t expected_n,
                                                         int64_t expected_dim,
                                                         const config::ServingConfig& config);

  // The top min(k, size()) rows for each of `nq` queries (queries.size() == nq * dim), one Hits
  // per query. An approximate index may find fewer for a query; it then returns fewer (never a
  // placeholder). k < 1 is InvalidArgument; nq == 0 returns no Hits.
  absl::StatusOr<std::vector<Hits>> Search(absl::Span<const float> queries, int64_t nq, int k) const;

  // A new index equal to this one but with rows[i] holding vectors[i * dim, (i + 1) * dim).
  // This index is not changed and may keep answering meanwhile (copy-on-write: the new one is a
  // full copy). A row given twice takes its last vector. HNSW cannot remove a node from its
  // graph: Unimplemented (build and ship a whole new index instead).
  absl::StatusOr<std::unique_ptr<ItemIndex>> WithRowsReplaced(absl::Span<const int64_t> rows,
                                                              absl::Span<const float> vectors) const;

  Kind kind() const;
  // "flat", "ivf" or "hnsw".
  const char* name() const;
  int64_t size() const;
  int64_t dim() const;

  ~ItemIndex();
  ItemIndex(const ItemIndex&) = delete;
  ItemIndex& operator=(const ItemIndex&) = delete;

 private:
  struct Impl;
  explicit ItemIndex(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace t2d::serving
