#include "model/schedule.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace t2d::model {

absl::StatusOr<NoiseSchedule> NoiseSchedule::Create(config::ModelConfig::Schedule kind, int steps,
                                                    double a, double b) {
  if (steps < 1) return absl::InvalidArgumentError(absl::StrCat("model.diffusion_steps: ", steps, " < 1"));
  NoiseSchedule s;
  s.steps_ = steps;
  s.beta_.assign(static_cast<size_t>(steps) + 1, 0.0);
  s.alpha_bar_.assign(static_cast<size_t>(steps) + 1, 1.0);
  const double t = steps;
  // Exponential end points shared by all shapes so that they differ only in how beta grows.
  const double first = a * std::exp(b / t);
  const double last = a * std::exp(b);
  for (int i = 1; i <= steps; ++i) {
    double beta = 0;
    switch (kind) {
      case config::ModelConfig::EXPONENTIAL:
        beta = a * std::exp(b * i / t);
        break;
      case config::ModelConfig::LINEAR:
        beta = steps == 1 ? first : first + (last - first) * (i - 1) / (t - 1);
        break;
      case config::ModelConfig::LOG:
        beta = steps == 1 ? first : first + (last - first) * std::log(static_cast<double>(i)) / std::log(t);
        break;
    }
    if (!(beta > 0 && beta < 1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model.schedule_a/schedule_b: beta_", i, " = ", beta, " is outside (0, 1) (a = ", a, ", b = ", b,
          ", T = ", steps, "; the exponential schedule needs a * exp(b) < 1)"));
    }
    s.beta_[static_cast<size_t>(i)] = beta;
    s.alpha_bar_[static_cast<size_t>(i)] = s.alpha_bar_[static_cast<size_t>(i) - 1] * (1.0 - beta);
  }
  return s;
}

absl::StatusOr<NoiseSchedule> NoiseSchedule::FromConfig(const config::ModelConfig& config) {
  return Create(config.schedule(), config.diffusion_steps(), config.schedule_a(), config.schedule_b());
}

std::vector<ReverseStep> NoiseSchedule::ReverseSteps(int num_steps,
                                                     config::ModelConfig::ReverseUpdate update) const {
  if (num_steps <= 0 || num_steps > steps_) num_steps = steps_;
  // Evenly spaced steps from T down to 1 (always including both ends when num_steps >= 2).
  std::vector<int> seq;
  for (int i = 0; i < num_steps; ++i) {
    const double frac = num_steps == 1 ? 0.0 : static_cast<double>(i) / (num_steps - 1);
    const int r = static_cast<int>(std::lround(steps_ - frac * (steps_ - 1)));
    if (seq.empty() || r < seq.back()) seq.push_back(r);
  }
  std::vector<ReverseStep> out;
  for (size_t i = 0; i < seq.size(); ++i) {
    ReverseStep st;
    st.step = seq[i];
    st.prev = i + 1 < seq.size() ? seq[i + 1] : 0;
    if (st.prev == 0) {
      st.c0 = 1.0;
    } else {
      const double ab_t = alpha_bar(st.step), ab_s = alpha_bar(st.prev);
      const double alpha_eff = ab_t / ab_s;
      const double beta_eff = 1.0 - alpha_eff;
      const double beta_tilde = beta_eff * (1.0 - ab_s) / (1.0 - ab_t);
      st.c0 = std::sqrt(ab_s) * beta_eff / (1.0 - ab_t);
      if (update == config::ModelConfig::DDIM) {
        st.c1 = std::sqrt((1.0 - ab_s) / (1.0 - ab_t));
        st.c0 = std::sqrt(ab_s) - std::sqrt(ab_t) * st.c1;
        st.sigma = 0;
      } else if (update == config::ModelConfig::AUTHORS) {
        st.c1 = std::sqrt(ab_t) * (1.0 - ab_s) / (1.0 - ab_t);
        st.sigma = beta_tilde;
      } else {
        st.c1 = std::sqrt(alpha_eff) * (1.0 - ab_s) / (1.0 - ab_t);
        st.sigma = std::sqrt(beta_tilde);
      }
    }
    out.push_back(st);
  }
  return out;
}

}  // namespace t2d::model
