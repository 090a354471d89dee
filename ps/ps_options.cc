#include "ps/ps_options.h"

#include "absl/strings/str_cat.h"

namespace t2d::ps {

absl::StatusOr<PsOptions> PsOptionsFromConfig(const config::ClusterConfig& cluster, const comm::RoleAssignment& roles) {
  if (cluster.num_servers() != roles.num_servers || cluster.num_workers() != roles.num_workers) {
    return absl::InvalidArgumentError(absl::StrCat("cluster config asks for ", cluster.num_servers(), " servers + ",
                                                   cluster.num_workers(), " workers but the job has ", roles.num_servers,
                                                   " + ", roles.num_workers, " ranks (mpirun -np ",
                                                   cluster.num_servers() + cluster.num_workers(), ")"));
  }
  PsOptions o;
  o.roles = roles;
  o.consistency = cluster.consistency() == config::ClusterConfig::ASYNC ? Consistency::kAsync : Consistency::kSync;
  o.staleness = cluster.staleness();
  o.timeout = absl::Seconds(cluster.timeout_s());
  o.idle_timeout = cluster.server_idle_timeout_s() > 0 ? absl::Seconds(cluster.server_idle_timeout_s())
                                                       : absl::InfiniteDuration();
  o.max_message_bytes = cluster.max_message_bytes();
  return o;
}

}  // namespace t2d::ps
