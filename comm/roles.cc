#include "comm/roles.h"

#include "absl/strings/str_cat.h"

namespace t2d::comm {

namespace {
std::string Role(const RoleAssignment& roles, int rank) {
  return roles.IsServer(rank) ? absl::StrCat("server ", roles.ShardOfServer(rank))
                              : absl::StrCat("worker ", roles.WorkerIndex(rank));
}
}  // namespace

std::string RoleAssignment::Describe(int rank) const { return DescribeRanks({rank}); }

std::string RoleAssignment::DescribeRanks(const std::vector<int>& ranks) const {
  std::string out = ranks.size() == 1 ? "world rank " : "world ranks ";
  for (size_t i = 0; i < ranks.size(); ++i) {
    absl::StrAppend(&out, i == 0 ? "" : ", ", ranks[i], " (", Role(*this, ranks[i]), ")");
  }
  return out;
}

absl::StatusOr<RoleAssignment> AssignRoles(int world_size, int num_servers) {
  if (num_servers < 1) {
    return absl::InvalidArgumentError(absl::StrCat("cluster.num_servers must be >= 1, got ", num_servers));
  }
  if (world_size < num_servers + 1) {
    return absl::InvalidArgumentError(absl::StrCat("the job has ", world_size, " ranks but needs at least ",
                                                   num_servers + 1, " (", num_servers,
                                                   " servers + at least 1 worker); run mpirun -np ",
                                                   num_servers + 1, " or more"));
  }
  return RoleAssignment{world_size, num_servers, world_size - num_servers};
}

}  // namespace t2d::comm
