// Parameter-server throughput, run under mpirun (ranks 0..S-1 serve, the rest are workers):
//   mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 build/bench/bench_ps --servers=1
//   mpirun --allow-run-as-root --oversubscribe --bind-to none -np 3 build/bench/bench_ps --servers=1
// Prints, for dim-64 rows (Adagrad) and batches of 4096 unique Zipf-distributed ids over 10M ids:
//   * pull through the servers (all workers together), waited at once and with one batch
//     prefetched ahead (Pull -> ticket, Wait), against the in-process LocalEmbeddingStore's
//     Lookup on the first worker over the same batches: alternating rounds, each round's ratio
//     and their median, and the first worker's time a batch in Pull (grouping the ids and
//     sending the requests) and in Wait (the servers' lookups, the transfer, placing the rows);
//   * push through the servers against the in-process ApplyGradients;
//   * the allreduce of 10 MB of floats across the workers (algorithm bandwidth, GB/s), through
//     MpiCommunicator's shared-memory window (the default on one host) and through
//     MPI_Iallreduce, alternating, in the same run.
// Figures are printed, never asserted.

#include <mpi.h>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "bench/bench_util.h"
#include "bench/ps_bench_util.h"
#include "comm/mpi_communicator.h"
#include "comm/mpi_session.h"
#include "common/status_macros.h"
#include "embedding/local_embedding_store.h"
#include "ps/remote_embedding_store.h"

namespace t2d {
namespace {

struct Flags {
  int servers = 1;
  int64_t num_rows = 10'000'000;
  int dim = 64;
  int batch = 4096;
  int batches = 64;     // distinct batches per worker (cycled)
  int iterations = 300; // timed batches per phase and worker
  int rounds = 5;        // alternating rounds of the pull comparison
  double zipf = 1.05;
  std::string mode = "sync";
  int64_t pull_piece_kb = ps::PsOptions().pull_piece_bytes >> 10;
};

std::vector<std::vector<int64_t>> MakeBatches(const Flags& f, uint64_t seed) {
  return bench::ZipfBatches(f.num_rows, f.zipf, f.batch, f.batches, seed);
}

using bench::Median;
using bench::Phase;
using bench::RowsPerSecond;
using bench::Soon;

absl::Status Worker(const Flags& f, ps::RemoteEmbeddingStore& store, comm::Communicator& comm, MPI_Comm worker_mpi,
                    const std::vector<config::TableConfig>& tables) {
  const bool report = comm.rank() == 0;
  const auto batches = MakeBatches(f, 1000 + static_cast<uint64_t>(comm.rank()));
  const size_t row_floats = static_cast<size_t>(f.batch) * static_cast<size_t>(f.dim);
  std::vector<float> rows(row_floats), rows2(row_floats);
  std::vector<float> grads(row_floats);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 0.01f);
  for (float& g : grads) g = normal(rng);
  const int64_t timed_rows = int64_t{f.iterations} * f.batch;

  // The in-process baseline is a LocalEmbeddingStore on the first worker holding the same rows.
  std::unique_ptr<embedding::LocalEmbeddingStore> local;
  if (report) {
    T2D_ASSIGN_OR_RETURN(local, embedding::LocalEmbeddingStore::Create(tables));
    for (const auto& b : batches) T2D_RETURN_IF_ERROR(local->ApplyGradients(0, b, grads));
  }
  // Warm-up: the servers store every row once, so both sides read stored rows.
  for (const auto& b : batches) T2D_RETURN_IF_ERROR(store.ApplyGradients(0, b, grads));
  T2D_RETURN_IF_ERROR(store.Flush());

