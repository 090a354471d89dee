// Test driver for parameter-server jobs under mpiexec (registered in tests/CMakeLists.txt).
// Ranks 0..S-1 serve, the rest are workers; one scenario per run:
//   --scenario=equivalence  sync: every pull equals a LocalEmbeddingStore fed the same
//                           gradients, bit for bit; stats agree; clean shutdown.
//   --scenario=async        async with --tau: server-observed staleness <= tau (and > 0, the
//                           bound is exercised: the last worker is slowed down).
//   --scenario=save         trains 4 steps, saves into --dir, writes the expected probe rows.
//   --scenario=load         loads --dir (written by any number of servers) and compares.
//   --scenario=stall_worker the last worker stops pushing: the job must fail naming it.
//   --scenario=silent_server the last server never serves: the job must fail naming it.
//   --scenario=kill_worker  the last worker dies (SIGKILL): mpirun must end the job.
// On any error the rank logs it and calls MpiSession::Abort, so the job exits non-zero.

#include <mpi.h>
#include <signal.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm/communicator_factory.h"
#include "comm/mpi_session.h"
#include "comm/mpi_transport.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "embedding/local_embedding_store.h"
#include "glog/logging.h"
#include "ps/remote_embedding_store.h"
#include "ps/shard_server.h"
#include "tests/testutil/ps_batches.h"

