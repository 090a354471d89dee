#pragma once
// Conformance cases for the Transport and Communicator contracts (comm/transport.h,
// comm/communicator.h). Each case is collective: every rank of a group runs it with its own
// transport and communicator (both spanning the same ranks). The in-process suite runs them
// as threads (comm_test), the MPI suite as processes under mpiexec (comm_mpi_test).

#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/transport.h"

namespace t2d::testing {

using ConformanceCase = void (*)(comm::Transport& transport, comm::Communicator& comm);
struct NamedCase {
  std::string name;
  ConformanceCase run;
};
const std::vector<NamedCase>& TransportCases();
const std::vector<NamedCase>& CommunicatorCases();

}  // namespace t2d::testing
