#include "serving/item_index.h"

#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/clone_index.h>
#include <faiss/impl/io.h>
#include <faiss/index_io.h>
#include <omp.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <exception>
#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"

namespace t2d::serving {
namespace {

// k-means of the IVF lists: a fixed seed makes training (its sample, its initial centroids, the
// splitting of empty cells) a function of the input alone.
constexpr int kTrainSeed = 20240613;
// Training points per list: faiss samples at most this many times the list count (seeded), which
// bounds training time at 10^6+ items; 39 is the least faiss accepts without a warning.
constexpr int kTrainPointsPerList = 40;
constexpr int kTrainIterations = 10;

// Sets the calling thread's OpenMP thread count for a scope (0: leave it). The count is a
// per-thread setting in OpenMP, so concurrent callers on other threads are unaffected; faiss and
// the OpenMP build of OpenBLAS read it on every call.
class ScopedOmpThreads {
 public:
  explicit ScopedOmpThreads(int threads) : saved_(omp_get_max_threads()) {
    if (threads > 0) omp_set_num_threads(threads);
  }
  ~ScopedOmpThreads() { omp_set_num_threads(saved_); }
  ScopedOmpThreads(const ScopedOmpThreads&) = delete;
  ScopedOmpThreads& operator=(const ScopedOmpThreads&) = delete;

 private:
  int saved_;
};

// faiss serialises into this, so that the file is written by WriteFileAtomic.
struct StringWriter : faiss::IOWriter {
  explicit StringWriter(std::string* target) : out(target) {}
  size_t operator()(const void* ptr, size_t size, size_t nitems) override {
    out->append(static_cast<const char*>(ptr), size * nitems);
    return nitems;
  }
  std::string* out;
};

// The what() of the exception being handled (faiss throws faiss::FaissException, a
// std::exception; allocation failures are std::bad_alloc).
std::string CurrentException() {
  try {
    throw;
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown exception";
  }
}

absl::Status CheckFinite(absl::Span<const float> vectors, int64_t dim, const char* what) {
  for (size_t i = 0; i < vectors.size(); ++i) {
    if (!std::isfinite(vectors[i])) {
      return absl::InvalidArgumentError(absl::StrCat(what, " ", static_cast<int64_t>(i) / dim, " has a non-finite value"));
    }
  }
  return absl::OkStatus();
}

int64_t IvfLists(int64_t n, const config::ServingConfig& config) {
  if (config.ivf_lists() > 0) return std::min<int64_t>(config.ivf_lists(), n);
  const auto automatic = static_cast<int64_t>(std::lround(4 * std::sqrt(static_cast<double>(n))));
  return std::max<int64_t>(1, std::min(automatic, n / 39));
}

}  // namespace

struct ItemIndex::Impl {
  std::unique_ptr<faiss::Index> index;
  Kind kind = Kind::kFlat;
  int ivf_nprobe = 1;
  int hnsw_ef_search = 16;
  int index_threads = 0;