  // Pull: `rounds` rounds, each timing the in-process lookup (first worker; the others wait),
  // the pull through the servers and the pull with one batch prefetched, back to back, so that
  // each round's ratios compare runs seconds apart on this shared machine.
  std::vector<double> local_pulls, pulls, prefetched, send_us, wait_us;
  for (int round = 0; round < f.rounds; ++round) {
    T2D_RETURN_IF_ERROR(comm.Barrier(Soon()));
    if (report) {
      const absl::Time t0 = absl::Now();
      for (int i = 0; i < f.iterations; ++i) {
        T2D_RETURN_IF_ERROR(local->Lookup(0, batches[static_cast<size_t>(i % f.batches)], absl::MakeSpan(rows)));
      }
      local_pulls.push_back(RowsPerSecond(timed_rows, absl::Now() - t0));
    }
    absl::Duration sending, waiting;  // this worker's, in the pull waited at once
    T2D_ASSIGN_OR_RETURN(const double pull, Phase(comm, timed_rows, [&]() -> absl::Status {
      for (int i = 0; i < f.iterations; ++i) {
        // Lookup is Pull then Wait; timed apart: the worker's own work on the requests, and the
        // wait for the rows (the server's lookups, the transfer, placing the rows).
        const absl::Time t0 = absl::Now();
        T2D_ASSIGN_OR_RETURN(auto ticket, store.Pull(0, batches[static_cast<size_t>(i % f.batches)]));
        const absl::Time t1 = absl::Now();
        T2D_RETURN_IF_ERROR(store.Wait(ticket, absl::MakeSpan(rows)));
        sending += t1 - t0;
        waiting += absl::Now() - t1;
      }
      return absl::OkStatus();
    }));
    pulls.push_back(pull);
    send_us.push_back(absl::ToDoubleMicroseconds(sending) / f.iterations);
    wait_us.push_back(absl::ToDoubleMicroseconds(waiting) / f.iterations);
    T2D_ASSIGN_OR_RETURN(const double pull_prefetch, Phase(comm, timed_rows, [&]() -> absl::Status {
      T2D_ASSIGN_OR_RETURN(auto ticket, store.Pull(0, batches[0]));
      for (int i = 0; i < f.iterations; ++i) {
        ps::RemoteEmbeddingStore::Ticket next = 0;
        if (i + 1 < f.iterations) {
          T2D_ASSIGN_OR_RETURN(next, store.Pull(0, batches[static_cast<size_t>((i + 1) % f.batches)]));
        }
        T2D_RETURN_IF_ERROR(store.Wait(ticket, absl::MakeSpan(i % 2 ? rows : rows2)));
        ticket = next;
      }
      return absl::OkStatus();
    }));
    prefetched.push_back(pull_prefetch);
  }
  double local_push = 0;
  if (report) {
    const absl::Time t0 = absl::Now();
    for (int i = 0; i < f.iterations; ++i) {
      T2D_RETURN_IF_ERROR(local->ApplyGradients(0, batches[static_cast<size_t>(i % f.batches)], grads));
    }
    local_push = RowsPerSecond(timed_rows, absl::Now() - t0);
  }
  T2D_ASSIGN_OR_RETURN(const double push, Phase(comm, timed_rows, [&]() -> absl::Status {
    for (int i = 0; i < f.iterations; ++i) {
      T2D_RETURN_IF_ERROR(store.ApplyGradients(0, batches[static_cast<size_t>(i % f.batches)], grads));
    }
    T2D_RETURN_IF_ERROR(store.Flush());
    // Sync mode: acknowledged is not yet applied; a pull waits for the last round.
    return store.Lookup(0, batches[0], absl::MakeSpan(rows));
  }));

