// Parameter servers holding industrial-size tables, run under mpirun (ranks 0..S-1 serve, the
// rest are workers):
//   mpirun --allow-run-as-root --oversubscribe --bind-to none -np 6 build/bench/bench_ps_tables
//       --servers=4 --user_rows=100000000 --item_rows=1000000 --checkpoint=/tmp/t2d-tables
//   mpirun ... -np 6 build/bench/bench_ps_tables --servers=4 --user_rows=... --load=/tmp/t2d-tables
// Two tables, both row-wise Adagrad: "user_id" (dim 16) and "item_id" (dim 64), named as a job's
// tables so that a job can warm-start from the saved shard set (`init_from`). Phases:
//   1. in-process baseline (first worker, while the servers are empty): one LocalEmbeddingStore
//      with the same tables, every row stored by bulk ApplyGradients, then Zipf batches of
//      distinct ids looked up and updated; its resident memory per row; then freed;
//   2. the servers' tables filled: by bulk pushes of every id through the parameter-server client
//      (the workers split the ids), or with --load by loading a shard set (timed, GB/s);
//   3. per server, from STATS: rows and bytes of each table shard, process RSS and peak; their
//      total against the bound rows x (payload + state) x 1.15 + 32 B per row;
//   4. pull and push of the same Zipf batches through the servers (all workers together);
//   5. with --checkpoint, the servers save their shards there (timed, GB/s).
// The last line, "json {...}", carries every figure for bench/scale/run_scale.py. Figures are
// printed, never asserted.

#include <malloc.h>
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "bench/bench_util.h"
#include "bench/ps_bench_util.h"
#include "comm/mpi_session.h"
#include "common/process_memory.h"
#include "common/status_macros.h"
#include "embedding/local_embedding_store.h"
#include "embedding/sparse_optimizer.h"
#include "ps/remote_embedding_store.h"

namespace t2d {
namespace {

namespace fs = std::filesystem;

struct Flags {
  int servers = 4;
  int64_t user_rows = 100'000'000;
  int user_dim = 16;
  int64_t item_rows = 1'000'000;
  int item_dim = 64;
  int fill_batch = 65536;  // ids per bulk push
  int batch = 4096;        // distinct ids per timed pull or push
  int batches = 32;        // distinct batches per worker and table (cycled)
  int iterations = 100;    // timed batches per phase, worker and table
  double zipf = 1.05;
  std::string checkpoint;  // save the servers' shards here after the timed phases
  std::string load;        // fill the servers by loading this shard set instead of pushing
  bool local = true;       // measure the in-process baseline
};

// Long phases (filling 10^8 rows) must not trip the barriers' deadlines.
absl::Time Later() { return absl::Now() + absl::Hours(2); }

std::vector<config::TableConfig> Tables(const Flags& f) {
  std::vector<config::TableConfig> tables(2);
  tables[0].set_name("user_id");
  tables[0].set_dim(f.user_dim);
  tables[1].set_name("item_id");
  tables[1].set_dim(f.item_dim);
  for (auto& t : tables) {
    t.mutable_optimizer()->set_kind(config::SparseOptimizerConfig::ROWWISE_ADAGRAD);
    t.mutable_optimizer()->set_learning_rate(0.05f);
  }
  return tables;
}

int64_t RowsOf(const Flags& f, int table) { return table == 0 ? f.user_rows : f.item_rows; }

// Bytes of weights and optimizer state of one row: the "payload + state" of the memory bound.
int64_t PayloadBytes(const config::TableConfig& t) {
  return 4 * int64_t{t.dim() + embedding::SparseOptimizer::StateFloats(t.optimizer().kind(), t.dim())};
}

// Stores every id of every table: in round r worker w (of W) pushes ids [(rW + w)B, (rW + w + 1)B).
// Every worker makes the same number of calls per table (sync mode's rounds); the last may be empty.
absl::Status Fill(const Flags& f, embedding::EmbeddingStore& store, int worker, int workers) {
  const int64_t b = f.fill_batch;
  std::vector<int64_t> ids;
  std::vector<float> grads;
  for (int t = 0; t < store.num_tables(); ++t) {
    const int64_t n = RowsOf(f, t);
    const int64_t rounds = (n + b * workers - 1) / (b * workers);
    grads.assign(static_cast<size_t>(b * store.dim(t)), 0.01f);
    for (int64_t r = 0; r < rounds; ++r) {
      const int64_t lo = std::min(n, (r * workers + worker) * b), hi = std::min(n, lo + b);
      ids.resize(static_cast<size_t>(hi - lo));
      for (int64_t i = lo; i < hi; ++i) ids[static_cast<size_t>(i - lo)] = i;
      T2D_RETURN_IF_ERROR(store.ApplyGradients(
          t, ids, absl::MakeConstSpan(grads.data(), ids.size() * static_cast<size_t>(store.dim(t)))));
    }
  }
  return absl::OkStatus();
}

int64_t FolderBytes(const std::string& dir) {
  int64_t bytes = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_regular_file()) bytes += static_cast<int64_t>(e.file_size());
  }
  return bytes;
}

