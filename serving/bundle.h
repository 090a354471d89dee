#pragma once
// A loaded serving bundle (serving/bundle_writer.h; layout in docs/serving.md): the user tower,
// the embedding rows it reads, the catalogue with its item vectors, and the data set's options.
// Answers top-k queries the way evaluation scores a sample:
//   - a query carries what an evaluation sample carries (user id, behaviours with their times,
//     the request time, the user's profile values), and becomes model input through the same
//     code as evaluation (data::LiveSampleBuilder -> model::StepBuilder -> Model::UserVectors),
//     with the reverse diffusion seeded per user by EvalSampleSeed unless the query names a seed;
//   - so a query with an evaluation sample's behaviours, user and target time gets the user
//     vector evaluation computed, and every item evaluation ranked above the target.
//
// A delta (serving/bundle_writer.h, WriteBundleDelta) applies to the full bundle it was made
// from: WithDelta returns a NEW bundle equal to the base with the delta's dense state and rows,
// leaving this one untouched, so a server can keep answering from the old one while it is built.
//
// Thread-safety: immutable after Load/WithDelta; Search and TopK are const and may run concurrently.
// Errors: a missing, damaged or incomplete bundle or delta is an error naming the file; a
// malformed query is InvalidArgument naming the field, for that query alone.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "data/live_sample.h"

namespace t2d::serving {

// The most behaviours one query may carry (a request that long is a client bug, not a user).
inline constexpr int64_t kMaxQueryItems = 100000;

// A user profile value by field name (a field of the data set, DatasetManifest.user_feature_names)
// and value text, as a client sends it.
using UserFeatureValue = std::pair<std::string, std::string>;

struct Query {
  data::LiveRequest request;
  // The user's profile values by field name (the protocol's "user_features"). The bundle turns
  // them into request.user_features, data::UserFeatureKey(field, value) in its data set's field
  // order; a field not given is missing. A name the data set has no field of is an error for
  // this query, as is giving both these and request.user_features.
  absl::Span<const UserFeatureValue> user_features;
  int k = 10;
  // Seed of the reverse diffusion process; unset: EvalSampleSeed(eval.seed, user), as evaluation.
  std::optional<uint64_t> seed;
};

struct Retrieved {
  std::vector<int64_t> items;
  std::vector<float> scores;
  double user_tower_ms = 0;  // building the input and running the user tower (the whole batch)
  double search_ms = 0;      // scoring the catalogue and taking the top k (the whole batch)
};

class Bundle {
 public:
  static absl::StatusOr<std::unique_ptr<Bundle>> Load(const std::string& dir);
  ~Bundle();

  // Answers `queries` with one pass of the user tower over all the valid ones; each answer is a
  // result or the error of its own query (k < 1, an empty or over-long history, an unknown item,
  // bad times). k beyond the catalogue returns all of it.
  std::vector<absl::StatusOr<Retrieved>> Search(absl::Span<const Query> queries) const;
  // One query.
  absl::StatusOr<Retrieved> TopK(const Query& query) const;

  // This bundle with the delta at `delta_dir` applied (see the file comment). Errors: the
  // delta's own (damaged, missing files) and FailedPrecondition when it was made from another
  // base bundle or another model.
  absl::StatusOr<std::unique_ptr<Bundle>> WithDelta(const std::string& delta_dir) const;

  int64_t num_items() const;
  int64_t step() const;  // training step of the model answering
  // The base bundle's identity (SHA-256 of its MANIFEST), which deltas name; and the applied
  // delta's, empty when none.
  const std::string& version() const;
  const std::string& delta_version() const;
  // What answers searches: "exact" (the whole catalogue, scored as evaluation scores it) or the
  // approximate index kind.
  std::string search_kind() const;

 private:
  struct Impl;
  explicit Bundle(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace t2d::serving
