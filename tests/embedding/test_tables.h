#pragma once
// Table specs shared by the embedding tests.

#include <string>

#include "embedding/table_config.pb.h"

namespace t2d::embedding::testing {

inline config::TableConfig Spec(const std::string& name, int dim, config::SparseOptimizerConfig::Kind kind,
                                float lr = 0.1f, config::InitializerConfig::Kind init = config::InitializerConfig::ZEROS) {
  config::TableConfig t;
  t.set_name(name);
  t.set_dim(dim);
  t.mutable_initializer()->set_kind(init);
  t.mutable_optimizer()->set_kind(kind);
  t.mutable_optimizer()->set_learning_rate(lr);
  return t;
}

}  // namespace t2d::embedding::testing
