#pragma once
// The user tower: e_u [B, E] from the history embeddings (docs/model.md maps each kind to the
// spec). One implementation per family of ModelConfig::kind:
//   - mixed attention (T2DIFF, T2DIFF_NO_DIFFUSION, T2DIFF_NO_DRIFT; spec section 4): a
//     Transformer layer over the session (the last k behaviours, plus the generated token x_hat
//     when there is one) and target attention of the session summary over the older history;
//   - mean pooling (TWO_TOWER_MEAN): an MLP over the mean of the valid history;
//   - SASRec (SASREC): a causal Transformer over the sequence, the newest position's output.
// Masks and attention biases are built in plain C++ from the batch lengths, which costs less than
// building them with tensor ops.
//
// Ownership: a tower registers its parameters in the model's ParameterRegistry and reads them
// there (the registry must outlive it). Thread-safety: Forward is const and may run concurrently.
// Errors: shape errors throw c10::Error, caught at the Model boundary.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>

#include "model/batch.h"
#include "model/model.h"
#include "model/parameters.h"

namespace t2d::model {

class UserTower {
 public:
  // The tower of config.kind(), its parameters registered in `params`. d = D, session_len = k.
  static std::unique_ptr<UserTower> Create(const config::ModelConfig& config, int64_t d, int64_t session_len,
                                           ParameterRegistry& params);
  virtual ~UserTower() = default;

  // E, the width of e_u (and of the item vectors the model scores it against).
  virtual int64_t output_dim() const = 0;

  // e_u [B, E]. x [B, n, D]: the history embeddings, zero at padding slots; x_hat [B, D]: the
  // generated token, undefined for models without one; mask [B, n]: 1 at valid slots. `batch`
  // supplies the lengths, session lengths and time lags.
  virtual at::Tensor Forward(const at::Tensor& x, const at::Tensor& x_hat, const at::Tensor& mask,
                             const Batch& batch) const = 0;
};

}  // namespace t2d::model
