// NCCL communicator on real GPUs (label gpu; built with -DT2D_WITH_NCCL=ON). Exits 77 (CTest:
// skipped) when cudaGetDeviceCount fails, i.e. on machines without a usable GPU.
// Runs the communicator conformance cases over NCCL (bootstrapped over MPI) and checks the
// factory picks NCCL when every rank has a GPU.

#include <cstdio>
#include <vector>

#include "absl/time/clock.h"
#include "comm/communicator_factory.h"
#include "comm/mpi_communicator.h"
#include "comm/mpi_session.h"
#include "comm/mpi_transport.h"
#include "comm/nccl_communicator.h"

namespace {

int failures = 0;
#define CHECK_TRUE(cond)                                                 \
  do {                                                                   \
    if (!(cond)) {                                                       \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                        \
    }                                                                    \
  } while (0)

}  // namespace

int main(int argc, char** argv) {
  using namespace t2d::comm;
  auto session = MpiSession::Create(&argc, &argv);
  if (!session.ok()) {
    std::fprintf(stderr, "%s\n", session.status().ToString().c_str());
    return 1;
  }
  auto devices = CudaDeviceCount();
  int have = devices.ok() ? 1 : 0, all = 0;
  MPI_Allreduce(&have, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (!all) {
    std::printf("skipped: %s\n", devices.ok() ? "another rank has no GPU" : devices.status().ToString().c_str());
    return 77;
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  auto comm = MakeCommunicator("nccl", MPI_COMM_WORLD, deadline);
  CHECK_TRUE(comm.ok());
  if (!comm.ok()) {
    std::fprintf(stderr, "%s\n", comm.status().ToString().c_str());
    return 1;
  }
  Communicator& c = **comm;
  CHECK_TRUE(c.backend() == "nccl");
  const int p = c.size(), r = c.rank();
  std::vector<float> f(1 << 20);
  for (size_t i = 0; i < f.size(); ++i) f[i] = static_cast<float>(r) + static_cast<float>(i % 64) / 8.0f;
  CHECK_TRUE(c.AllReduceSum(absl::MakeSpan(f), deadline).ok());
  for (size_t i = 0; i < f.size(); i += 101) {
    CHECK_TRUE(f[i] == static_cast<float>(p * (p - 1) / 2) + static_cast<float>(p) * static_cast<float>(i % 64) / 8.0f);
  }
  std::vector<double> d(1000, 1.5);
  CHECK_TRUE(c.AllReduceSum(absl::MakeSpan(d), deadline).ok());
  CHECK_TRUE(d[999] == 1.5 * p);
  std::vector<int> b(100, r == 0 ? 42 : -1);
  CHECK_TRUE(c.Broadcast(b.data(), b.size() * sizeof(int), 0, deadline).ok());
  CHECK_TRUE(b[99] == 42);
  CHECK_TRUE(c.Barrier(deadline).ok());
  CHECK_TRUE(absl::IsInvalidArgument(c.Broadcast(b.data(), 4, p, deadline)));
  // 10 MB allreduce throughput, for the record.
  std::vector<float> big(10u << 20 >> 2, 1.0f);
  const absl::Time t0 = absl::Now();
  for (int i = 0; i < 10; ++i) CHECK_TRUE(c.AllReduceSum(absl::MakeSpan(big), deadline).ok());
  const double s = absl::ToDoubleSeconds(absl::Now() - t0) / 10;
  if (r == 0) std::printf("nccl allreduce 10 MB over %d rank(s): %.3f ms, %.2f GB/s\n", p, s * 1e3, 10.0 * (1 << 20) / s / 1e9);
  comm->reset();
  int worst = 0;
  MPI_Allreduce(&failures, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (r == 0) std::printf("%s\n", worst == 0 ? "PASSED" : "FAILED");
  return worst == 0 ? 0 : 1;
}
