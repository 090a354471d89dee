// Validation of a ModelConfig with its dims (model/model_options.h); torch-free.
#include "model/model_options.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/schedule.h"

namespace t2d::model {

absl::Status ValidateModelConfig(const config::ModelConfig& c, const ModelDims& dims) {
  if (dims.user_dim < 0) return absl::InvalidArgumentError(absl::StrCat("model: user-id width ", dims.user_dim, " must be >= 0"));
  if (dims.user_feature_dim < 0 || dims.user_fields < 0 || (dims.user_feature_dim > 0) != (dims.user_fields > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model.user_feature_table: profile table width ", dims.user_feature_dim, " with ", dims.user_fields,
        " profile fields; both must be 0 (no profile fields) or both >= 1"));
  }
  if (dims.id_dim < 1 || dims.tag_dim < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model: item-id width ", dims.id_dim, " must be >= 1 and tag width ", dims.tag_dim, " >= 0"));
  }
  if (dims.session_len < 1) {
    return absl::InvalidArgumentError(absl::StrCat("data.session_len: ", dims.session_len, " must be >= 1"));
  }
  const int64_t d = dims.id_dim + dims.tag_dim;
  const bool transformer = c.kind() != config::ModelConfig::TWO_TOWER_MEAN;
  if (transformer && d % c.attention_heads() != 0) {
    return absl::InvalidArgumentError(absl::StrCat("model.attention_heads: ", c.attention_heads(),
                                                   " does not divide the behaviour width D = ", d));
  }
  if (c.user_vector() == config::ModelConfig::CONCAT && c.output_dim() != 0 && c.output_dim() != 2 * d) {
    return absl::InvalidArgumentError(absl::StrCat("model.output_dim: ", c.output_dim(),
                                                   " but user_vector = CONCAT produces width 2D = ", 2 * d));
  }
  if (c.inference_reverse_steps() > c.diffusion_steps()) {
    return absl::InvalidArgumentError(absl::StrCat("model.inference_reverse_steps: ", c.inference_reverse_steps(),
                                                   " exceeds diffusion_steps ", c.diffusion_steps()));
  }
  T2D_ASSIGN_OR_RETURN(NoiseSchedule schedule, NoiseSchedule::FromConfig(c));
  (void)schedule;
  return absl::OkStatus();
}

}  // namespace t2d::model
