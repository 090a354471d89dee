#pragma once
// Communicator: collectives (sum-allreduce, broadcast, barrier) among the members of one group
// over raw host buffers; the workers use it to keep their dense replicas identical.
//
// Implementations: MpiCommunicator (CPU, the default and the reference), InProcCommunicator
// (threads as ranks, for tests) and NcclCommunicator (GPU, built with -DT2D_WITH_NCCL=ON).
// MakeCommunicator (comm/communicator_factory.h) picks one.
//
// Contract (the shared cases in tests/comm/conformance_cases.cc check it for the in-process and
// MPI implementations; tests/gpu/nccl_communicator_test.cc for NCCL on a GPU):
//   * Every member calls the same collectives in the same order with the same count / dtype /
//     root (a mismatch is InvalidArgument where detectable, undefined otherwise).
//   * Results are identical on every member; AllReduceSum is deterministic for a fixed group
//     size and count (the in-process one sums in rank order).
//   * Every call takes an absolute deadline. When members do not join in time the call returns
//     DeadlineExceeded naming the ranks that had not joined (NCCL cannot tell, and says so), and
//     the communicator is broken from then on: later calls return FailedPrecondition. The
//     caller is expected to end the job (MpiSession::Abort).
//
// Thread-safety: one thread at a time per member object.

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace t2d::comm {

enum class DataType { kFloat32, kFloat64 };
size_t SizeOf(DataType type);

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "mpi", "inproc" or "nccl".
  virtual std::string backend() const = 0;

  // In place: data[i] becomes the sum over members of their data[i]; `count` elements.
  virtual absl::Status AllReduceSum(void* data, size_t count, DataType type, absl::Time deadline) = 0;
  // The `bytes` bytes at `data` on member `root` are copied to `data` on every member.
  virtual absl::Status Broadcast(void* data, size_t bytes, int root, absl::Time deadline) = 0;
  // Returns once every member has entered the barrier.
  virtual absl::Status Barrier(absl::Time deadline) = 0;

  absl::Status AllReduceSum(absl::Span<float> data, absl::Time deadline) {
    return AllReduceSum(data.data(), data.size(), DataType::kFloat32, deadline);
  }
  absl::Status AllReduceSum(absl::Span<double> data, absl::Time deadline) {
    return AllReduceSum(data.data(), data.size(), DataType::kFloat64, deadline);
  }
};

}  // namespace t2d::comm