struct Rates {  // rows/s per table
  double pull[2] = {0, 0}, push[2] = {0, 0};
};

struct Local {
  double fill_rows_s = 0;
  double rss_bytes_per_row = 0;
  double table_bytes_per_row = 0;
  Rates rates;
};

// Phase 1, on the first worker only.
absl::StatusOr<Local> InProcess(const Flags& f, const std::vector<config::TableConfig>& tables,
                                const std::vector<std::vector<int64_t>> (&batches)[2]) {
  Local out;
  T2D_ASSIGN_OR_RETURN(const ProcessMemory before, ReadProcessMemory());
  {
    T2D_ASSIGN_OR_RETURN(auto store, embedding::LocalEmbeddingStore::Create(tables));
    absl::Time t0 = absl::Now();
    T2D_RETURN_IF_ERROR(Fill(f, *store, 0, 1));
    const int64_t rows = f.user_rows + f.item_rows;
    out.fill_rows_s = bench::RowsPerSecond(rows, absl::Now() - t0);
    T2D_ASSIGN_OR_RETURN(const ProcessMemory after, ReadProcessMemory());
    T2D_ASSIGN_OR_RETURN(const auto stats, store->Stats());
    int64_t table_bytes = 0;
    for (const auto& s : stats) table_bytes += s.memory_bytes;
    out.rss_bytes_per_row = static_cast<double>(after.rss_bytes - before.rss_bytes) / static_cast<double>(rows);
    out.table_bytes_per_row = static_cast<double>(table_bytes) / static_cast<double>(rows);
    for (int t = 0; t < 2; ++t) {
      const size_t floats = static_cast<size_t>(f.batch) * static_cast<size_t>(tables[static_cast<size_t>(t)].dim());
      std::vector<float> rows_out(floats), grads(floats, 0.001f);
      const int64_t timed = int64_t{f.iterations} * f.batch;
      t0 = absl::Now();
      for (int i = 0; i < f.iterations; ++i) {
        T2D_RETURN_IF_ERROR(store->Lookup(t, batches[t][static_cast<size_t>(i % f.batches)], absl::MakeSpan(rows_out)));
      }
      out.rates.pull[t] = bench::RowsPerSecond(timed, absl::Now() - t0);
      t0 = absl::Now();
      for (int i = 0; i < f.iterations; ++i) {
        T2D_RETURN_IF_ERROR(store->ApplyGradients(t, batches[t][static_cast<size_t>(i % f.batches)], grads));
      }
      out.rates.push[t] = bench::RowsPerSecond(timed, absl::Now() - t0);
    }
  }
  malloc_trim(0);  // hand the baseline's blocks back before the servers fill theirs
  return out;
}

