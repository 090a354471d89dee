#include "comm/roles.h"

#include "absl/strings/str_cat.h"

namespace t2d::comm {

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
