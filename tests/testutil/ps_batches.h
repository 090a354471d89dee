#pragma once
// Deterministic test data for parameter-server tests (threads and mpiexec): two tables with
// different optimizers, per-(step, worker, table) batches with repeated ids and overlap between
// workers, and the client-side de-duplication a reference store must see to match bit for bit.

#include <cstdint>
#include <map>
#include <random>
#include <vector>

#include "embedding/table_config.pb.h"

namespace t2d::testutil {

inline std::vector<config::TableConfig> Tables() {
  std::vector<config::TableConfig> t(2);
  t[0].set_name("item");
  t[0].set_dim(8);
  t[0].mutable_optimizer()->set_kind(config::SparseOptimizerConfig::ADAGRAD);
  t[0].mutable_initializer()->set_seed(7);
  t[1].set_name("tag");
  t[1].set_dim(3);
  t[1].mutable_optimizer()->set_kind(config::SparseOptimizerConfig::SGD);
  t[1].mutable_optimizer()->set_learning_rate(0.5f);
  return t;
}

// Worker w's batch for (step, table): ids with duplicates and overlap between workers.
struct Batch {
  std::vector<int64_t> ids;
  std::vector<float> grads;
};
inline Batch MakeBatch(int step, int worker, int table, int dim) {
  std::mt19937_64 rng(static_cast<uint64_t>(step * 1000 + worker * 10 + table));
  Batch b;
  const int n = 20 + static_cast<int>(rng() % 20);
  for (int i = 0; i < n; ++i) b.ids.push_back(static_cast<int64_t>(rng() % 60) - 5);  // includes negative ids
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (int i = 0; i < n * dim; ++i) b.grads.push_back(g(rng));
  return b;
}
// The same batch with repeated ids summed in input order (what the client sends).
inline Batch Dedup(const Batch& b, int dim) {
  Batch out;
  std::map<int64_t, size_t> pos;
  for (size_t i = 0; i < b.ids.size(); ++i) {
    auto [it, inserted] = pos.emplace(b.ids[i], out.ids.size());
    if (inserted) {
      out.ids.push_back(b.ids[i]);
      out.grads.insert(out.grads.end(), b.grads.begin() + static_cast<long>(i) * dim, b.grads.begin() + static_cast<long>(i + 1) * dim);
    } else {
      for (int j = 0; j < dim; ++j) out.grads[it->second * static_cast<size_t>(dim) + static_cast<size_t>(j)] += b.grads[i * static_cast<size_t>(dim) + static_cast<size_t>(j)];
    }
  }
  return out;
}

inline std::vector<int64_t> ProbeIds() {
  std::vector<int64_t> ids;
  for (int64_t i = -7; i < 62; ++i) ids.push_back(i);
  ids.push_back(5);  // a repeat: every position gets its row
  ids.push_back(-7);
  return ids;
}


}  // namespace t2d::testutil