namespace t2d {
namespace {

using testutil::Batch;
using testutil::Dedup;
using testutil::MakeBatch;

struct Flags {
  std::string scenario = "equivalence";
  int servers = 1;
  std::string mode = "sync";
  int tau = 1;
  double timeout_s = 10;
  std::string dir;
};

absl::Status Check(bool ok, const std::string& what) {
  return ok ? absl::OkStatus() : absl::InternalError(absl::StrCat("check failed: ", what));
}

absl::Time Soon() { return absl::Now() + absl::Seconds(30); }

absl::Status CompareWithReference(ps::RemoteEmbeddingStore& store, embedding::LocalEmbeddingStore& ref, int table,
                                  const std::string& where) {
  const auto probe = testutil::ProbeIds();
  const size_t dim = static_cast<size_t>(store.dim(table));
  std::vector<float> got(probe.size() * dim), want(got.size());
  T2D_RETURN_IF_ERROR(store.Lookup(table, probe, absl::MakeSpan(got)));
  T2D_RETURN_IF_ERROR(ref.Lookup(table, probe, absl::MakeSpan(want)));
  return Check(std::memcmp(got.data(), want.data(), got.size() * 4) == 0,
               absl::StrCat("rows differ from the in-process store at ", where, ", table ", table));
}

absl::Status Equivalence(ps::RemoteEmbeddingStore& store, comm::Communicator& comm) {
  const auto tables = testutil::Tables();
  T2D_ASSIGN_OR_RETURN(auto ref, embedding::LocalEmbeddingStore::Create(tables));
  constexpr int kSteps = 8;
  for (int step = 0; step < kSteps; ++step) {
    for (int t = 0; t < 2; ++t) {
      T2D_RETURN_IF_ERROR(CompareWithReference(store, *ref, t, absl::StrCat("step ", step)));
      const int dim = tables[static_cast<size_t>(t)].dim();
      const Batch mine = MakeBatch(step, comm.rank(), t, dim);
      T2D_RETURN_IF_ERROR(store.ApplyGradients(t, mine.ids, mine.grads));
      Batch all;
      for (int v = 0; v < comm.size(); ++v) {
        Batch d = Dedup(MakeBatch(step, v, t, dim), dim);
        all.ids.insert(all.ids.end(), d.ids.begin(), d.ids.end());
        all.grads.insert(all.grads.end(), d.grads.begin(), d.grads.end());
      }
      T2D_RETURN_IF_ERROR(ref->ApplyGradients(t, all.ids, all.grads));
    }
  }
  for (int t = 0; t < 2; ++t) T2D_RETURN_IF_ERROR(CompareWithReference(store, *ref, t, "the end"));
  T2D_ASSIGN_OR_RETURN(auto stats, store.Stats());
  T2D_ASSIGN_OR_RETURN(auto ref_stats, ref->Stats());
  for (int t = 0; t < 2; ++t) {
    T2D_RETURN_IF_ERROR(Check(stats[static_cast<size_t>(t)].rows == ref_stats[static_cast<size_t>(t)].rows, "row counts"));
    T2D_RETURN_IF_ERROR(Check(stats[static_cast<size_t>(t)].step == kSteps, "table steps"));
  }
  return absl::OkStatus();
}

absl::Status Async(ps::RemoteEmbeddingStore& store, comm::Communicator& comm, int tau) {
  const auto probe = testutil::ProbeIds();
  std::vector<float> rows(probe.size() * 8);
  for (int step = 0; step < 30; ++step) {
    if (comm.rank() == comm.size() - 1) absl::SleepFor(absl::Milliseconds(5));
    T2D_RETURN_IF_ERROR(store.Lookup(0, probe, absl::MakeSpan(rows)));
    const Batch b = MakeBatch(step, comm.rank(), 0, 8);
    T2D_RETURN_IF_ERROR(store.ApplyGradients(0, b.ids, b.grads));
  }
  T2D_RETURN_IF_ERROR(Check(store.max_unacked_rounds() <= tau, "unacknowledged push rounds within tau"));
  T2D_RETURN_IF_ERROR(store.Flush());
  T2D_RETURN_IF_ERROR(comm.Barrier(Soon()));
  if (comm.rank() == 0) {
    T2D_ASSIGN_OR_RETURN(auto servers, store.ServerStats());
    int64_t worst = 0;
    for (const auto& s : servers) worst = std::max(worst, s.max_staleness());
    std::printf("async tau=%d: largest staleness seen by a pull = %lld\n", tau, static_cast<long long>(worst));
    T2D_RETURN_IF_ERROR(Check(worst <= tau, "server-observed staleness within tau"));
    if (tau > 0) T2D_RETURN_IF_ERROR(Check(worst >= 1, "the fast worker ran ahead at least once"));
  }
  return comm.Barrier(Soon());
}

absl::Status Save(ps::RemoteEmbeddingStore& store, comm::Communicator& comm, const std::string& dir) {
  for (int step = 0; step < 4; ++step) {
    for (int t = 0; t < 2; ++t) {
      const Batch b = MakeBatch(step, comm.rank(), t, store.dim(t));
      T2D_RETURN_IF_ERROR(store.ApplyGradients(t, b.ids, b.grads));
    }
  }
  T2D_RETURN_IF_ERROR(comm.Barrier(Soon()));
  if (comm.rank() == 0) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    T2D_RETURN_IF_ERROR(store.Save(dir));
    const auto probe = testutil::ProbeIds();
    std::vector<float> rows(probe.size() * 8);
    T2D_RETURN_IF_ERROR(store.Lookup(0, probe, absl::MakeSpan(rows)));
    T2D_RETURN_IF_ERROR(WriteFileAtomic(dir + "/expected_rows.bin",
                                        std::string(reinterpret_cast<const char*>(rows.data()), rows.size() * 4)));
  }
  return comm.Barrier(Soon());
}

absl::Status Load(ps::RemoteEmbeddingStore& store, comm::Communicator& comm, const std::string& dir) {
  if (comm.rank() == 0) T2D_RETURN_IF_ERROR(store.Load(dir));
  T2D_RETURN_IF_ERROR(comm.Barrier(Soon()));
  T2D_ASSIGN_OR_RETURN(std::string expected, ReadFileToString(dir + "/expected_rows.bin"));
  const auto probe = testutil::ProbeIds();
  std::vector<float> rows(probe.size() * 8);
  T2D_RETURN_IF_ERROR(store.Lookup(0, probe, absl::MakeSpan(rows)));
  T2D_RETURN_IF_ERROR(Check(expected.size() == rows.size() * 4 && std::memcmp(expected.data(), rows.data(), expected.size()) == 0,
                            "rows after load equal the rows at save time"));
  T2D_ASSIGN_OR_RETURN(auto ref, embedding::LocalEmbeddingStore::Create(testutil::Tables()));
  T2D_RETURN_IF_ERROR(ref->Load(dir));
  for (int t = 0; t < 2; ++t) T2D_RETURN_IF_ERROR(CompareWithReference(store, *ref, t, "after load"));
  // One more sync round: optimizer state must have come along.
  for (int t = 0; t < 2; ++t) {
    const int dim = store.dim(t);
    const Batch b = MakeBatch(50, comm.rank(), t, dim);
    T2D_RETURN_IF_ERROR(store.ApplyGradients(t, b.ids, b.grads));
    Batch all;
    for (int v = 0; v < comm.size(); ++v) {
      Batch d = Dedup(MakeBatch(50, v, t, dim), dim);
      all.ids.insert(all.ids.end(), d.ids.begin(), d.ids.end());
      all.grads.insert(all.grads.end(), d.grads.begin(), d.grads.end());
    }
    T2D_RETURN_IF_ERROR(ref->ApplyGradients(t, all.ids, all.grads));
    T2D_RETURN_IF_ERROR(CompareWithReference(store, *ref, t, "one step after load"));
  }
  T2D_ASSIGN_OR_RETURN(auto stats, store.Stats());
  T2D_ASSIGN_OR_RETURN(auto ref_stats, ref->Stats());
  T2D_RETURN_IF_ERROR(Check(stats[0].rows == ref_stats[0].rows, "row counts after load"));
  if (comm.rank() == 0) std::printf("loaded %lld rows of table 0 into this job's servers\n", static_cast<long long>(stats[0].rows));
  return comm.Barrier(Soon());
}

absl::Status RunWorker(const Flags& flags, ps::RemoteEmbeddingStore& store, comm::Communicator& comm) {
  const bool last = comm.rank() == comm.size() - 1;
  if (flags.scenario == "equivalence") {
    T2D_RETURN_IF_ERROR(Equivalence(store, comm));
  } else if (flags.scenario == "async") {
    T2D_RETURN_IF_ERROR(Async(store, comm, flags.tau));
  } else if (flags.scenario == "save") {
    T2D_RETURN_IF_ERROR(Save(store, comm, flags.dir));
  } else if (flags.scenario == "load") {
    T2D_RETURN_IF_ERROR(Load(store, comm, flags.dir));
  } else if (flags.scenario == "stall_worker" || flags.scenario == "kill_worker" || flags.scenario == "silent_server") {
    std::vector<float> rows(8), g(8, 1.0f);
    for (int step = 0; step < 3; ++step) {
      if (last && step == 1) {
        if (flags.scenario == "kill_worker") raise(SIGKILL);
        if (flags.scenario == "stall_worker") absl::SleepFor(absl::Seconds(60));
      }
      T2D_RETURN_IF_ERROR(store.ApplyGradients(0, {int64_t{step}}, g));
      T2D_RETURN_IF_ERROR(store.Lookup(0, {int64_t{step}}, absl::MakeSpan(rows)));
    }
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown --scenario=", flags.scenario));
  }
  return store.Shutdown();
}

absl::Status ParseFlags(int argc, char** argv, Flags* f) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto eq = a.find('=');
    if (a.rfind("--", 0) != 0 || eq == std::string::npos) return absl::InvalidArgumentError(absl::StrCat("bad flag ", a));
    const std::string key = a.substr(2, eq - 2), value = a.substr(eq + 1);
    if (key == "scenario") f->scenario = value;
    else if (key == "servers") f->servers = std::stoi(value);
    else if (key == "mode") f->mode = value;
    else if (key == "tau") f->tau = std::stoi(value);
    else if (key == "timeout_s") f->timeout_s = std::stod(value);
    else if (key == "dir") f->dir = value;
    else return absl::InvalidArgumentError(absl::StrCat("unknown flag --", key));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace t2d

int main(int argc, char** argv) {
  using namespace t2d;
  auto session_or = comm::MpiSession::Create(&argc, &argv);
  if (!session_or.ok()) {
    std::fprintf(stderr, "%s\n", session_or.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<comm::MpiSession> session = *std::move(session_or);
  Flags flags;
  absl::Status status = ParseFlags(argc, argv, &flags);
  auto roles = comm::AssignRoles(session->size(), flags.servers);
  if (status.ok()) status = roles.status();
  const bool server = status.ok() && roles->IsServer(session->rank());
  LoggingOptions log;
  log.role = server ? "server" : "worker";
  log.rank = session->rank();
  log.on_fatal = [] { comm::MpiSession::Abort(3); };
  InitLogging(argv[0], log);
  if (!status.ok()) {
    LOG(ERROR) << status;
    comm::MpiSession::Abort(2);
  }
  ps::PsOptions options;
  options.roles = *roles;
  options.consistency = flags.mode == "async" ? ps::Consistency::kAsync : ps::Consistency::kSync;
  options.staleness = flags.tau;
  options.timeout = absl::Seconds(flags.timeout_s);
  options.idle_timeout = absl::Seconds(120);
  {
    auto worker_comm = session->SplitWorkers(*roles);
    auto transport = comm::MpiTransport::Create(MPI_COMM_WORLD);
    if (!worker_comm.ok() || !transport.ok()) {
      LOG(ERROR) << worker_comm.status() << " " << transport.status();
      comm::MpiSession::Abort(2);
    }
    const auto tables = testutil::Tables();
    if (server) {
      if (flags.scenario == "silent_server" && session->rank() == flags.servers - 1) {
        absl::SleepFor(absl::Seconds(60));  // alive but never serving
      }
      auto store = embedding::LocalEmbeddingStore::Create(tables, session->rank(), flags.servers);
      status = store.status();
      if (status.ok()) {
        ps::ShardServer shard_server(transport->get(), store->get(), options);
        status = shard_server.Run();
      }
    } else {
      auto comm = comm::MakeCommunicator("mpi", *worker_comm, Soon());
      status = comm.status();
      if (status.ok()) {
        ps::RemoteEmbeddingStore store(transport->get(), tables, options);
        status = RunWorker(flags, store, **comm);
      }
    }
    if (!status.ok()) {
      LOG(ERROR) << "rank " << session->rank() << " (" << log.role << ") failed: " << status;
      comm::MpiSession::Abort(1);
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (session->rank() == 0) std::printf("PASSED scenario=%s\n", flags.scenario.c_str());
  return 0;
}