  Impl(std::unique_ptr<faiss::Index> i, Kind k, const config::ServingConfig& config)
      : index(std::move(i)), kind(k), ivf_nprobe(config.ivf_nprobe()), hnsw_ef_search(config.hnsw_ef_search()),
        index_threads(config.index_threads()) {}
  Impl(std::unique_ptr<faiss::Index> i, const Impl& settings)
      : index(std::move(i)), kind(settings.kind), ivf_nprobe(settings.ivf_nprobe),
        hnsw_ef_search(settings.hnsw_ef_search), index_threads(settings.index_threads) {}
};

ItemIndex::ItemIndex(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ItemIndex::~ItemIndex() = default;

absl::StatusOr<std::unique_ptr<ItemIndex>> ItemIndex::Build(absl::Span<const float> vectors, int64_t n, int64_t dim,
                                                            const config::ServingConfig& config) {
  // HNSW numbers its nodes with int.
  if (n < 1 || n > INT_MAX || dim < 1 || dim > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("item index: ", n, " x ", dim, " vectors (need 1..", INT_MAX, " each)"));
  }
  if (static_cast<int64_t>(vectors.size()) != n * dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("item index: ", vectors.size(), " floats given for ", n, " vectors of dim ", dim));
  }
  if (auto s = CheckFinite(vectors, dim, "item index: row"); !s.ok()) return s;
  const int d = static_cast<int>(dim);
  Kind kind = Kind::kFlat;
  if (n > config.exact_max_items()) kind = config.index_kind() == config::ServingConfig::HNSW ? Kind::kHnsw : Kind::kIvf;
  std::unique_ptr<faiss::Index> index;
  try {
    ScopedOmpThreads threads(config.index_threads());
    if (kind == Kind::kFlat) {
      index = std::make_unique<faiss::IndexFlatIP>(d);
    } else if (kind == Kind::kIvf) {
      auto quantizer = std::make_unique<faiss::IndexFlatIP>(d);
      auto ivf = std::make_unique<faiss::IndexIVFFlat>(quantizer.get(), d, IvfLists(n, config),
                                                       faiss::METRIC_INNER_PRODUCT);
      ivf->own_fields = true;
      quantizer.release();
      // Unit-norm centroids: a cell is a direction, so that cells are not all captured by the
      // centroids of largest norm (plain k-means under inner-product assignment).
      ivf->cp.spherical = true;
      ivf->cp.seed = kTrainSeed;
      ivf->cp.niter = kTrainIterations;
      ivf->cp.max_points_per_centroid = kTrainPointsPerList;
      ivf->train(n, vectors.data());
      // Row -> (list, offset), so that WithRowsReplaced can find a row's entry.
      ivf->set_direct_map_type(faiss::DirectMap::Array);
      index = std::move(ivf);
    } else {
      auto hnsw = std::make_unique<faiss::IndexHNSWFlat>(d, config.hnsw_m(), faiss::METRIC_INNER_PRODUCT);
      hnsw->hnsw.efConstruction = config.hnsw_ef_construction();
      index = std::move(hnsw);
    }
    index->add(n, vectors.data());
  } catch (...) {
    return absl::InternalError(absl::StrCat("item index: building over ", n, " x ", dim, ": ", CurrentException()));
  }
  return std::unique_ptr<ItemIndex>(new ItemIndex(std::make_unique<Impl>(std::move(index), kind, config)));
}

absl::Status ItemIndex::Write(const std::string& path) const {
  std::string bytes;
  StringWriter writer(&bytes);
  try {
    faiss::write_index(impl_->index.get(), &writer);
  } catch (...) {
    return absl::InternalError(absl::StrCat(path, ": serialising the item index: ", CurrentException()));
  }
  return WriteFileAtomic(path, bytes);
}

absl::StatusOr<std::unique_ptr<ItemIndex>> ItemIndex::Read(const std::string& path, int64_t expected_n,
                                                           int64_t expected_dim, const config::ServingConfig& config) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  std::unique_ptr<faiss::Index> index;
  try {
    index.reset(faiss::read_index(path.c_str()));
  } catch (...) {
    return absl::DataLossError(absl::StrCat(path, ": not a readable item index: ", CurrentException()));
  }
  Kind kind;
  if (const auto* ivf = dynamic_cast<const faiss::IndexIVFFlat*>(index.get());
      ivf != nullptr && ivf->direct_map.type == faiss::DirectMap::Array) {
    kind = Kind::kIvf;
  } else if (dynamic_cast<const faiss::IndexHNSWFlat*>(index.get()) != nullptr) {
    kind = Kind::kHnsw;
  } else if (dynamic_cast<const faiss::IndexFlat*>(index.get()) != nullptr) {
    kind = Kind::kFlat;
  } else {
    return absl::DataLossError(absl::StrCat(path, ": a faiss index of a kind that Build does not make"));
  }
  if (index->metric_type != faiss::METRIC_INNER_PRODUCT) {
    return absl::DataLossError(absl::StrCat(path, ": the index does not rank by inner product"));
  }
  if (index->ntotal != expected_n || index->d != expected_dim) {
    return absl::DataLossError(absl::StrCat(path, ": the index holds ", index->ntotal, " vectors of dim ", index->d,
                                            ", expected ", expected_n, " of dim ", expected_dim));
  }
  return std::unique_ptr<ItemIndex>(new ItemIndex(std::make_unique<Impl>(std::move(index), kind, config)));
}

