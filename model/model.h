#pragma once
// T2Diff and its baselines (../shared/docs/t2diff-model.md; docs/model.md maps each config
// switch to the spec variant it selects and documents the U-Net).
//
// Contract with the trainer:
//   - The trainer pulls one embedding row per unique id of a batch and passes them as leaf
//     tensors requiring grad (Rows). After backward their .grad() holds the row gradients to
//     push to the servers; the model never owns or caches rows.
//   - The batch layout is model/batch.h (row indices, right-aligned sequences).
//   - Dense parameters live in ONE flat float buffer (DenseParameters()), and their gradients
//     in another (DenseGradients()) that backward accumulates into, so that the allreduce and
//     the optimizer (model/dense_optimizer.h) are single calls over contiguous memory.
//   - Stop-gradient (spec section 6): the diffusion module's inputs X_{1..n}, X_{2..n+1} and its
//     output x_hat_{n+1} are detached, so the U-Net learns from L_KL only and everything else
//     from L_tower only.
//
// Only the translation units that build or read tensors need torch; this header pulls in
// <ATen/core/Tensor.h> alone (the tensor type); the model's torch code is in model.cc and the
// modules it composes (parameters.h, layers.h, diffusion.h, user_tower.h), all internal to model/.
//
// Thread-safety: Forward/ForwardBackward/ZeroGradients mutate gradients and must not run
// concurrently with each other. UserVectors/ItemVectors are const, use InferenceMode and may run
// concurrently with each other (but not with a parameter update).
// Errors: bad batches/configs are InvalidArgument naming the field; a libtorch exception is
// caught here and returned as Internal.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/model_config.pb.h"
#include "model/model_options.h"
#include "model/batch.h"

namespace t2d::model {

// The batch's embedding rows: leaf float tensors, one row per unique id of the batch.
struct Rows {
  at::Tensor id_rows;   // [U, D_id]
  at::Tensor tag_rows;  // [U_tag, D_tag]; undefined when D_tag = 0
  at::Tensor user_rows; // [U_user, D_user]; undefined when D_user = 0 (no user feature)
  // [U_f, D_f], one row per distinct profile value key of the batch (U_f may be 0); undefined
  // without profile fields (ModelDims::user_fields = 0).
  at::Tensor user_feature_rows;
};

// The U-Net's gradient pass of a training step whose diffusion loss was deferred
// (Diffusion::Train with defer_gradient, the model's parallel branches): the loss's backward runs
// it in chunks, and other threads can take chunks too. Each chunk's gradient has its own slot and
// the slots are added in chunk order, so which thread ran which chunk changes no bit.
// Thread-safe.
class DeferredDiffusionPass {
 public:
  virtual ~DeferredDiffusionPass() = default;
  // Runs chunks nobody has claimed yet; returns when none is left (others may still be running).
  virtual void Help() = 0;
  // The diffusion loss (scalar): every chunk's, once all have run (runs the unclaimed ones and
  // waits for the rest). Until then the graph holds a stand-in.
  virtual at::Tensor Loss() = 0;
};

struct ForwardOutput {
  at::Tensor total_loss;      // scalar, L_tower + lambda * L_KL
  at::Tensor tower_loss;      // scalar, L_tower
  at::Tensor diffusion_loss;  // scalar, L_KL (a constant 0 for models without diffusion)
  at::Tensor user_vectors;    // e_u [B, E]
  at::Tensor target_vectors;  // e_i of the targets [B, E]
  at::Tensor x_hat;           // the generated token [B, D], detached; undefined without diffusion
};

// Explicit diffusion noise for one training forward (tests, reproducibility experiments);
// normally drawn from the noise seed.
struct TrainNoise {
  at::Tensor steps;  // [B] int64, r in 1..T
  at::Tensor eps;    // [B, n, D] float; values at padding positions are ignored
  // The U-Net's loss through tensor ops even where the plain-C++ training kernel would run
  // (tests compare the two).
  bool force_tensor_ops = false;
};

struct InferenceOptions {
  int reverse_steps = -1;  // -1: config.inference_reverse_steps (0 there: all T)
  int num_samples = -1;    // -1: config.inference_samples
  uint64_t seed = 0;       // generator seed of the reverse process; same seed, same output
  // When not empty (one per sample): sample b's noise comes from its own generator seeded with
  // sample_seeds[b] (and `seed` is unused), so a sample's output does not depend on which
  // batch, worker or request it is computed in. Evaluation and serving use this.
  std::vector<uint64_t> sample_seeds;
  // With D <= 16 the reverse process runs the U-Net through a plain-C++ kernel
  // (model/unet_kernel.h) for any batch; true forces tensor ops (tests compare the two; the
  // results agree to ~1e-5, not bit for bit).
  bool force_tensor_ops = false;
};

// One dense parameter inside the flat buffer.
struct ParameterInfo {
  std::string name;            // e.g. "unet.down0.conv.weight"
  std::vector<int64_t> shape;
  int64_t offset = 0;          // in floats, into DenseParameters()
  int64_t numel = 0;
  bool diffusion = false;      // part of the diffusion module (the U-Net)
};

class Model {
 public:
  static absl::StatusOr<std::unique_ptr<Model>> Create(const config::ModelConfig& config, const ModelDims& dims);
  // The number of dense parameters Create would allocate, without allocating them: the modules
  // register their shapes only (memory estimates, configs/job_options.h). Errors: as Create.
  static absl::StatusOr<int64_t> DenseParameterCount(const config::ModelConfig& config, const ModelDims& dims);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const config::ModelConfig& config() const;
  const ModelDims& dims() const;
  int64_t input_dim() const;   // D = D_id + D_tag
  int64_t output_dim() const;  // E, width of e_u and e_i

