#pragma once
// What the model needs to be built, without torch: the ModelConfig (model/model_config.proto,
// owned by this folder) and the sizes that come from elsewhere in a job (table widths, the
// session length). configs/job_options.h fills them from a job config; tools and tests fill
// them directly.
//
// Thread-safety: plain values and pure functions.

#include <cstdint>

#include "absl/status/status.h"
#include "common/hash.h"
#include "model/model_config.pb.h"

namespace t2d::model {

// Sizes the model needs that the ModelConfig does not hold.
struct ModelDims {
  int64_t id_dim = 0;       // D_id, width of the item-id table
  int64_t tag_dim = 0;      // D_tag, width of the tag table; 0: no tag feature
  int64_t user_dim = 0;     // D_user, width of the user-id table; 0: no user feature
  // User profile fields (model.user_feature_table): D_f, the width of the profile value table,
  // and F, the data set's number of profile fields (DatasetManifest.user_feature_names). Both 0
  // (no profile term) or both >= 1.
  int64_t user_feature_dim = 0;
  int64_t user_fields = 0;
  int64_t session_len = 10; // k, the current session's length cap
};

// Cross-field checks of a ModelConfig with its dims (heads divide D, schedule valid, ...).
// Errors: InvalidArgument naming the field.
absl::Status ValidateModelConfig(const config::ModelConfig& config, const ModelDims& dims);

// Seed of the reverse diffusion process for `user`'s evaluation sample. Every sample has its
// own, so results do not depend on batching or the number of workers, and serving a request for
// user U with this seed reproduces exactly what evaluation computed for U.
inline uint64_t EvalSampleSeed(uint64_t eval_seed, int64_t user) {
  return HashCombine(eval_seed, static_cast<uint64_t>(user));
}

}  // namespace t2d::model
