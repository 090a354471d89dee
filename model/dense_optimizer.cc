#include "model/dense_optimizer.h"

#include <cmath>

#include "glog/logging.h"

namespace t2d::model {

DenseAdam::DenseAdam(size_t size, const DenseAdamOptions& options) : options_(options), m_(size, 0.f), v_(size, 0.f) {}

double DenseAdam::Step(absl::Span<float> params, absl::Span<const float> grads) {
  CHECK_EQ(params.size(), m_.size());
  CHECK_EQ(grads.size(), m_.size());
  double sq = 0;
  for (float g : grads) sq += static_cast<double>(g) * g;
  const double norm = std::sqrt(sq);
  float scale = 1.f;
  if (options_.clip_norm > 0 && norm > options_.clip_norm) scale = static_cast<float>(options_.clip_norm / norm);
  ++step_;
  const double bc1 = 1.0 - std::pow(static_cast<double>(options_.beta1), static_cast<double>(step_));
  const double bc2 = 1.0 - std::pow(static_cast<double>(options_.beta2), static_cast<double>(step_));
  const float step_size = static_cast<float>(options_.learning_rate / bc1);
  const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  const float b1 = options_.beta1, b2 = options_.beta2, eps = options_.epsilon;
  for (size_t i = 0; i < params.size(); ++i) {
    const float g = grads[i] * scale;
    m_[i] = b1 * m_[i] + (1.f - b1) * g;
    v_[i] = b2 * v_[i] + (1.f - b2) * g * g;
    params[i] -= step_size * m_[i] / (std::sqrt(v_[i]) * inv_sqrt_bc2 + eps);
  }
  return norm;
}

}  // namespace t2d::model
