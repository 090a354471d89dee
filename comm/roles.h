#pragma once
// Role split of an mpirun job: ranks 0..S-1 are parameter servers (rank s serves shard s),
// ranks S..S+W-1 are workers (worker index w = rank - S). Servers come first, so server rank
// s always owns shard s whatever the number of workers. Pure functions; thread-safe.

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace t2d::comm {

struct RoleAssignment {
  int world_size = 0;
  int num_servers = 0;
  int num_workers = 0;

  bool IsServer(int rank) const { return rank >= 0 && rank < num_servers; }
  bool IsWorker(int rank) const { return rank >= num_servers && rank < world_size; }
  int ServerRank(int shard) const { return shard; }
  int ShardOfServer(int rank) const { return rank; }
  int WorkerRank(int worker_index) const { return num_servers + worker_index; }
  int WorkerIndex(int rank) const { return rank - num_servers; }

  // How messages name ranks: the world rank with the role beside it, "world rank 2 (worker 1)";
  // several as "world ranks 2 (worker 1), 3 (worker 2)".
  std::string Describe(int rank) const;
  std::string DescribeRanks(const std::vector<int>& ranks) const;
};

// Errors: InvalidArgument unless num_servers >= 1 and world_size >= num_servers + 1 (at least
// one worker). The message says how many ranks the job needs.
absl::StatusOr<RoleAssignment> AssignRoles(int world_size, int num_servers);

}  // namespace t2d::comm
