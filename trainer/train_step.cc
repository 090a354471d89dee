#include "trainer/train_step.h"

#include <ATen/core/Tensor.h>
#include <glog/logging.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"
#include "common/checksum.h"
#include "common/hash.h"
#include "common/status_macros.h"

namespace t2d::trainer {

double LearningRateAt(const config::TrainingConfig& training, int64_t step, int64_t total_steps) {
  const double lr = training.learning_rate();
  const int64_t warmup = training.lr_warmup_steps();
  if (step < warmup) return lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const int64_t span = std::max<int64_t>(1, total_steps - warmup - 1);
  const double progress = std::min(1.0, static_cast<double>(step - warmup) / static_cast<double>(span));
  const double floor = training.lr_final_fraction();
  switch (training.lr_schedule()) {
    case config::TrainingConfig::CONSTANT: return lr;
    case config::TrainingConfig::LINEAR: return lr * (1.0 - (1.0 - floor) * progress);
    case config::TrainingConfig::COSINE: return lr * (floor + (1.0 - floor) * 0.5 * (1.0 + std::cos(M_PI * progress)));
  }
  return lr;
}

TrainStep::TrainStep(const RunContext* context, model::Model* model, model::DenseAdam* optimizer,
                     model::StepBuilder* builder, RowFetcher* fetcher)
    : ctx_(*context), model_(model), optimizer_(optimizer), builder_(builder), fetcher_(fetcher) {}

absl::Status TrainStep::Prepare(const data::SampleBatch& batch, int64_t at, Prepared* p) {
  T2D_RETURN_IF_ERROR(Build(batch, at, p));
  return Request(p);
}

absl::Status TrainStep::Build(const data::SampleBatch& batch, int64_t at, Prepared* p) {
  p->seed = HashCombine(ctx_.cfg().training().seed(),
                        HashCombine(static_cast<uint64_t>(at), static_cast<uint64_t>(ctx_.rank)));
  return builder_->BuildTraining(batch, p->seed, &p->in);
}

absl::Status TrainStep::Request(Prepared* p) {
  T2D_ASSIGN_OR_RETURN(p->rows, fetcher_->Request(p->in));
  return absl::OkStatus();
}

absl::StatusOr<TrainStep::Result> TrainStep::Run(Prepared& p, int64_t step, int64_t total_steps) {
  const model::StepInput& in = p.in;
  T2D_ASSIGN_OR_RETURN(model::Rows rows, fetcher_->Take(in, &p.rows, /*requires_grad=*/true));
  model_->ZeroGradients();
  auto losses = model_->ForwardBackward(in.batch, rows, in.candidates, HashCombine(p.seed, 0x6e6f697365ULL),
                                        ctx_.parallel_branches);
  if (!losses.ok()) return losses.status();
  // One allreduce: [dense grads | total, tower, diffusion loss | non-finite flag].
  const auto grads = model_->DenseGradients();
  sync_.resize(grads.size() + 4);
  std::copy(grads.begin(), grads.end(), sync_.begin());
  const bool finite = std::isfinite(losses->total) &&
                      std::all_of(grads.begin(), grads.end(), [](float g) { return std::isfinite(g); });
  float* tail = sync_.data() + grads.size();
  tail[0] = finite ? static_cast<float>(losses->total) : 0.f;
  tail[1] = finite ? static_cast<float>(losses->tower) : 0.f;
  tail[2] = finite ? static_cast<float>(losses->diffusion) : 0.f;
  tail[3] = finite ? 0.f : 1.f;
  T2D_RETURN_IF_ERROR(ctx_.workers->AllReduceSum(absl::MakeSpan(sync_), ctx_.Deadline()));
  const float bad_workers = tail[3];
  Result result;
  result.skipped = bad_workers > 0;
  if (result.skipped) {
    if (ctx_.cfg().training().nonfinite_policy() == config::TrainingConfig::STOP) {
      return absl::InternalError(absl::StrFormat(
          "non-finite loss or dense gradient on %d worker(s) at step %d (this worker: loss %g); stopping as "
          "training.nonfinite_policy = STOP says (SKIP would skip such steps)", static_cast<int>(bad_workers), step,
          losses->total));
    }
    if (ctx_.rank == 0) {
      LOG(WARNING) << "step " << step << ": non-finite loss or gradient on " << bad_workers
                   << " worker(s); step skipped on every worker (nonfinite_policy = SKIP)";
    }
  }
  T2D_RETURN_IF_ERROR(fetcher_->Push(in, rows, result.skipped));
  if (!result.skipped) {
    optimizer_->set_learning_rate(static_cast<float>(LearningRateAt(ctx_.cfg().training(), step, total_steps)));
    const float inv = 1.0f / static_cast<float>(ctx_.world);
    for (size_t i = 0; i < grads.size(); ++i) sync_[i] *= inv;
    optimizer_->Step(model_->DenseParameters(), absl::MakeConstSpan(sync_.data(), grads.size()));
  }
  result.losses.total = tail[0] / ctx_.world;
  result.losses.tower = tail[1] / ctx_.world;
  result.losses.diffusion = tail[2] / ctx_.world;
  return result;
}

absl::Status TrainStep::CheckReplicas(int64_t step) {
  const auto params = model_->DenseParameters();
  const uint32_t crc = Crc32(params.data(), params.size() * sizeof(float));
  uint32_t root_crc = crc;
  T2D_RETURN_IF_ERROR(ctx_.workers->Broadcast(&root_crc, sizeof(root_crc), 0, ctx_.Deadline()));
  float mismatch = root_crc != crc ? 1.0f : 0.0f;
  T2D_RETURN_IF_ERROR(ctx_.workers->AllReduceSum(absl::MakeSpan(&mismatch, 1), ctx_.Deadline()));
  if (mismatch > 0) {
    return absl::InternalError(absl::StrFormat(
        "dense replicas diverged at step %d: %d worker(s) differ from worker 0 (this worker's checksum %08x, "
        "worker 0's %08x)", step, static_cast<int>(mismatch), crc, root_crc));
  }
  return absl::OkStatus();
}

}  // namespace t2d::trainer
