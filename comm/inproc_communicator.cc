#include "comm/inproc_communicator.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/deadline_wait.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"

namespace t2d::comm {

size_t SizeOf(DataType type) { return type == DataType::kFloat32 ? sizeof(float) : sizeof(double); }

class InProcCommunicator : public Communicator {
 public:
  InProcCommunicator(InProcGroup* group, int rank) : group_(group), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return group_->size(); }
  std::string backend() const override { return "inproc"; }
  using Communicator::AllReduceSum;
  absl::Status AllReduceSum(void* data, size_t count, DataType type, absl::Time deadline) override {
    return Run({InProcGroup::Op::kAllReduce, data, count, type, 0}, deadline);
  }
  absl::Status Broadcast(void* data, size_t bytes, int root, absl::Time deadline) override {
    if (root < 0 || root >= size()) {
      return absl::InvalidArgumentError(absl::StrCat("broadcast root ", root, " is outside 0..", size() - 1));
    }
    return Run({InProcGroup::Op::kBroadcast, data, bytes, DataType::kFloat32, root}, deadline);
  }
  absl::Status Barrier(absl::Time deadline) override {
    return Run({InProcGroup::Op::kBarrier, nullptr, 0, DataType::kFloat32, 0}, deadline);
  }

 private:
  absl::Status Run(const InProcGroup::Call& call, absl::Time deadline) {
    absl::Status s = group_->Run(rank_, seq_, call, deadline);
    ++seq_;
    return s;
  }
  InProcGroup* const group_;
  const int rank_;
  uint64_t seq_ = 0;
};

namespace {

template <typename T>
void AddInto(char* acc, const void* src, size_t count) {
  T* a = reinterpret_cast<T*>(acc);
  const T* b = static_cast<const T*>(src);
  for (size_t i = 0; i < count; ++i) a[i] += b[i];
}

}  // namespace

InProcGroup::InProcGroup(int size) : size_(size), calls_(static_cast<size_t>(size), nullptr) {}

std::unique_ptr<Communicator> InProcGroup::Member(int rank) { return std::make_unique<InProcCommunicator>(this, rank); }

void InProcGroup::Compute() {
  const Call& first = *calls_[0];
  call_status_ = absl::OkStatus();
  for (int r = 1; r < size_; ++r) {
    const Call& c = *calls_[static_cast<size_t>(r)];
    if (c.op != first.op || c.count != first.count || c.type != first.type || c.root != first.root) {
      call_status_ = absl::InvalidArgumentError(
          absl::StrCat("collective mismatch: rank 0 and rank ", r, " called different operations, counts, types or roots"));
      return;
    }
  }
  switch (first.op) {
    case Op::kAllReduce: {
      const size_t bytes = first.count * SizeOf(first.type);
      result_.resize(bytes);
      if (bytes > 0) std::memcpy(result_.data(), first.data, bytes);
      for (int r = 1; r < size_; ++r) {
        const void* src = calls_[static_cast<size_t>(r)]->data;
        if (first.type == DataType::kFloat32) {
          AddInto<float>(result_.data(), src, first.count);
        } else {
          AddInto<double>(result_.data(), src, first.count);
        }
      }
      break;
    }
    case Op::kBroadcast:
      result_.resize(first.count);
      if (first.count > 0) std::memcpy(result_.data(), calls_[static_cast<size_t>(first.root)]->data, first.count);
      break;
    case Op::kBarrier:
      break;
  }
}

absl::Status InProcGroup::Run(int rank, uint64_t seq, const Call& call, absl::Time deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  auto broken = [this] { return absl::FailedPreconditionError(absl::StrCat("communicator is broken: ", broken_reason_)); };
  auto missing = [this] {
    std::vector<int> ranks;
    for (int r = 0; r < size_; ++r) {
      if (calls_[static_cast<size_t>(r)] == nullptr) ranks.push_back(r);
    }
    return absl::StrJoin(ranks, ", ");
  };
  auto fail = [&](const std::string& what) {
    broken_ = true;
    broken_reason_ = absl::StrCat("rank ", rank, ": ", what);
    changed_.notify_all();
    return absl::DeadlineExceededError(what);
  };
  // Wait until the previous collective has fully finished and this one is open.
  while (!broken_ && !(seq_ == seq && !scattering_)) {
    if (WaitUntil(changed_, lock, deadline) && !broken_ && !(seq_ == seq && !scattering_)) {
      return fail(absl::StrCat("collective ", seq, ": previous collective still running at the deadline; rank(s) ",
                               missing(), " had not joined it"));
    }
  }
  if (broken_) return broken();
  calls_[static_cast<size_t>(rank)] = &call;
  if (++arrived_ == size_) {
    Compute();
    scattering_ = true;
    changed_.notify_all();
  }
  while (!broken_ && !scattering_) {
    if (WaitUntil(changed_, lock, deadline) && !broken_ && !scattering_) {
      return fail(absl::StrCat("collective ", seq, " did not complete before the deadline: rank(s) ", missing(),
                               " did not join"));
    }
  }
  if (broken_) return broken();
  absl::Status status = call_status_;
  if (status.ok() && call.op != Op::kBarrier && !result_.empty()) std::memcpy(call.data, result_.data(), result_.size());
  if (++departed_ == size_) {
    arrived_ = 0;
    departed_ = 0;
    scattering_ = false;
    std::fill(calls_.begin(), calls_.end(), nullptr);
    ++seq_;
    changed_.notify_all();
  }
  return status;
}

}  // namespace t2d::comm