  // Best of 3 alternating rounds of 20 allreduces per path.
  double window_gbs = 0, messages_gbs = 0;
  bool window_used = false;
  if (comm.size() > 1) {
    T2D_ASSIGN_OR_RETURN(auto window, comm::MpiCommunicator::Create(worker_mpi));
    comm::MpiCommunicator::Options off;
    off.shared_memory_bytes = 0;
    T2D_ASSIGN_OR_RETURN(auto messages, comm::MpiCommunicator::Create(worker_mpi, off));
    window_used = window->uses_shared_memory();
    std::vector<float> dense((10u << 20) / sizeof(float), 1.0f);
    for (int round = 0; round < 3; ++round) {
      for (comm::MpiCommunicator* c : {window.get(), messages.get()}) {
        for (int i = 0; i < 3; ++i) T2D_RETURN_IF_ERROR(c->AllReduceSum(absl::MakeSpan(dense), Soon()));
        T2D_RETURN_IF_ERROR(c->Barrier(Soon()));
        constexpr int kReps = 20;
        const absl::Time t0 = absl::Now();
        for (int i = 0; i < kReps; ++i) T2D_RETURN_IF_ERROR(c->AllReduceSum(absl::MakeSpan(dense), Soon()));
        const double gbs = 10.0 * (1 << 20) * kReps / absl::ToDoubleSeconds(absl::Now() - t0) / 1e9;
        double& best = c == window.get() ? window_gbs : messages_gbs;
        best = std::max(best, gbs);
      }
    }
  }
  if (report) {
    std::printf("machine: %s\n", bench::MachineDescription().c_str());
    std::printf("job: %d server(s) + %d worker(s), %s mode; dim %d, Adagrad, batches of %d unique ids, Zipf(%.2f) over %lld ids, %d timed batches per worker\n",
                f.servers, comm.size(), f.mode.c_str(), f.dim, f.batch, f.zipf, static_cast<long long>(f.num_rows),
                f.iterations);
    std::printf("pull in pieces of at most %lld KiB of rows per request\n", static_cast<long long>(f.pull_piece_kb));
    std::vector<double> ratio, ratio_prefetched;
    for (int r = 0; r < f.rounds; ++r) {
      const size_t i = static_cast<size_t>(r);
      ratio.push_back(pulls[i] / local_pulls[i]);
      ratio_prefetched.push_back(prefetched[i] / local_pulls[i]);
      std::printf("round %d: in-process lookup (1 thread) %.2f M rows/s; through the server(s), all workers: pull %.2f M rows/s "
                  "(%.0f%%; a batch: %.1f us sending, %.1f us waiting), with 1 batch prefetched %.2f M rows/s (%.0f%%)\n",
                  r + 1, local_pulls[i] / 1e6, pulls[i] / 1e6, 100 * ratio.back(), send_us[i], wait_us[i],
                  prefetched[i] / 1e6, 100 * ratio_prefetched.back());
    }
    std::printf("through the server(s), all workers:       pull   %.2f M rows/s (median of %d rounds; of in-process, median of the rounds' ratios: %.0f%%)\n",
                Median(pulls) / 1e6, f.rounds, 100 * Median(ratio));
    std::printf("                                           pull with 1 batch prefetched %.2f M rows/s (%.0f%%)\n",
                Median(prefetched) / 1e6, 100 * Median(ratio_prefetched));
    std::printf("                                           push   %.2f M rows/s (%.0f%% of in-process apply, %.2f M rows/s)\n",
                push / 1e6, 100 * push / local_push, local_push / 1e6);
    if (comm.size() > 1) {
      const char* single_copy = std::getenv("OMPI_MCA_btl_vader_single_copy_mechanism");
      std::printf("allreduce 10 MB floats across %d workers (best of 3 alternating rounds; "
                  "btl_vader_single_copy_mechanism=%s):\n",
                  comm.size(), single_copy != nullptr ? single_copy : "(default)");
      std::printf("  shared-memory window: %.2f GB/s%s\n", window_gbs,
                  window_used ? "" : " (not used: the workers are not on one host)");
      std::printf("  MPI_Iallreduce:       %.2f GB/s (window / MPI: %.2fx)\n", messages_gbs, window_gbs / messages_gbs);
    } else {
      std::printf("allreduce: needs 2 or more workers\n");
    }
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace t2d

int main(int argc, char** argv) {
  using namespace t2d;
  auto session = comm::MpiSession::Create(&argc, &argv);
  if (!session.ok()) {
    std::fprintf(stderr, "%s\n", session.status().ToString().c_str());
    return 1;
  }
  Flags f;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto eq = a.find('=');
    const std::string key = eq == std::string::npos ? a : a.substr(0, eq), value = eq == std::string::npos ? "" : a.substr(eq + 1);
    if (key == "--servers") f.servers = std::stoi(value);
    else if (key == "--iterations") f.iterations = std::stoi(value);
    else if (key == "--rounds") f.rounds = std::max(1, std::stoi(value));
    else if (key == "--mode") f.mode = value;
    else if (key == "--zipf") f.zipf = std::stod(value);
    else if (key == "--pull_piece_kb") f.pull_piece_kb = std::stoll(value);
    else {
      std::fprintf(stderr, "unknown flag %s (known: --servers= --iterations= --rounds= --mode=sync|async --zipf= --pull_piece_kb=)\n", a.c_str());
      comm::MpiSession::Abort(2);
    }
  }
  std::vector<config::TableConfig> tables(1);
  tables[0].set_name("bench");
  tables[0].set_dim(f.dim);
  ps::PsOptions options;
  options.consistency = f.mode == "async" ? ps::Consistency::kAsync : ps::Consistency::kSync;
  options.staleness = 2;
  options.pull_piece_bytes = f.pull_piece_kb << 10;
  options.timeout = absl::Seconds(120);
  bench::RunPsJob(**session, f.servers, tables, options,
                  [&](ps::RemoteEmbeddingStore& store, comm::Communicator& comm, MPI_Comm worker_mpi) {
                    return Worker(f, store, comm, worker_mpi, tables);
                  });
  return 0;
}
