#pragma once
// Per-row optimizers applied by the table that owns the rows.
//
// Optimizer state lives next to the row's weights in the same record (see embedding_table.h),
// `StateFloats(dim)` floats per row, laid out as:
//   SGD              : none
//   ADAGRAD          : acc[dim]            acc += g*g;             w -= lr * g / (sqrt(acc) + eps)
//   ROWWISE_ADAGRAD  : acc[1]              acc += mean(g*g);       w -= lr * g / (sqrt(acc) + eps)
//   ADAM             : m[dim], v[dim]      m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g*g;  t += 1;
//                                          w -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
// Adam's step count t is per row (a row updated rarely gets full bias correction on each of its
// own updates) and is kept in the record's step-count word (embedding_table.h).
// Thread-safety: immutable after construction; Apply touches only the row it is given.

#include <cstdint>

#include "embedding/table_config.pb.h"

namespace t2d::embedding {

class SparseOptimizer {
 public:
  SparseOptimizer(const config::SparseOptimizerConfig& config, int dim);

  config::SparseOptimizerConfig::Kind kind() const { return kind_; }
  int state_floats() const { return state_floats_; }

  // Initial optimizer state for a new row (state_floats() values).
  void InitState(float* state) const;

  // One update of row `w` (dim floats) with state `state` and step count `*t` by gradient `g`.
  void Apply(float* w, float* state, uint32_t* t, const float* g) const;

  static int StateFloats(config::SparseOptimizerConfig::Kind kind, int dim);

 private:
  config::SparseOptimizerConfig::Kind kind_;
  int dim_;
  int state_floats_;
  float lr_, eps_, init_acc_, beta1_, beta2_;
};

}  // namespace t2d::embedding