absl::Status Worker(const Flags& f, ps::RemoteEmbeddingStore& store, comm::Communicator& comm) {
  const bool report = comm.rank() == 0;
  const auto tables = Tables(f);
  std::vector<std::vector<int64_t>> batches[2];
  for (int t = 0; t < 2; ++t) {
    batches[t] = bench::ZipfBatches(RowsOf(f, t), f.zipf, f.batch, f.batches, 1000 + 10 * static_cast<uint64_t>(comm.rank()) + t);
  }
  Local local;
  if (report && f.local) {
    T2D_ASSIGN_OR_RETURN(local, InProcess(f, tables, batches));
  }
  T2D_RETURN_IF_ERROR(comm.Barrier(Later()));

  // Phase 2: fill the servers.
  double fill_seconds = 0, load_gbs = 0;
  int64_t load_bytes = 0;
  const absl::Time t0 = absl::Now();
  if (f.load.empty()) {
    T2D_RETURN_IF_ERROR(Fill(f, store, comm.rank(), comm.size()));
    T2D_RETURN_IF_ERROR(store.Flush());
    std::vector<float> one(static_cast<size_t>(f.user_dim));
    T2D_RETURN_IF_ERROR(store.Lookup(0, std::vector<int64_t>{0}, absl::MakeSpan(one)));  // the last round is applied
  } else if (report) {
    T2D_RETURN_IF_ERROR(store.Load(f.load));
    load_bytes = FolderBytes(f.load);
  }
  T2D_RETURN_IF_ERROR(comm.Barrier(Later()));
  fill_seconds = absl::ToDoubleSeconds(absl::Now() - t0);
  if (!f.load.empty()) load_gbs = static_cast<double>(load_bytes) / fill_seconds / 1e9;

  // Phase 3: the servers' memory.
  std::vector<ps::ServerStatsProto> servers;
  if (report) {
    T2D_ASSIGN_OR_RETURN(servers, store.ServerStats());
  }

  // Phase 4: timed pulls and pushes of Zipf batches, per table.
  Rates remote;
  const int64_t timed = int64_t{f.iterations} * f.batch;
  for (int t = 0; t < 2; ++t) {
    const size_t floats = static_cast<size_t>(f.batch) * static_cast<size_t>(tables[static_cast<size_t>(t)].dim());
    std::vector<float> rows(floats), rows2(floats), grads(floats, 0.001f);
    T2D_ASSIGN_OR_RETURN(remote.pull[t], bench::Phase(comm, timed, [&]() -> absl::Status {
      // One batch prefetched ahead, as the trainer's async mode pulls.
      T2D_ASSIGN_OR_RETURN(auto ticket, store.Pull(t, batches[t][0]));
      for (int i = 0; i < f.iterations; ++i) {
        ps::RemoteEmbeddingStore::Ticket next = 0;
        if (i + 1 < f.iterations) {
          T2D_ASSIGN_OR_RETURN(next, store.Pull(t, batches[t][static_cast<size_t>((i + 1) % f.batches)]));
        }
        T2D_RETURN_IF_ERROR(store.Wait(ticket, absl::MakeSpan(i % 2 ? rows : rows2)));
        ticket = next;
      }
      return absl::OkStatus();
    }));
    T2D_ASSIGN_OR_RETURN(remote.push[t], bench::Phase(comm, timed, [&]() -> absl::Status {
      for (int i = 0; i < f.iterations; ++i) {
        T2D_RETURN_IF_ERROR(store.ApplyGradients(t, batches[t][static_cast<size_t>(i % f.batches)], grads));
      }
      T2D_RETURN_IF_ERROR(store.Flush());
      return store.Lookup(t, batches[t][0], absl::MakeSpan(rows));
    }));
  }

  // Phase 5: save.
  double save_seconds = 0;
  int64_t save_bytes = 0;
  if (report && !f.checkpoint.empty()) {
    fs::create_directories(f.checkpoint);
    for (const auto& e : fs::directory_iterator(f.checkpoint)) fs::remove_all(e.path());
    const absl::Time s0 = absl::Now();
    T2D_RETURN_IF_ERROR(store.Save(f.checkpoint));
    save_seconds = absl::ToDoubleSeconds(absl::Now() - s0);
    save_bytes = FolderBytes(f.checkpoint);
  }
  T2D_RETURN_IF_ERROR(comm.Barrier(Later()));
  if (!report) return absl::OkStatus();

  // Report.
  std::printf("machine: %s\n", bench::MachineDescription().c_str());
  std::printf("job: %d servers + %d workers; tables (row-wise Adagrad): user %lld rows x dim %d, item %lld rows x dim %d\n",
              f.servers, comm.size(), static_cast<long long>(f.user_rows), f.user_dim, static_cast<long long>(f.item_rows),
              f.item_dim);
  const char* names[2] = {"user", "item"};
  double bound = 0;
  for (int t = 0; t < 2; ++t) {
    bound += static_cast<double>(RowsOf(f, t)) * (static_cast<double>(PayloadBytes(tables[static_cast<size_t>(t)])) * 1.15 + 32);
  }
  if (f.local) {
    std::printf("in-process table (1 thread): filled %.2f M rows/s; %.1f B/row resident (%.1f B/row by the table's account)\n",
                local.fill_rows_s / 1e6, local.rss_bytes_per_row, local.table_bytes_per_row);
  }
  if (f.load.empty()) {
    std::printf("servers filled by bulk pushes: %.1f s, %.2f M rows/s\n",
                fill_seconds, static_cast<double>(f.user_rows + f.item_rows) / fill_seconds / 1e6);
  } else {
    std::printf("servers loaded the shard set %s: %.1f s, %.2f GB, %.2f GB/s\n", f.load.c_str(), fill_seconds,
                static_cast<double>(load_bytes) / 1e9, load_gbs);
  }
  double total_rss = 0;
  int64_t total_rows[2] = {0, 0};
  std::string servers_json;
  for (const auto& s : servers) {
    std::string line = absl::StrFormat("server %d: RSS %.2f GB (peak %.2f GB)", s.shard(), s.rss_bytes() / 1e9,
                                       s.peak_rss_bytes() / 1e9);
    std::string tables_json;
    for (int t = 0; t < s.tables_size(); ++t) {
      const auto& ts = s.tables(t);
      total_rows[t] += ts.rows();
      const double per_row = ts.rows() > 0 ? static_cast<double>(ts.memory_bytes()) / static_cast<double>(ts.rows()) : 0;
      absl::StrAppendFormat(&line, "; %s %d rows, %.2f GB, %.1f B/row (payload + state %d B)", ts.name(), ts.rows(),
                            ts.memory_bytes() / 1e9, per_row, PayloadBytes(tables[static_cast<size_t>(t)]));
      absl::StrAppendFormat(&tables_json, "%s{\"name\":\"%s\",\"rows\":%d,\"bytes\":%d}", t ? "," : "", ts.name(), ts.rows(),
                            ts.memory_bytes());
    }
    std::printf("%s\n", line.c_str());
    total_rss += static_cast<double>(s.rss_bytes());
    absl::StrAppendFormat(&servers_json, "%s{\"shard\":%d,\"rss_bytes\":%d,\"peak_rss_bytes\":%d,\"tables\":[%s]}",
                          servers_json.empty() ? "" : ",", s.shard(), s.rss_bytes(), s.peak_rss_bytes(), tables_json);
  }
  const bool rows_ok = total_rows[0] == f.user_rows && total_rows[1] == f.item_rows;
  std::printf("servers hold %lld user and %lld item rows (%s)\n", static_cast<long long>(total_rows[0]),
              static_cast<long long>(total_rows[1]), rows_ok ? "every row" : "MISSING ROWS");
  std::printf("total server RSS %.2f GB against the bound rows x (payload + state) x 1.15 + 32 B/row = %.2f GB: %s "
              "(%.1f B per row)\n",
              total_rss / 1e9, bound / 1e9, total_rss <= bound ? "met" : "missed",
              total_rss / static_cast<double>(f.user_rows + f.item_rows));
  for (int t = 0; t < 2; ++t) {
    std::printf("%s table, batches of %d distinct Zipf(%.2f) ids: pull %.2f M rows/s, push %.2f M rows/s through the servers",
                names[t], f.batch, f.zipf, remote.pull[t] / 1e6, remote.push[t] / 1e6);
    if (f.local) {
      std::printf("; in-process lookup %.2f, apply %.2f M rows/s; pull / in-process %.2fx (target 0.5x: %s)",
                  local.rates.pull[t] / 1e6, local.rates.push[t] / 1e6, remote.pull[t] / local.rates.pull[t],
                  remote.pull[t] >= 0.5 * local.rates.pull[t] ? "met" : "missed");
    }
    std::printf("\n");
  }
  if (save_bytes > 0) {
    std::printf("servers saved their shards: %.1f s, %.2f GB, %.2f GB/s\n", save_seconds, save_bytes / 1e9,
                save_bytes / save_seconds / 1e9);
  }
  absl::PrintF(
      "json {\"machine\":\"%s\",\"servers\":%d,\"workers\":%d,\"user_rows\":%d,\"user_dim\":%d,\"item_rows\":%d,"
      "\"item_dim\":%d,\"payload_bytes\":[%d,%d],\"batch\":%d,\"zipf\":%.2f,\"local\":%s,"
      "\"local_fill_rows_s\":%.0f,\"local_rss_bytes_per_row\":%.2f,\"local_table_bytes_per_row\":%.2f,"
      "\"local_pull\":[%.0f,%.0f],\"local_push\":[%.0f,%.0f],\"loaded\":%s,\"fill_seconds\":%.3f,\"load_bytes\":%d,"
      "\"server_stats\":[%s],\"total_rss_bytes\":%.0f,\"rss_bound_bytes\":%.0f,\"rows_ok\":%s,"
      "\"pull\":[%.0f,%.0f],\"push\":[%.0f,%.0f],\"save_seconds\":%.3f,\"save_bytes\":%d}\n",
      bench::MachineDescription(), f.servers, comm.size(), f.user_rows, f.user_dim, f.item_rows, f.item_dim,
      PayloadBytes(tables[0]), PayloadBytes(tables[1]), f.batch, f.zipf, f.local ? "true" : "false", local.fill_rows_s,
      local.rss_bytes_per_row, local.table_bytes_per_row, local.rates.pull[0], local.rates.pull[1], local.rates.push[0],
      local.rates.push[1], f.load.empty() ? "false" : "true", fill_seconds, load_bytes, servers_json, total_rss, bound,
      rows_ok ? "true" : "false", remote.pull[0], remote.pull[1], remote.push[0], remote.push[1], save_seconds, save_bytes);
  return absl::OkStatus();
}

