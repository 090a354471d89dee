#include "launcher/run_job.h"

#include <glog/logging.h>
#include <unistd.h>

#include <filesystem>
#include <iostream>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "comm/communicator_factory.h"
#include "comm/inproc_communicator.h"
#include "comm/mpi_session.h"
#include "comm/roles.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/process_memory.h"
#include "common/status_macros.h"
#include "embedding/local_embedding_store.h"
#include "comm/mpi_transport.h"
#include "configs/job_options.h"
#include "launcher/supervise.h"
#include "ps/remote_embedding_store.h"
#include "ps/shard_server.h"
#include "trainer/run_report.h"
#include "trainer/trainer.h"

namespace t2d::launcher {
namespace {

// What a worker does once its store and communicator exist: the same for a single-process run
// and for a worker rank of a distributed job.
absl::Status RunWorker(const config::JobConfig& config, const RunOptions& options, embedding::EmbeddingStore* store,
                       comm::Communicator* workers) {
  trainer::TrainerContext ctx;
  ctx.config = config;
  ctx.store = store;
  ctx.workers = workers;
  // Only training writes metrics; eval and export must not replace a run's metrics file.
  ctx.output_dir = options.mode == RunOptions::kTrain ? config.training().output_dir() : "";
  ctx.resume = options.resume;
  T2D_ASSIGN_OR_RETURN(auto t, trainer::Trainer::Create(ctx));
  if (options.mode != RunOptions::kTrain) T2D_RETURN_IF_ERROR(t->LoadLatestModel());
  switch (options.mode) {
    case RunOptions::kTrain: {
      T2D_ASSIGN_OR_RETURN(trainer::TrainResult r, t->Train());
      if (workers->rank() == 0 && options.json) {
        std::cout << trainer::SummaryJson(r, config.eval()).dump() << std::endl;
      } else if (workers->rank() == 0) {
        std::cout << absl::StrFormat(
                         "trained %d steps in %.1fs (%.1fs of it evaluation and checkpoints; %.0f samples/s "
                         "training); first loss %.4f, last loss %.4f\n",
                         r.steps, r.train_seconds, r.eval_seconds, r.samples_per_second, r.first_loss, r.last_loss);
        if (r.best_epoch < 0) {
          // training.max_steps can end a run before its first evaluation (eval.every_epochs).
          std::cout << "no evaluation ran: the run ended before its first (run `t2diff eval` on its checkpoint)"
                    << std::endl;
        } else {
          std::cout << "test (" << r.test.model.count() << " samples) at the "
                    << (r.validation.empty() || r.validation.front().model.count() == 0 ? "last" : "validation-selected")
                    << " evaluation " << r.best_epoch + 1 << " (epoch " << r.test.epoch << "): " << r.test.model.ToString()
                    << "\n"
                    << "popularity baseline:     " << r.test.popularity.ToString() << std::endl;
          if (r.test.has_ann) std::cout << trainer::AnnLine(r.test) << std::endl;
        }
      }
      break;
    }
    case RunOptions::kEval: {
      trainer::Json out;
      out["step"] = t->step();
      for (const char* split : {"valid", "test"}) {
        const std::string dump = options.dump_ranks.empty() ? "" : absl::StrCat(options.dump_ranks, ".", split);
        T2D_ASSIGN_OR_RETURN(trainer::EvalResult r, t->Evaluate(split, dump));
        out[split] = trainer::EvalJson(r);
        if (workers->rank() == 0 && !options.json) {
          std::cout << split << " (" << r.model.count() << " samples): " << r.model.ToString() << "\n"
                    << split << " popularity baseline: " << r.popularity.ToString() << std::endl;
          if (r.has_ann) std::cout << trainer::AnnLine(r) << std::endl;
        }
      }
      if (workers->rank() == 0 && options.json) std::cout << out.dump() << std::endl;
      break;
    }
    case RunOptions::kExport:
      break;
  }
  if (!options.export_dir.empty()) {
    serving::DeltaStats delta;
    T2D_RETURN_IF_ERROR(t->Export(options.export_dir, options.export_base, &delta));
    if (workers->rank() == 0 && options.json && options.mode == RunOptions::kExport) {
      trainer::Json out;
      out[options.export_base.empty() ? "bundle" : "delta"] = options.export_dir;
      out["step"] = t->step();
      if (!options.export_base.empty()) {
        out["base"] = options.export_base;
        out["items_changed"] = delta.items_changed;
        out["items_total"] = delta.items_total;
        out["id_rows_changed"] = delta.id_rows_changed;
        out["tag_rows_changed"] = delta.tag_rows_changed;
        out["user_rows_changed"] = delta.user_rows_changed;
        out["user_feature_rows_changed"] = delta.user_feature_rows_changed;
      }
      std::cout << out.dump() << std::endl;
    }
  }
  return absl::OkStatus();
}

absl::Status RunSingleProcess(const config::JobConfig& config, const RunOptions& options) {
  if (options.mode == RunOptions::kTrain) T2D_RETURN_IF_ERROR(CheckCheckpointFolder(config));
  LOG(INFO) << "single-process run: in-process embedding tables, 1 worker";
  T2D_ASSIGN_OR_RETURN(auto store, embedding::LocalEmbeddingStore::Create(config::TablesOf(config)));
  comm::InProcGroup group(1);
  auto workers = group.Member(0);
  return RunWorker(config, options, store.get(), workers.get());
}

// One rank of a distributed job: a shard server, or a worker talking to the servers.
absl::Status RunRank(const config::JobConfig& config, const RunOptions& options, comm::MpiSession& mpi,
                     const comm::RoleAssignment& roles) {
  // Every rank writes into checkpoint.dir (servers their shards, workers their cursors).
  if (options.mode == RunOptions::kTrain) T2D_RETURN_IF_ERROR(CheckCheckpointFolder(config));
  T2D_ASSIGN_OR_RETURN(ps::PsOptions po, config::PsOptionsOf(config, roles));
  T2D_ASSIGN_OR_RETURN(auto transport, comm::MpiTransport::Create(mpi.world()));
  // Collective over the world: servers take part and get MPI_COMM_NULL.
  T2D_ASSIGN_OR_RETURN(MPI_Comm worker_comm, mpi.SplitWorkers(roles));
  if (roles.IsServer(mpi.rank())) {
    const int shard = roles.ShardOfServer(mpi.rank());
    T2D_ASSIGN_OR_RETURN(auto store, embedding::LocalEmbeddingStore::Create(config::TablesOf(config), shard, roles.num_servers));
    ps::ShardServer server(transport.get(), store.get(), po);
    LOG(INFO) << "serving shard " << shard << " of " << roles.num_servers << " for " << roles.num_workers << " workers";
    T2D_RETURN_IF_ERROR(server.Run());
    LOG(INFO) << "all workers done; server stats: " << server.stats().ShortDebugString();
    // Memory per table beside the process's, the figures an operator sizes servers by.
    std::string memory;
    if (auto tables = store->Stats(); tables.ok()) {
      for (const auto& t : *tables) {
        absl::StrAppendFormat(&memory, "%s %d rows %.1f MB; ", t.name, t.rows, t.memory_bytes / 1e6);
      }
    }
    if (auto m = ReadProcessMemory(); m.ok()) {
      absl::StrAppendFormat(&memory, "process RSS %.1f MB (peak %.1f MB)", m->rss_bytes / 1e6, m->peak_rss_bytes / 1e6);
    }
    LOG(INFO) << "shard " << shard << " memory: " << memory;
    return absl::OkStatus();
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(config.cluster().timeout_s());
  T2D_ASSIGN_OR_RETURN(auto workers, comm::MakeCommunicator(config.cluster().allreduce_backend(), worker_comm, deadline));
  ps::RemoteEmbeddingStore store(transport.get(), config::TablesOf(config), po);
  absl::Status s = RunWorker(config, options, &store, workers.get());
  if (!s.ok()) return s;
  return store.Shutdown();
}

}  // namespace

absl::Status CheckCheckpointFolder(const config::JobConfig& config) {
  const std::string& dir = config.checkpoint().dir();
  if (dir.empty()) return absl::OkStatus();
  auto fail = [&](const std::string& why) {
    return absl::FailedPreconditionError(absl::StrCat("checkpoint.dir \"", dir, "\" ", why));
  };
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return fail(absl::StrCat("cannot be created: ", ec.message()));
  // Write a file the way checkpoints will (ranks of a job probe at once: names differ).
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  const std::string probe = absl::StrCat(dir, "/.write-test-", host, "-", ::getpid());
  absl::Status s = WriteFileAtomic(probe, "t2diff\n");
  std::filesystem::remove(probe, ec);
  if (!s.ok()) return fail(absl::StrCat("is not writable: ", s.message()));
  return absl::OkStatus();
}

int RunJob(const config::JobConfig& config, const RunOptions& options, int* argc, char*** argv) {
  auto session = comm::MpiSession::Create(argc, argv);
  if (!session.ok()) {
    LOG(ERROR) << session.status().message();
    return 1;
  }
  comm::MpiSession& mpi = **session;
  std::unique_ptr<HeartbeatWriter> heartbeat;
  if (!options.heartbeat_dir.empty()) {
    auto writer = HeartbeatWriter::Start(options.heartbeat_dir, mpi.rank());
    if (!writer.ok()) {
      LOG(ERROR) << writer.status().message();
      return 1;
    }
    heartbeat = *std::move(writer);
  }
  if (mpi.size() == 1) {
    auto s = RunSingleProcess(config, options);
    if (!s.ok()) {
      LOG(ERROR) << s.message();
      return 1;
    }
    if (heartbeat) heartbeat->MarkDone();
    return 0;
  }
  const auto& cluster = config.cluster();
  if (mpi.size() != cluster.num_servers() + cluster.num_workers()) {
    if (mpi.rank() == 0) {
      LOG(ERROR) << "this job has " << mpi.size() << " ranks but the config asks for cluster.num_servers="
                 << cluster.num_servers() << " + cluster.num_workers=" << cluster.num_workers()
                 << "; start it with `t2diff launch` or mpirun -n " << cluster.num_servers() + cluster.num_workers();
    }
    return 1;
  }
  auto roles = comm::AssignRoles(mpi.size(), cluster.num_servers());
  if (!roles.ok()) {
    LOG(ERROR) << roles.status().message();
    return 1;
  }
  const bool server = roles->IsServer(mpi.rank());
  LoggingOptions log;
  log.role = server ? "server" : "worker";
  log.rank = server ? roles->ShardOfServer(mpi.rank()) : roles->WorkerIndex(mpi.rank());
  log.on_fatal = [] { comm::MpiSession::Abort(1); };
  InitLogging("t2diff", log);
  absl::Status s = RunRank(config, options, mpi, *roles);
  if (!s.ok()) {
    LOG(ERROR) << roles->Describe(mpi.rank()) << " failed: " << s.message() << "; ending the whole job";
    comm::MpiSession::Abort(1);
  }
  // Its part is done; MPI_Finalize may still wait for the others, which are watched instead.
  if (heartbeat) heartbeat->MarkDone();
  return 0;
}

}  // namespace t2d::launcher
