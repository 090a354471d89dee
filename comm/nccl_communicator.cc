#include "comm/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm/backoff.h"
#include "common/status_macros.h"

namespace t2d::comm {
namespace {

absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": CUDA error ", static_cast<int>(e), " (", cudaGetErrorString(e), ")"));
}

absl::Status NcclStatus(ncclResult_t r, const char* what) {
  if (r == ncclSuccess || r == ncclInProgress) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": NCCL error ", static_cast<int>(r), " (", ncclGetErrorString(r), ")"));
}

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, cudaStream_t stream, int device, int rank, int size)
      : comm_(comm), stream_(stream), device_(device), rank_(rank), size_(size) {}
  ~NcclCommunicator() override {
    cudaSetDevice(device_);
    if (broken_.empty()) {
      ncclCommDestroy(comm_);
    } else {
      ncclCommAbort(comm_);
    }
    if (buffer_ != nullptr) cudaFree(buffer_);
    cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }
  using Communicator::AllReduceSum;

  absl::Status AllReduceSum(void* data, size_t count, DataType type, absl::Time deadline) override {
    const size_t bytes = count * SizeOf(type);
    T2D_RETURN_IF_ERROR(Begin(bytes));
    T2D_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(buffer_, data, bytes, cudaMemcpyHostToDevice, stream_), "copy to device"));
    T2D_RETURN_IF_ERROR(NcclStatus(ncclAllReduce(buffer_, buffer_, count, type == DataType::kFloat32 ? ncclFloat : ncclDouble,
                                                 ncclSum, comm_, stream_),
                                   "ncclAllReduce"));
    T2D_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(data, buffer_, bytes, cudaMemcpyDeviceToHost, stream_), "copy to host"));
    return Finish("allreduce", deadline);
  }

  absl::Status Broadcast(void* data, size_t bytes, int root, absl::Time deadline) override {
    if (root < 0 || root >= size_) {
      return absl::InvalidArgumentError(absl::StrCat("broadcast root ", root, " is outside 0..", size_ - 1));
    }
    T2D_RETURN_IF_ERROR(Begin(bytes));
    if (rank_ == root) {
      T2D_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(buffer_, data, bytes, cudaMemcpyHostToDevice, stream_), "copy to device"));
    }
    T2D_RETURN_IF_ERROR(NcclStatus(ncclBroadcast(buffer_, buffer_, bytes, ncclChar, root, comm_, stream_), "ncclBroadcast"));
    T2D_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(data, buffer_, bytes, cudaMemcpyDeviceToHost, stream_), "copy to host"));
    return Finish("broadcast", deadline);
  }

  absl::Status Barrier(absl::Time deadline) override {
    float one = 1;
    return AllReduceSum(&one, 1, DataType::kFloat32, deadline);
  }

 private:
  absl::Status Begin(size_t bytes) {
    if (!broken_.empty()) return absl::FailedPreconditionError(absl::StrCat("nccl communicator is broken: ", broken_));
    T2D_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device_), "cudaSetDevice"));
    if (bytes > capacity_) {
      if (buffer_ != nullptr) cudaFree(buffer_);
      buffer_ = nullptr;
      capacity_ = 0;
      T2D_RETURN_IF_ERROR(CudaStatus(cudaMalloc(&buffer_, bytes), "cudaMalloc"));
      capacity_ = bytes;
    }
    return absl::OkStatus();
  }

  // Polls the stream and NCCL's asynchronous error state until the work is done.
  absl::Status Finish(const char* name, absl::Time deadline) {
    Backoff backoff;
    while (true) {
      const cudaError_t q = cudaStreamQuery(stream_);
      if (q == cudaSuccess) return absl::OkStatus();
      if (q != cudaErrorNotReady) {
        broken_ = absl::StrCat(name, " failed");
        return CudaStatus(q, name);
      }
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress) {
        broken_ = absl::StrCat(name, " failed");
        return NcclStatus(async, name);
      }
      if (absl::Now() >= deadline) {
        broken_ = absl::StrCat(name, " timed out");
        return absl::DeadlineExceededError(absl::StrCat("nccl ", name, " on rank ", rank_, " of ", size_,
                                                        " did not complete before the deadline (NCCL cannot tell which "
                                                        "ranks did not join; see their logs)"));
      }
      backoff.Pause();
    }
  }

  ncclComm_t comm_;
  cudaStream_t stream_;
  const int device_;
  const int rank_;
  const int size_;
  void* buffer_ = nullptr;
  size_t capacity_ = 0;
  std::string broken_;
};

}  // namespace

absl::StatusOr<int> CudaDeviceCount() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    return absl::UnavailableError(absl::StrCat("no usable GPU: cudaGetDeviceCount: ", cudaGetErrorString(e)));
  }
  if (n == 0) return absl::UnavailableError("no usable GPU: no CUDA devices visible");
  return n;
}

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(Communicator* bootstrap, int device,
                                                                     absl::Time deadline) {
  T2D_ASSIGN_OR_RETURN(const int devices, CudaDeviceCount());
  if (device < 0 || device >= devices) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA device ", device, " is outside 0..", devices - 1));
  }
  ncclUniqueId id;
  if (bootstrap->rank() == 0) T2D_RETURN_IF_ERROR(NcclStatus(ncclGetUniqueId(&id), "ncclGetUniqueId"));
  T2D_RETURN_IF_ERROR(bootstrap->Broadcast(&id, sizeof(id), 0, deadline));
  T2D_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device), "cudaSetDevice"));
  cudaStream_t stream = nullptr;
  T2D_RETURN_IF_ERROR(CudaStatus(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate"));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  if (auto s = NcclStatus(ncclCommInitRankConfig(&comm, bootstrap->size(), id, bootstrap->rank(), &config),
                          "ncclCommInitRankConfig");
      !s.ok()) {
    cudaStreamDestroy(stream);
    return s;
  }
  Backoff backoff;
  while (true) {
    ncclResult_t state = ncclInProgress;
    ncclCommGetAsyncError(comm, &state);
    if (state == ncclSuccess) break;
    if (state != ncclInProgress || absl::Now() >= deadline) {
      ncclCommAbort(comm);
      cudaStreamDestroy(stream);
      if (state != ncclInProgress) return NcclStatus(state, "ncclCommInitRank");
      return absl::DeadlineExceededError("ncclCommInitRank did not complete before the deadline");
    }
    backoff.Pause();
  }
  return std::unique_ptr<Communicator>(
      new NcclCommunicator(comm, stream, device, bootstrap->rank(), bootstrap->size()));
}

}  // namespace t2d::comm