[[noreturn]] void Usage(const std::string& bad) {
  std::fprintf(stderr,
               "%s\nflags: --servers= --user_rows= --user_dim= --item_rows= --item_dim= --fill_batch= --batch= "
               "--batches= --iterations= --zipf= --checkpoint=DIR --load=DIR --no_local\n",
               bad.c_str());
  comm::MpiSession::Abort(2);
}

Flags ParseFlags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto eq = a.find('=');
    const std::string key = a.substr(0, eq), value = eq == std::string::npos ? "" : a.substr(eq + 1);
    auto integer = [&]() -> int64_t {
      int64_t v = 0;
      if (!absl::SimpleAtoi(value, &v) || v <= 0) Usage(absl::StrCat(key, ": not a positive integer: \"", value, "\""));
      return v;
    };
    if (key == "--servers") f.servers = static_cast<int>(integer());
    else if (key == "--user_rows") f.user_rows = integer();
    else if (key == "--user_dim") f.user_dim = static_cast<int>(integer());
    else if (key == "--item_rows") f.item_rows = integer();
    else if (key == "--item_dim") f.item_dim = static_cast<int>(integer());
    else if (key == "--fill_batch") f.fill_batch = static_cast<int>(integer());
    else if (key == "--batch") f.batch = static_cast<int>(integer());
    else if (key == "--batches") f.batches = static_cast<int>(integer());
    else if (key == "--iterations") f.iterations = static_cast<int>(integer());
    else if (key == "--zipf") f.zipf = std::stod(value);
    else if (key == "--checkpoint") f.checkpoint = value;
    else if (key == "--load") f.load = value;
    else if (key == "--no_local") f.local = false;
    else Usage("unknown flag " + a);
  }
  if (!f.checkpoint.empty() && !f.load.empty() && f.checkpoint == f.load) Usage("--checkpoint and --load name one folder");
  // A batch draws distinct ids: it needs a table of a good many more rows than that.
  if (std::min(f.user_rows, f.item_rows) < 2 * int64_t{f.batch}) {
    Usage(absl::StrCat("--batch=", f.batch, " needs tables of at least ", 2 * int64_t{f.batch}, " rows each"));
  }
  return f;
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
  const Flags f = ParseFlags(argc, argv);
  ps::PsOptions options;
  options.consistency = ps::Consistency::kSync;
  options.timeout = absl::Minutes(30);  // the in-process baseline keeps the servers idle for minutes
  bench::RunPsJob(**session, f.servers, Tables(f), options,
                  [&](ps::RemoteEmbeddingStore& store, comm::Communicator& comm, MPI_Comm) { return Worker(f, store, comm); });
  return 0;
}
