#pragma once
// Shared main() logic of gtest binaries that run under mpiexec (toolchain.md section 4):
// initialises MPI through MpiSession, silences gtest's printer on ranks != 0 (failures are
// still printed, tagged with the rank), MAX-reduces the result so every rank exits with the
// same code. With --gtest_list_tests it does not start MPI.

#include "comm/mpi_session.h"

namespace t2d::testing {
int RunMpiTests(int argc, char** argv);
// The process's session, for tests of MpiSession itself (valid while RunMpiTests runs).
comm::MpiSession& TestSession();
}  // namespace t2d::testing
