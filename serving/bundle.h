#pragma once
// A loaded serving bundle (serving/bundle_writer.h; layout in docs/export.md): the user tower,
// the embedding rows it reads, and the precomputed item vectors. Answers top-k queries for a
// behaviour history, the way `t2diff retrieve` and an online service would.
//
// Ids outside the exported catalogue read as their tables' initial values (a pure function of
// (seed, id), see embedding/initializer.h), exactly as the trainer saw unseen ids.
//
// Thread-safety: Load once; TopK is const and may run concurrently.
// Errors: a missing, damaged or incomplete bundle is an error naming the file.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace t2d::serving {

struct Retrieved {
  std::vector<int64_t> items;
  std::vector<float> scores;
  double user_tower_ms = 0;  // building the input and running the user tower
  double search_ms = 0;      // scoring the catalogue and taking the top k
};

class Bundle {
 public:
  static absl::StatusOr<std::unique_ptr<Bundle>> Load(const std::string& dir);
  ~Bundle();

  // The k best items for `history` (item ids, oldest first; the newest max_seq_len are used).
  // `seed` seeds the reverse diffusion process, so a request is reproducible. k < 1 and an
  // empty history are InvalidArgument; k beyond the catalogue returns all of it.
  absl::StatusOr<Retrieved> TopK(absl::Span<const int64_t> history, int k, uint64_t seed) const;

  int64_t num_items() const;
  // The evaluation seed of the bundle's job (eval.seed), for reproducing evaluation samples.
  uint64_t eval_seed() const;

 private:
  struct Impl;
  explicit Bundle(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace t2d::serving