absl::StatusOr<std::vector<Hits>> ItemIndex::Search(absl::Span<const float> queries, int64_t nq, int k) const {
  const int64_t d = dim();
  if (nq < 0 || k < 1) return absl::InvalidArgumentError(absl::StrCat("item index: search with nq ", nq, ", k ", k));
  if (static_cast<int64_t>(queries.size()) != nq * d) {
    return absl::InvalidArgumentError(
        absl::StrCat("item index: ", queries.size(), " floats given for ", nq, " queries of dim ", d));
  }
  const int64_t kk = std::min<int64_t>(k, size());
  std::vector<float> scores(static_cast<size_t>(nq * kk));
  std::vector<faiss::Index::idx_t> labels(static_cast<size_t>(nq * kk));
  // Per-call parameters rather than fields of the shared index, which concurrent searches read.
  faiss::SearchParametersIVF ivf;
  ivf.nprobe = static_cast<size_t>(impl_->ivf_nprobe);
  faiss::SearchParametersHNSW hnsw;
  hnsw.efSearch = impl_->hnsw_ef_search;
  const faiss::SearchParameters* params = nullptr;
  if (impl_->kind == Kind::kIvf) params = &ivf;
  if (impl_->kind == Kind::kHnsw) params = &hnsw;
  if (nq > 0) {
    try {
      ScopedOmpThreads one(1);
      impl_->index->search(nq, queries.data(), kk, scores.data(), labels.data(), params);
    } catch (...) {
      return absl::InternalError(absl::StrCat("item index: search: ", CurrentException()));
    }
  }
  std::vector<Hits> hits(static_cast<size_t>(nq));
  for (int64_t q = 0; q < nq; ++q) {
    Hits& h = hits[static_cast<size_t>(q)];
    h.rows.reserve(static_cast<size_t>(kk));
    h.scores.reserve(static_cast<size_t>(kk));
    for (int64_t j = q * kk; j < (q + 1) * kk; ++j) {
      if (labels[static_cast<size_t>(j)] < 0) continue;  // fewer than kk found
      h.rows.push_back(labels[static_cast<size_t>(j)]);
      h.scores.push_back(scores[static_cast<size_t>(j)]);
    }
  }
  return hits;
}

absl::StatusOr<std::unique_ptr<ItemIndex>> ItemIndex::WithRowsReplaced(absl::Span<const int64_t> rows,
                                                                       absl::Span<const float> vectors) const {
  if (impl_->kind == Kind::kHnsw) {
    return absl::UnimplementedError(
        "item index: an HNSW index cannot replace rows (faiss cannot remove a node from its graph); build a "
        "whole new index instead");
  }
  const int64_t d = dim();
  if (static_cast<int64_t>(vectors.size()) != static_cast<int64_t>(rows.size()) * d) {
    return absl::InvalidArgumentError(
        absl::StrCat("item index: ", vectors.size(), " floats given for ", rows.size(), " rows of dim ", d));
  }
  for (int64_t r : rows) {
    if (r < 0 || r >= size()) {
      return absl::InvalidArgumentError(absl::StrCat("item index: row ", r, " is outside [0, ", size(), ")"));
    }
  }
  if (auto s = CheckFinite(vectors, d, "item index: replacement"); !s.ok()) return s;
  std::unique_ptr<faiss::Index> copy;
  try {
    ScopedOmpThreads threads(impl_->index_threads);
    copy.reset(faiss::clone_index(impl_->index.get()));
    if (impl_->kind == Kind::kFlat) {
      float* stored = static_cast<faiss::IndexFlat*>(copy.get())->get_xb();
      for (size_t i = 0; i < rows.size(); ++i) {
        std::memcpy(stored + rows[i] * d, vectors.data() + static_cast<int64_t>(i) * d, sizeof(float) * d);
      }
    } else {
      // update_vectors takes an int count.
      auto* ivf = static_cast<faiss::IndexIVFFlat*>(copy.get());
      for (size_t i = 0; i < rows.size(); i += INT_MAX) {
        const size_t count = std::min<size_t>(INT_MAX, rows.size() - i);
        ivf->update_vectors(static_cast<int>(count), rows.data() + i, vectors.data() + static_cast<int64_t>(i) * d);
      }
    }
  } catch (...) {
    return absl::InternalError(absl::StrCat("item index: replacing ", rows.size(), " rows: ", CurrentException()));
  }
  return std::unique_ptr<ItemIndex>(new ItemIndex(std::make_unique<Impl>(std::move(copy), *impl_)));
}

ItemIndex::Kind ItemIndex::kind() const { return impl_->kind; }

const char* ItemIndex::name() const {
  switch (impl_->kind) {
    case Kind::kFlat: return "flat";
    case Kind::kIvf: return "ivf";
    case Kind::kHnsw: return "hnsw";
  }
  return "?";
}

int64_t ItemIndex::size() const { return impl_->index->ntotal; }
int64_t ItemIndex::dim() const { return impl_->index->d; }

}  // namespace t2d::serving
