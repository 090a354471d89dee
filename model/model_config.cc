// Torch-free parts of model/model.h: dims from the job config and config validation.
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "configs/config_loader.h"
#include "model/model.h"
#include "model/schedule.h"

namespace t2d::model {

absl::StatusOr<ModelDims> DimsFromJobConfig(const config::JobConfig& job) {
  ModelDims dims;
  const int id = config::FindTable(job, job.model().item_id_table());
  if (id < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model.item_id_table: no table named \"", job.model().item_id_table(), "\""));
  }
  dims.id_dim = job.tables(id).dim();
  if (!job.model().item_tag_table().empty()) {
    const int tag = config::FindTable(job, job.model().item_tag_table());
    if (tag < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.item_tag_table: no table named \"", job.model().item_tag_table(), "\""));
    }
    dims.tag_dim = job.tables(tag).dim();
  }
  dims.session_len = job.data().session_len();
  T2D_RETURN_IF_ERROR(ValidateModelConfig(job.model(), dims));
  return dims;
}

absl::Status ValidateModelConfig(const config::ModelConfig& c, const ModelDims& dims) {
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
