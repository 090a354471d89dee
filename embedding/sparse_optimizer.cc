#include "embedding/sparse_optimizer.h"

#include <cmath>

namespace t2d::embedding {

using config::SparseOptimizerConfig;

int SparseOptimizer::StateFloats(SparseOptimizerConfig::Kind kind, int dim) {
  switch (kind) {
    case SparseOptimizerConfig::SGD: return 0;
    case SparseOptimizerConfig::ADAGRAD: return dim;
    case SparseOptimizerConfig::ROWWISE_ADAGRAD: return 1;
    case SparseOptimizerConfig::ADAM: return 2 * dim;
  }
  return 0;
}

SparseOptimizer::SparseOptimizer(const SparseOptimizerConfig& config, int dim)
    : kind_(config.kind()),
      dim_(dim),
      state_floats_(StateFloats(config.kind(), dim)),
      lr_(config.learning_rate()),
      eps_(config.epsilon()),
      init_acc_(config.initial_accumulator()),
      beta1_(config.beta1()),
      beta2_(config.beta2()) {}

void SparseOptimizer::InitState(float* state) const {
  const float v = (kind_ == SparseOptimizerConfig::ADAGRAD || kind_ == SparseOptimizerConfig::ROWWISE_ADAGRAD)
                      ? init_acc_
                      : 0.0f;
  for (int i = 0; i < state_floats_; ++i) state[i] = v;
}

void SparseOptimizer::Apply(float* __restrict w, float* __restrict state, uint32_t* t,
                            const float* __restrict g) const {
  const int d = dim_;
  switch (kind_) {
    case SparseOptimizerConfig::SGD:
      for (int i = 0; i < d; ++i) w[i] -= lr_ * g[i];
      return;
    case SparseOptimizerConfig::ADAGRAD:
      for (int i = 0; i < d; ++i) {
        state[i] += g[i] * g[i];
        w[i] -= lr_ * g[i] / (std::sqrt(state[i]) + eps_);
      }
      return;
    case SparseOptimizerConfig::ROWWISE_ADAGRAD: {
      float sq = 0.0f;
      for (int i = 0; i < d; ++i) sq += g[i] * g[i];
      state[0] += sq / static_cast<float>(d);
      const float scale = lr_ / (std::sqrt(state[0]) + eps_);
      for (int i = 0; i < d; ++i) w[i] -= scale * g[i];
      return;
    }
    case SparseOptimizerConfig::ADAM: {
      *t += 1;
      const auto step = static_cast<double>(*t);
      const auto bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta1_), step));
      const auto bc2 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta2_), step));
      float* m = state;
      float* v = state + d;
      for (int i = 0; i < d; ++i) {
        m[i] = beta1_ * m[i] + (1.0f - beta1_) * g[i];
        v[i] = beta2_ * v[i] + (1.0f - beta2_) * g[i] * g[i];
        w[i] -= lr_ * (m[i] / bc1) / (std::sqrt(v[i] / bc2) + eps_);
      }
      return;
    }
  }
}

}  // namespace t2d::embedding
