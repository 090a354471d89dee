#pragma once
// Helpers shared by the parameter-server benchmarks (bench_ps, bench_ps_tables): the MPI job
// (servers and workers), Zipf id batches and a timed phase across the workers.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include <mpi.h>

#include <cstdio>
#include <functional>
#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "comm/communicator.h"
#include "comm/communicator_factory.h"
#include "comm/mpi_session.h"
#include "comm/mpi_transport.h"
#include "comm/roles.h"
#include "common/status_macros.h"
#include "embedding/local_embedding_store.h"
#include "glog/logging.h"
#include "ps/remote_embedding_store.h"
#include "ps/shard_server.h"

namespace t2d::bench {

// Zipf(s) over {1..n} by rejection-inversion (Hormann and Derflinger 1996), O(1) memory.
class ZipfSampler {
 public:
  ZipfSampler(int64_t n, double s) : n_(static_cast<double>(n)), s_(s) {
    h_x1_ = HIntegral(1.5) - 1.0;
    h_n_ = HIntegral(n_ + 0.5);
    sv_ = 2.0 - HIntegralInverse(HIntegral(2.5) - H(2.0));
  }
  template <typename Rng>
  int64_t operator()(Rng& rng) {
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    while (true) {
      const double u = h_n_ + uniform(rng) * (h_x1_ - h_n_);
      const double x = HIntegralInverse(u);
      double k = std::floor(x + 0.5);
      k = std::min(std::max(k, 1.0), n_);
      if (k - x <= sv_ || u >= HIntegral(k + 0.5) - H(k)) return static_cast<int64_t>(k);
    }
  }

 private:
  static double Helper1(double x) { return std::abs(x) > 1e-8 ? std::log1p(x) / x : 1 - x * (0.5 - x * (1.0 / 3 - 0.25 * x)); }
  static double Helper2(double x) { return std::abs(x) > 1e-8 ? std::expm1(x) / x : 1 + x * 0.5 * (1 + x / 3 * (1 + 0.25 * x)); }
  double H(double x) const { return std::exp(-s_ * std::log(x)); }
  double HIntegral(double x) const {
    const double lx = std::log(x);
    return Helper2((1 - s_) * lx) * lx;
  }
  double HIntegralInverse(double x) const {
    double t = x * (1 - s_);
    if (t < -1) t = -1;
    return std::exp(Helper1(t) * x);
  }
  double n_, s_, h_x1_, h_n_, sv_;
};

// `count` batches of `batch` distinct ids drawn Zipf(s) over {0..n-1} (id 0 the most frequent).
// REQUIRES: batch well below n (2 x batch <= n): distinct draws of a Zipf tail take long.
inline std::vector<std::vector<int64_t>> ZipfBatches(int64_t n, double s, int batch, int count, uint64_t seed) {
  ZipfSampler zipf(n, s);
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int64_t>> out(static_cast<size_t>(count));
  for (auto& b : out) {
    absl::flat_hash_set<int64_t> seen;
    while (static_cast<int>(b.size()) < batch) {
      const int64_t id = zipf(rng) - 1;
      if (seen.insert(id).second) b.push_back(id);
    }
  }
  return out;
}

inline double RowsPerSecond(int64_t rows, absl::Duration d) { return static_cast<double>(rows) / absl::ToDoubleSeconds(d); }

inline absl::Time Soon() { return absl::Now() + absl::Seconds(300); }

// Timed phase on every worker (`fn` on each, started together); returns the aggregate rate (all workers' rows / slowest time).
template <typename Fn>
absl::StatusOr<double> Phase(comm::Communicator& comm, int64_t rows_per_worker, Fn fn) {
  T2D_RETURN_IF_ERROR(comm.Barrier(Soon()));
  const absl::Time start = absl::Now();
  T2D_RETURN_IF_ERROR(fn());
  double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  // The slowest worker defines the time: each rank fills its own slot, and a sum gathers them.
  std::vector<double> times(static_cast<size_t>(comm.size()), 0.0);
  times[static_cast<size_t>(comm.rank())] = seconds;
  T2D_RETURN_IF_ERROR(comm.AllReduceSum(absl::MakeSpan(times), Soon()));
  seconds = *std::max_element(times.begin(), times.end());
  return static_cast<double>(rows_per_worker) * comm.size() / seconds;
}

// The worker side of a benchmark: the store of the servers, the workers' communicator and their
// MPI communicator (for benchmarks that build their own).
using PsWorkerFn = std::function<absl::Status(ps::RemoteEmbeddingStore&, comm::Communicator&, MPI_Comm)>;

// Runs one benchmark job on MPI_COMM_WORLD: ranks 0..servers-1 serve their shards of `tables`,
// the others run `worker` and then shut the store down. `options.roles` is filled here. A bad
// role split exits with 2, any rank's error aborts the job with 1 (naming the rank).
inline void RunPsJob(comm::MpiSession& session, int servers, const std::vector<config::TableConfig>& tables,
                     ps::PsOptions options, const PsWorkerFn& worker) {
  auto roles = comm::AssignRoles(session.size(), servers);
  if (!roles.ok()) {
    std::fprintf(stderr, "%s\n", roles.status().ToString().c_str());
    comm::MpiSession::Abort(2);
  }
  options.roles = *roles;
  absl::Status status;
  {
    auto worker_comm = session.SplitWorkers(*roles);
    auto transport = comm::MpiTransport::Create(MPI_COMM_WORLD);
    CHECK(worker_comm.ok() && transport.ok());
    const int rank = session.rank();
    if (roles->IsServer(rank)) {
      auto store = embedding::LocalEmbeddingStore::Create(tables, rank, servers);
      CHECK(store.ok());
      ps::ShardServer server(transport->get(), store->get(), options);
      status = server.Run();
    } else {
      auto comm = comm::MakeCommunicator("mpi", *worker_comm, absl::Now() + absl::Seconds(60));
      CHECK(comm.ok());
      ps::RemoteEmbeddingStore store(transport->get(), tables, options);
      status = worker(store, **comm, *worker_comm);
      if (status.ok()) status = store.Shutdown();
    }
  }
  if (!status.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", session.rank(), status.ToString().c_str());
    comm::MpiSession::Abort(1);
  }
}

}  // namespace t2d::bench
