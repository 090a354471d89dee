#pragma once
// The diffusion noise schedule and the reverse-process coefficients of
// ../shared/docs/t2diff-model.md section 3, computed once in double precision.
//
// A NoiseSchedule is an immutable value: beta_s, alpha_s and alpha_bar_s for s = 1..T, stored
// 1-based (index 0 holds alpha_bar_0 = 1, beta_0 = 0). ReverseCoefficients() gives the
// per-step update z_{prev} = c0 * z0_hat + c1 * z + sigma * eps for a (possibly shortened)
// sequence of reverse steps. Torch-free; thread-safe (const after construction).
// Errors: Create() returns InvalidArgument for a schedule with beta outside (0, 1).

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "model/model_config.pb.h"

namespace t2d::model {

// One reverse step from diffusion step `step` to step `prev` (< step; 0 means the end).
struct ReverseStep {
  int step = 0;         // r, in 1..T
  int prev = 0;         // the step this update lands on; 0: the last update, z_0 = z0_hat
  double c0 = 0;        // weight of z0_hat
  double c1 = 0;        // weight of z_r
  double sigma = 0;     // weight of fresh noise eps ~ N(0, I)
};

class NoiseSchedule {
 public:
  // T = steps; the shape and a, b as documented on ModelConfig.schedule.
  static absl::StatusOr<NoiseSchedule> Create(config::ModelConfig::Schedule kind, int steps,
                                              double a, double b);
  static absl::StatusOr<NoiseSchedule> FromConfig(const config::ModelConfig& config);

  int steps() const { return steps_; }
  // 1-based, s in 0..T (s = 0: beta 0, alpha 1, alpha_bar 1).
  double beta(int s) const { return beta_[static_cast<size_t>(s)]; }
  double alpha(int s) const { return 1.0 - beta_[static_cast<size_t>(s)]; }
  double alpha_bar(int s) const { return alpha_bar_[static_cast<size_t>(s)]; }

  // The reverse updates, newest step first, using `num_steps` evenly spaced steps of 1..T
  // (num_steps = 0 or T: every step, r = T..1, the spec's DDPM posterior exactly). Between
  // non-adjacent steps t > s the posterior of q(z_s | z_t, z_0) is used with
  // alpha_eff = alpha_bar_t / alpha_bar_s. The last entry has prev = 0, c0 = 1, c1 = sigma = 0.
  std::vector<ReverseStep> ReverseSteps(int num_steps, config::ModelConfig::ReverseUpdate update) const;

 private:
  NoiseSchedule() = default;
  int steps_ = 0;
  std::vector<double> beta_;
  std::vector<double> alpha_bar_;
};

}  // namespace t2d::model
