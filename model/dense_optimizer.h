#pragma once
// Adam over the model's flat dense parameter buffer (model/model.h keeps every dense parameter
// and gradient in one contiguous float array), with optional clipping of the global gradient
// norm. Plain loops, no torch: the dense model is small, and one pass over contiguous memory
// beats one optimizer kernel per parameter tensor.
//
// State: the first and second moments (one float each per parameter) and the step count;
// saved/loaded with the parameters by model/dense_state.h. Not thread-safe.

#include <cstdint>
#include <vector>

#include "absl/types/span.h"

namespace t2d::model {

struct DenseAdamOptions {
  float learning_rate = 0.002f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float epsilon = 1e-8f;
  // Scale the gradient so that its global L2 norm is at most this; 0: no clipping.
  float clip_norm = 0.f;
};

class DenseAdam {
 public:
  DenseAdam(size_t size, const DenseAdamOptions& options);

  // One update of `params` with `grads` (same size as the constructor's). Returns the gradient
  // norm before clipping. `grads` is read only (clipping is applied on the fly).
  double Step(absl::Span<float> params, absl::Span<const float> grads);

  size_t size() const { return m_.size(); }
  int64_t step() const { return step_; }
  const DenseAdamOptions& options() const { return options_; }
  void set_learning_rate(float lr) { options_.learning_rate = lr; }

  // State access for checkpoints.
  std::vector<float>& first_moment() { return m_; }
  std::vector<float>& second_moment() { return v_; }
  const std::vector<float>& first_moment() const { return m_; }
  const std::vector<float>& second_moment() const { return v_; }
  void set_step(int64_t step) { step_ = step; }

 private:
  DenseAdamOptions options_;
  std::vector<float> m_, v_;
  int64_t step_ = 0;
};

}  // namespace t2d::model
