// The serving item index (serving/item_index.h): the index the default ServingConfig chooses
// against the exact one, for 10^4, 10^5 and 10^6 items of dimension 64.
//
//   build/bench/bench_ann [--max-n N] [--quick] [--kind ivf|hnsw] [--exact-max-items N]
//
// Items and queries are drawn from one Gaussian mixture (1,000 centres, fixed seed), as a trained
// two-tower model puts users near the items they score. For each size it prints the build time
// and file size of both indexes, recall@10 and recall@100 of the chosen index against the exact
// top k, and the latency of single-query searches (one thread, p50/p99) of both. --quick: 200
// queries instead of 1,000. --kind and --exact-max-items override the config's choice.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>
#include <string>
#include <unistd.h>
#include <vector>

#include "bench/bench_util.h"
#include "serving/item_index.h"

namespace t2d {
namespace {

using serving::ItemIndex;
constexpr int64_t kDim = 64;

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// `count` points of the mixture; the centres depend on nothing, the points on `seed`.
std::vector<float> Mixture(int64_t count, uint64_t seed) {
  constexpr int kCentres = 1000;
  std::mt19937_64 rng(7);
  std::normal_distribution<float> g(0, 1);
  std::vector<float> centres(kCentres * kDim);
  for (auto& c : centres) c = g(rng);
  rng.seed(seed);
  std::uniform_int_distribution<int> pick(0, kCentres - 1);
  std::vector<float> v(static_cast<size_t>(count * kDim));
  for (int64_t i = 0; i < count; ++i) {
    const float* c = &centres[pick(rng) * kDim];
    for (int64_t j = 0; j < kDim; ++j) v[i * kDim + j] = c[j] + g(rng);
  }
  return v;
}

std::vector<serving::Hits> SearchAll(const ItemIndex& index, const std::vector<float>& queries, int k) {
  auto hits = index.Search(queries, static_cast<int64_t>(queries.size()) / kDim, k);
  if (!hits.ok()) {
    std::fprintf(stderr, "search: %s\n", hits.status().ToString().c_str());
    std::exit(1);
  }
  return *std::move(hits);
}

double Recall(const std::vector<serving::Hits>& got, const std::vector<serving::Hits>& exact, size_t k) {
  size_t found = 0, total = 0;
  for (size_t q = 0; q < got.size(); ++q) {
    const auto& truth = exact[q].rows;
    const std::set<int64_t> want(truth.begin(), truth.begin() + static_cast<long>(std::min(k, truth.size())));
    for (size_t i = 0; i < std::min(k, got[q].rows.size()); ++i) found += want.count(got[q].rows[i]);
    total += want.size();
  }
  return static_cast<double>(found) / static_cast<double>(total);
}

// p50 and p99 of one-query searches, in milliseconds.
std::pair<double, double> Latency(const ItemIndex& index, const std::vector<float>& queries, int k) {
  const int64_t nq = static_cast<int64_t>(queries.size()) / kDim;
  std::vector<double> ms;
  for (int64_t q = 0; q < nq; ++q) {
    const auto t0 = std::chrono::steady_clock::now();
    auto hits = index.Search(absl::MakeConstSpan(&queries[q * kDim], kDim), 1, k);
    ms.push_back(Seconds(t0) * 1e3);
    if (!hits.ok()) std::exit(1);
  }
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms[std::min(ms.size() - 1, ms.size() * 99 / 100)]};
}

struct Built {
  std::unique_ptr<ItemIndex> index;
  double seconds = 0;
  long long bytes = 0;
};

Built Build(const std::vector<float>& items, int64_t n, const config::ServingConfig& config) {
  const auto t0 = std::chrono::steady_clock::now();
  auto index = ItemIndex::Build(items, n, kDim, config);
  Built b;
  b.seconds = Seconds(t0);
  if (!index.ok()) {
    std::fprintf(stderr, "build: %s\n", index.status().ToString().c_str());
    std::exit(1);
  }
  b.index = *std::move(index);
  const std::string path = "/tmp/bench_ann." + std::to_string(::getpid()) + ".faiss";
  if (!b.index->Write(path).ok()) std::exit(1);
  b.bytes = static_cast<long long>(std::filesystem::file_size(path));
  std::filesystem::remove(path);
  return b;
}

int Main(int argc, char** argv) {
  int64_t max_n = 1'000'000;
  bool quick = false;
  config::ServingConfig config;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--max-n" && has_value) {
      max_n = std::atoll(argv[++i]);
    } else if (a == "--quick") {
      quick = true;
    } else if (a == "--kind" && has_value) {
      const std::string kind = argv[++i];
      config.set_index_kind(kind == "hnsw" ? config::ServingConfig::HNSW : config::ServingConfig::IVF);
    } else if (a == "--exact-max-items" && has_value) {
      config.set_exact_max_items(std::atoll(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: %s [--max-n N] [--quick] [--kind ivf|hnsw] [--exact-max-items N]\n", argv[0]);
      return 2;
    }
  }
  config::ServingConfig exact;
  exact.set_exact_max_items(INT64_MAX);
  const int64_t nq = quick ? 200 : 1000;
  std::printf("machine: %s\n", bench::MachineDescription().c_str());
  std::printf("items: Gaussian mixture, dim %lld; %lld queries; build threads: all; search: one thread per query\n",
              static_cast<long long>(kDim), static_cast<long long>(nq));
  std::printf("config: index_kind %s, exact_max_items %lld, ivf_lists %d (0: auto), ivf_nprobe %d, hnsw_m %d, "
              "hnsw_ef_construction %d, hnsw_ef_search %d\n",
              config::ServingConfig::IndexKind_Name(config.index_kind()).c_str(),
              static_cast<long long>(config.exact_max_items()), config.ivf_lists(), config.ivf_nprobe(),
              config.hnsw_m(), config.hnsw_ef_construction(), config.hnsw_ef_search());
  const auto queries = Mixture(nq, 2);
  for (int64_t n : {10'000, 100'000, 1'000'000}) {
    if (n > max_n) break;
    const auto items = Mixture(n, 1);
    const Built e = Build(items, n, exact);
    const Built a = Build(items, n, config);
    const auto truth = SearchAll(*e.index, queries, 100);
    const auto got = SearchAll(*a.index, queries, 100);
    const auto el = Latency(*e.index, queries, 100), al = Latency(*a.index, queries, 100);
    std::printf("\nN = %lld: chosen index %s\n", static_cast<long long>(n), a.index->name());
    std::printf("  %-6s build %8.2f s  %8.1f MB  recall@10 %.4f  recall@100 %.4f  latency p50 %7.3f ms  p99 %7.3f ms\n",
                "exact", e.seconds, static_cast<double>(e.bytes) / 1e6, 1.0, 1.0, el.first, el.second);
    std::printf("  %-6s build %8.2f s  %8.1f MB  recall@10 %.4f  recall@100 %.4f  latency p50 %7.3f ms  p99 %7.3f ms\n",
                a.index->name(), a.seconds, static_cast<double>(a.bytes) / 1e6, Recall(got, truth, 10),
                Recall(got, truth, 100), al.first, al.second);
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace
}  // namespace t2d

int main(int argc, char** argv) { return t2d::Main(argc, argv); }
