// Embedding table throughput and memory: a 10-million-row, dim-64 Adagrad table, one thread.
//
//   build/bench/bench_embedding [--rows=N] [google benchmark flags]
//
// Prints lookup and Adagrad-update throughput (rows/s, batches of 4096 ids) for uniformly
// random ids and for Zipf(1.1)-distributed ids, and the resident bytes per stored row against
// the target (payload + optimizer state) x 1.15 + 32; and the finiteness check of a batch's
// gradients (common/finite.h) against a loop of std::isfinite.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "bench/bench_util.h"
#include "common/finite.h"
#include "common/hash.h"
#include "embedding/embedding_table.h"

namespace t2d {
namespace {

constexpr int kDim = 64;
constexpr size_t kBatch = 4096;
constexpr size_t kSampleIds = 1 << 20;
int64_t g_rows = 10'000'000;

// Ids are scattered 64-bit values: rank r of the popularity order maps to Mix64(r).
int64_t IdOfRank(uint64_t r) { return static_cast<int64_t>(Mix64(r)); }

struct World {
  std::unique_ptr<embedding::EmbeddingTable> table;
  std::vector<int64_t> uniform, zipf;
};

World& GetWorld() {
  static World* w = [] {
    auto* world = new World;
    config::TableConfig spec;
    spec.set_name("item");
    spec.set_dim(kDim);
    spec.mutable_optimizer()->set_kind(config::SparseOptimizerConfig::ADAGRAD);
    world->table = *embedding::EmbeddingTable::Create(spec);
    const long long rss0 = bench::ResidentBytes();
    std::vector<int64_t> ids(kBatch);
    std::vector<float> grads(kBatch * kDim, 0.001f);
    for (int64_t r = 0; r < g_rows; r += static_cast<int64_t>(kBatch)) {
      const size_t n = static_cast<size_t>(std::min<int64_t>(static_cast<int64_t>(kBatch), g_rows - r));
      for (size_t i = 0; i < n; ++i) ids[i] = IdOfRank(static_cast<uint64_t>(r) + i);
      if (!world->table->ApplyGradients(absl::MakeSpan(ids.data(), n), absl::MakeSpan(grads.data(), n * kDim)).ok()) {
        std::abort();
      }
    }
    const long long rss1 = bench::ResidentBytes();
    const double payload = kDim * 4.0 * 2;  // weights + Adagrad accumulators
    const double per_row = static_cast<double>(rss1 - rss0) / static_cast<double>(g_rows);
    std::printf("machine: %s\n", bench::MachineDescription().c_str());
    std::printf("table: %lld rows, dim %d, Adagrad (payload + state %.0f bytes/row)\n",
                static_cast<long long>(world->table->size()), kDim, payload);
    std::printf("resident bytes per row: %.1f (accounted %.1f); target <= %.1f -> %s\n", per_row,
                static_cast<double>(world->table->MemoryBytes()) / static_cast<double>(g_rows),
                payload * 1.15 + 32, per_row <= payload * 1.15 + 32 ? "met" : "NOT met");

    SplitMix64 rng(7);
    world->uniform.resize(kSampleIds);
    for (auto& id : world->uniform) id = IdOfRank(rng.Next() % static_cast<uint64_t>(g_rows));
    // Zipf(1.1) by inverting the CDF over ranks 1..rows.
    std::vector<double> cdf(static_cast<size_t>(g_rows));
    double acc = 0;
    for (int64_t k = 0; k < g_rows; ++k) cdf[static_cast<size_t>(k)] = acc += std::pow(static_cast<double>(k + 1), -1.1);
    world->zipf.resize(kSampleIds);
    for (auto& id : world->zipf) {
      const double u = rng.NextDouble() * acc;
      id = IdOfRank(static_cast<uint64_t>(std::lower_bound(cdf.begin(), cdf.end(), u) - cdf.begin()));
    }
    size_t distinct_in_batch = 0;
    {
      std::vector<int64_t> b(world->zipf.begin(), world->zipf.begin() + kBatch);
      std::sort(b.begin(), b.end());
      distinct_in_batch = static_cast<size_t>(std::unique(b.begin(), b.end()) - b.begin());
    }
    std::printf("zipf(1.1) batch of %zu ids has %zu distinct ids\n", kBatch, distinct_in_batch);
    std::fflush(stdout);
    return world;
  }();
  return *w;
}

void BM_Lookup(benchmark::State& state) {
  World& w = GetWorld();
  const auto& ids = state.range(0) == 0 ? w.uniform : w.zipf;
  std::vector<float> out(kBatch * kDim);
  size_t off = 0;
  for (auto _ : state) {
    auto s = w.table->Lookup(absl::MakeConstSpan(ids.data() + off, kBatch), absl::MakeSpan(out));
    benchmark::DoNotOptimize(out.data());
    if (!s.ok()) state.SkipWithError("lookup failed");
    off = (off + kBatch) % (kSampleIds - kBatch);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kBatch));
  state.SetLabel(state.range(0) == 0 ? "uniform ids" : "zipf(1.1) ids");
}

void BM_AdagradUpdate(benchmark::State& state) {
  World& w = GetWorld();
  const auto& ids = state.range(0) == 0 ? w.uniform : w.zipf;
  std::vector<float> grads(kBatch * kDim, 1e-4f);
  size_t off = 0;
  for (auto _ : state) {
    auto s = w.table->ApplyGradients(absl::MakeConstSpan(ids.data() + off, kBatch), grads);
    if (!s.ok()) state.SkipWithError("update failed");
    off = (off + kBatch) % (kSampleIds - kBatch);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kBatch));
  state.SetLabel(state.range(0) == 0 ? "uniform ids" : "zipf(1.1) ids");
}

// The finiteness check every push makes of its gradients (three times on the way to a server):
// common/finite.h against a plain loop of std::isfinite, on one batch's gradients.
void BM_FiniteCheck(benchmark::State& state) {
  const std::vector<float> grads(kBatch * kDim, 1e-4f);
  size_t found = 0;
  for (auto _ : state) {
    if (state.range(0) == 0) {
      found += FirstNonFinite(grads);
    } else {
      size_t i = 0;
      while (i < grads.size() && std::isfinite(grads[i])) ++i;
      found += i;
    }
    benchmark::ClobberMemory();
  }
  benchmark::DoNotOptimize(found);
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * grads.size()));
  state.SetLabel(state.range(0) == 0 ? "FirstNonFinite" : "std::isfinite loop");
}

BENCHMARK(BM_Lookup)->Arg(0)->Arg(1)->MinTime(2.0);
BENCHMARK(BM_FiniteCheck)->Arg(0)->Arg(1)->MinTime(1.0);
BENCHMARK(BM_AdagradUpdate)->Arg(0)->Arg(1)->MinTime(2.0);

}  // namespace
}  // namespace t2d

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--rows=", 7) == 0) t2d::g_rows = std::atoll(argv[i] + 7);
  }
  benchmark::Initialize(&argc, argv);
  t2d::GetWorld();  // populate (and print memory) before timing starts
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
