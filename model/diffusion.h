#pragma once
// The diffusion module of T2Diff (../shared/docs/t2diff-model.md sections 3 and 6; the U-Net is
// documented in docs/model.md): the forward (noising) process, the U-Net that predicts z_0, its
// training loss L_KL and the reverse process that generates x_hat at inference.
//
// What is diffused: T2DIFF diffuses the drift z_0 = X_{2..n+1} - X_{1..n} and adds x_n back to the
// generated last position; T2DIFF_NO_DRIFT diffuses z_0 = X_{2..n+1} itself. The U-Net is
// conditioned on X_{1..n} and the sinusoidal step embedding. model.diffusion_window = k restricts
// all of it to the newest k positions; model.unet_channels sets the U-Net's width apart from D.
//
// Ownership: a Diffusion registers its U-Net in the model's ParameterRegistry and reads it there
// (the registry must outlive it). Thread-safety: const methods, safe to call concurrently (each
// call builds its own generators and, per thread, its own plain-C++ kernel).
// Errors: Train returns InvalidArgument for explicit noise steps outside 1..T; shape errors
// throw c10::Error, caught at the Model boundary.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "model/layers.h"
#include "model/model.h"
#include "model/parameters.h"
#include "model/schedule.h"
#include "model/unet_kernel.h"

namespace t2d::model {

// q(z_r | z_0): z_r = sqrt(alpha_bar_r) z_0 + sqrt(1 - alpha_bar_r) eps, with the schedule's
// coefficients as float tables. A value (copies share the tables).
class NoisingProcess {
 public:
  explicit NoisingProcess(const NoiseSchedule& schedule);
  // z0 [B, ...] float, r [B] int64 in 1..T, eps shaped like z0.
  at::Tensor Apply(const at::Tensor& z0, const at::Tensor& r, const at::Tensor& eps) const;

 private:
  at::Tensor sqrt_ab_, sqrt_1m_ab_;  // [T + 1]
};

// Diffusion::DrawNoise.
struct DrawnNoise {
  at::Tensor steps;  // [B] int64
  at::Tensor eps;    // [B, w, D]
};

class Diffusion {
 public:
  // The module of config.kind() with its U-Net registered in `params` (names "unet.*",
  // ParameterInfo::diffusion = true); nullptr for kinds without diffusion (TWO_TOWER_MEAN,
  // SASREC, T2DIFF_NO_DIFFUSION), which register nothing.
  static std::unique_ptr<Diffusion> Create(const config::ModelConfig& config, int64_t d, const NoiseSchedule& schedule,
                                           ParameterRegistry& params);

  struct TrainOutput {
    at::Tensor loss;   // scalar L_KL
    at::Tensor x_hat;  // [B, D] the generated token (detached)
    // defer_gradient with the plain-C++ kernel: the U-Net's whole pass, which the loss's
    // backward runs; `loss` is a stand-in (NaN) until then. Keep it until that backward has run.
    std::shared_ptr<DeferredDiffusionPass> deferred;
  };
  // One training step of the module. x [B, n, D] history embeddings, targets [B, D] the targets'
  // embeddings; both are detached here, and so is x_hat (stop-gradient, spec section 6). The step
  // r and the noise come from `noise` when given (already shape-checked), else from noise_seed.
  // model.guidance_drop_fraction zeroes the condition of some samples; with
  // model.train_generated_token_fraction some samples' x_hat comes from Generate (from pure
  // noise) instead; both draw from their own generator seeded from noise_seed.
  // With D <= 16 and a U-Net no wider than 8 channels at level 0 (model.unet_channels, else D)
  // the U-Net's forward and backward run in the plain-C++ kernel
  // (UnetKernel::TrainLoss) unless noise->force_tensor_ops: per sequence, split over the
  // intra-op threads in fixed chunks of sequences, so the gradient's bits do not depend on the
  // thread count. Its work is done in the forward; backward only scales the saved gradient.
  // With defer_gradient (the model's parallel branches) forward computes x_hat alone (only the
  // positions it depends on, UnetKernel::TrainLast, on two threads) and backward runs the whole
  // kernel (TrainOutput::deferred), so that the towers, which wait for x_hat only, overlap the
  // U-Net's loss and gradient; the results are bit-identical.
  // `drawn` (without `noise`): DrawNoise(B, n, noise_seed), drawn ahead (on another thread).
  absl::StatusOr<TrainOutput> Train(const at::Tensor& x, const at::Tensor& targets, const SequenceMask& mask,
                                    uint64_t noise_seed, const TrainNoise* noise, bool defer_gradient = false,
                                    const DrawnNoise* drawn = nullptr) const;

  // The step r [B] and the noise eps [B, w, D] (w: the window of n) that Train draws from
  // noise_seed. Thread-safe (a generator of its own): the model's parallel branches draw them on
  // the second thread while the first embeds the batch.
  DrawnNoise DrawNoise(int64_t b, int64_t n, uint64_t noise_seed) const;

  // The reverse process from pure noise: x_hat [B, D] averaged over the samples. x [B, n, D],
  // mask [B, n]. With D <= 16 any batch runs the plain-C++ U-Net (model/unet_kernel.h), split
  // over the intra-op threads by sequence, unless options.force_tensor_ops; serving and
  // evaluation thus run the same code, and with per-sample seeds a sample's x_hat is
  // bit-identical whatever batch it is in. model.guidance_weight > 0 (classifier-free guidance:
  // a second, unconditional U-Net pass per step) runs on tensor ops at any D.
  at::Tensor Generate(const at::Tensor& x, const at::Tensor& mask, const InferenceOptions& options) const;

 private:
  struct ConvBlock {  // kernel-3 "same" conv + swish + LayerNorm over channels
    Linear conv;
    Norm norm;
  };
  struct UpLevel {
    Linear proj;  // kernel-1 conv applied before the nearest upsample (they commute)
    ConvBlock block;
  };

  Diffusion(const config::ModelConfig& config, int64_t d, const NoiseSchedule& schedule, ParameterRegistry& params);
  // Positions the module works on for histories of n slots (model.diffusion_window).
  int64_t Window(int64_t n) const;
  // x [B, n, 2D] -> z0_hat [B, n, D]; m [B, n] float validity.
  at::Tensor Unet(at::Tensor x, at::Tensor m) const;
  at::Tensor UnetInput(const at::Tensor& z, const at::Tensor& cond, const at::Tensor& emb) const;

  const config::ModelConfig config_;
  const int64_t d_;
  const bool drift_;
  const NoiseSchedule schedule_;
  const NoisingProcess noising_;
  const ParameterRegistry& params_;
  at::Tensor step_emb_;  // [T + 1, 2D], already multiplied by w
  std::vector<ConvBlock> down_;
  std::vector<UpLevel> up_;
  Linear out_;
  UnetKernelLayout kernel_layout_;
  std::vector<ParameterRef> unet_params_;  // every U-Net parameter, in registration order
};

}  // namespace t2d::model
