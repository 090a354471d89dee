#pragma once
// A whole parameter-server job as threads: S server threads (ShardServer over a
// LocalEmbeddingStore shard) and W worker threads (RemoteEmbeddingStore + a communicator over
// the workers), all over one in-process transport hub. Used by the ps/ tests.

#include <functional>
#include <memory>
#include <vector>

#include "comm/inproc_communicator.h"
#include "comm/inproc_transport.h"
#include "embedding/local_embedding_store.h"
#include "ps/ps_options.h"
#include "ps/remote_embedding_store.h"
#include "ps/shard_server.h"
#include "tests/testutil/spawn_ranks.h"

namespace t2d::testutil {

struct PsJobResult {
  std::vector<absl::Status> server_status;  // Run() of each server
  std::vector<ps::ServerStatsProto> server_stats;
};

// Runs the job; `worker(w, store, comm)` is the body of worker w (it should end with
// store.Shutdown()). `options.roles` is filled in.
inline PsJobResult RunPsJob(int num_servers, int num_workers, const std::vector<config::TableConfig>& tables,
                            ps::PsOptions options,
                            const std::function<void(int, ps::RemoteEmbeddingStore&, comm::Communicator&)>& worker) {
  options.roles = comm::RoleAssignment{num_servers + num_workers, num_servers, num_workers};
  comm::InProcHub hub(num_servers + num_workers);
  comm::InProcGroup group(num_workers);
  PsJobResult result;
  result.server_status.resize(static_cast<size_t>(num_servers));
  result.server_stats.resize(static_cast<size_t>(num_servers));
  SpawnThreads(num_servers + num_workers, [&](int rank) {
    auto transport = hub.Connect(rank);
    if (rank < num_servers) {
      auto store = embedding::LocalEmbeddingStore::Create(tables, rank, num_servers);
      if (!store.ok()) {
        result.server_status[static_cast<size_t>(rank)] = store.status();
        return;
      }
      ps::ShardServer server(transport.get(), store->get(), options);
      result.server_status[static_cast<size_t>(rank)] = server.Run();
      result.server_stats[static_cast<size_t>(rank)] = server.stats();
      return;
    }
    auto comm = group.Member(rank - num_servers);
    ps::RemoteEmbeddingStore store(transport.get(), tables, options);
    worker(rank - num_servers, store, *comm);
  });
  return result;
}

}  // namespace t2d::testutil