  // Training forward. `candidates`: the catalogue (FULL_SOFTMAX, containing every target at
  // batch.target_candidates) or the shared negatives (SAMPLED_SOFTMAX). The diffusion step and
  // noise are drawn from `noise_seed` unless `noise` is given.
  absl::StatusOr<ForwardOutput> Forward(const Batch& batch, const Rows& rows, const Candidates& candidates,
                                        uint64_t noise_seed, const TrainNoise* noise = nullptr) {
    return Forward(batch, rows, candidates, noise_seed, noise, nullptr);
  }

  struct Losses {
    double total = 0, tower = 0, diffusion = 0;
  };
  // Forward, then backward of the total loss: dense gradients are ADDED to DenseGradients()
  // (call ZeroGradients() first), row gradients land in rows.*.grad().
  //
  // parallel_branches (diffusion models): the diffusion loss's backward runs on a second thread
  // as soon as its forward is done, beside the towers' forward and backward. The diffusion
  // module sees its inputs detached and gives the towers a detached token, so the two backward
  // graphs share no node and no gradient memory: the gradients are bit for bit those of the
  // single-threaded step. With the plain-C++ U-Net (D <= 16) the diffusion forward computes
  // x_hat alone (on both threads) and the U-Net's whole gradient pass runs on the second thread
  // (Diffusion::Train, defer_gradient); the first thread takes over its remaining chunks once the
  // towers' backward is done (each chunk's gradient has its own slot, summed in chunk order). Meant for two cores with one intra-op thread each
  // (at::set_num_threads(1)), where the small ops of the authors' size gain nothing from
  // intra-op threads.
  absl::StatusOr<Losses> ForwardBackward(const Batch& batch, const Rows& rows, const Candidates& candidates,
                                         uint64_t noise_seed, bool parallel_branches = false);

  // User tower only (serving/eval): e_u [B, E] without grad. Batch targets are not read. For the
  // diffusion models x_hat comes from the reverse process started from pure noise.
  absl::StatusOr<at::Tensor> UserVectors(const Batch& batch, const Rows& rows, const InferenceOptions& options) const;
  // The generated token alone [B, D] (diffusion models only), as used by UserVectors.
  absl::StatusOr<at::Tensor> GenerateNextItem(const Batch& batch, const Rows& rows,
                                              const InferenceOptions& options) const;
  // The forward (noising) process as Forward applies it: z_r = sqrt(ab_r) z0 + sqrt(1 - ab_r) eps,
  // eps ~ N(0, I) drawn from `seed`; z0 [B, ...] float, steps [B] int64 in 1..T. No grad.
  at::Tensor ForwardNoise(const at::Tensor& z0, const at::Tensor& steps, uint64_t seed) const;
  // Item tower only: e_i [S, E] for the slots (no padding slots), without grad.
  absl::StatusOr<at::Tensor> ItemVectors(const ItemSlots& items, const Rows& rows) const;

  // Dense parameters and their gradients, each one contiguous float buffer.
  absl::Span<float> DenseParameters();
  absl::Span<const float> DenseParameters() const;
  absl::Span<float> DenseGradients();
  void ZeroGradients();
  const std::vector<ParameterInfo>& Parameters() const;
  // Leaf tensors viewing the flat buffers (parameter i of Parameters()); for tests and tools.
  at::Tensor ParameterTensor(size_t i) const;

 private:
  struct Impl;
  explicit Model(std::unique_ptr<Impl> impl);
  // Forward; `after_diffusion`, when set, is called with the weighted diffusion loss as soon as
  // it exists (before the towers run), and the loss's backward is left to it. With the kernel's
  // deferred pass (`pass` set, to be kept until that backward has run) the forward's diffusion
  // and total losses are stand-ins: the pass gives the diffusion loss.
  using AfterDiffusion =
      std::function<void(const at::Tensor& weighted, const std::shared_ptr<DeferredDiffusionPass>& pass)>;
  absl::StatusOr<ForwardOutput> Forward(const Batch& batch, const Rows& rows, const Candidates& candidates,
                                        uint64_t noise_seed, const TrainNoise* noise,
                                        const AfterDiffusion* after_diffusion);
  std::unique_ptr<Impl> impl_;
};

}  // namespace t2d::model
