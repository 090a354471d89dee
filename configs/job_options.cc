#include "configs/job_options.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "configs/config_loader.h"
#include "model/model.h"

namespace t2d::config {

model::StepBuilder::Options StepBuilderOptionsOf(const JobConfig& job) {
  model::StepBuilder::Options o;
  o.full_softmax = job.model().loss() == ModelConfig::FULL_SOFTMAX;
  o.num_negatives = job.model().num_negatives();
  o.use_tags = !job.model().item_tag_table().empty();
  o.use_user_ids = !job.model().user_id_table().empty();
  o.use_user_features = !job.model().user_feature_table().empty();
  o.time_lags = job.model().time_lag_feature();
  o.time_gap_sessions = job.data().session_mode() == DataConfig::TIME_GAP;
  return o;
}

namespace {

// The width of the table named by model.<field> (`name`); 0 when `name` is empty and optional.
absl::StatusOr<int64_t> TableDim(const JobConfig& job, const char* field, const std::string& name, bool optional) {
  if (optional && name.empty()) return 0;
  const int table = FindTable(job, name);
  if (table < 0) return absl::InvalidArgumentError(absl::StrCat("model.", field, ": no table named \"", name, "\""));
  return job.tables(table).dim();
}

// The dims a job's config alone gives (no profile fields), not yet validated.
absl::StatusOr<model::ModelDims> ConfigDims(const JobConfig& job) {
  model::ModelDims dims;
  T2D_ASSIGN_OR_RETURN(dims.id_dim, TableDim(job, "item_id_table", job.model().item_id_table(), false));
  T2D_ASSIGN_OR_RETURN(dims.tag_dim, TableDim(job, "item_tag_table", job.model().item_tag_table(), true));
  T2D_ASSIGN_OR_RETURN(dims.user_dim, TableDim(job, "user_id_table", job.model().user_id_table(), true));
  dims.session_len = job.data().session_len();
  return dims;
}

}  // namespace

absl::StatusOr<model::ModelDims> ModelDimsOf(const JobConfig& job) {
  T2D_ASSIGN_OR_RETURN(model::ModelDims dims, ConfigDims(job));
  T2D_RETURN_IF_ERROR(model::ValidateModelConfig(job.model(), dims));
  return dims;
}

absl::StatusOr<model::ModelDims> ModelDimsOf(const JobConfig& job, const data::DatasetManifest& dataset) {
  T2D_ASSIGN_OR_RETURN(model::ModelDims dims, ConfigDims(job));
  const std::string& table = job.model().user_feature_table();
  T2D_ASSIGN_OR_RETURN(dims.user_feature_dim, TableDim(job, "user_feature_table", table, true));
  if (!table.empty()) {
    dims.user_fields = dataset.user_feature_names_size();
    if (dims.user_fields == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model.user_feature_table: \"", table, "\" is set but the data set (", job.data().dataset_dir(),
          ") has no user profile fields; prepare it with data.user_path or data.generator.user_profile_fields, "
          "or leave model.user_feature_table empty"));
    }
  }
  T2D_RETURN_IF_ERROR(model::ValidateModelConfig(job.model(), dims));
  return dims;
}

namespace {
// Values, gradients and Adam's first and second moments, one float each.
constexpr int64_t kBytesPerDenseParameter = 4 * sizeof(float);
}  // namespace

absl::StatusOr<int64_t> DenseModelBytesOf(const JobConfig& job) {
  T2D_ASSIGN_OR_RETURN(model::ModelDims dims, ModelDimsOf(job));
  T2D_ASSIGN_OR_RETURN(int64_t params, model::Model::DenseParameterCount(job.model(), dims));
  return kBytesPerDenseParameter * params;
}

absl::Status CheckDenseModelFits(const JobConfig& job, int64_t memory_bytes) {
  T2D_ASSIGN_OR_RETURN(int64_t bytes, DenseModelBytesOf(job));
  const int workers = job.cluster().hostfile().empty() ? job.cluster().num_workers() : 1;
  // In double: one model's bytes times 65536 workers may not fit an int64.
  const double need = static_cast<double>(bytes) * workers;
  if (need <= static_cast<double>(memory_bytes)) return absl::OkStatus();
  const model::ModelDims dims = *ModelDimsOf(job);
  auto gb = [](double b) { return absl::StrFormat("%.3g GB", b / 1e9); };
  return absl::ResourceExhaustedError(absl::StrCat(
      "model: the dense model (D = ", dims.id_dim + dims.tag_dim, ", model.unet_levels = ", job.model().unet_levels(),
      job.model().unet_channels() > 0 ? absl::StrCat(", model.unet_channels = ", job.model().unet_channels()) : "",
      ") has ", absl::StrFormat("%.3g", static_cast<double>(bytes / kBytesPerDenseParameter)),
      " parameters; a worker needs at least ", gb(static_cast<double>(bytes)),
      " for them (values, gradients, Adam moments), ", workers, workers == 1 ? " worker" : " workers",
      " on this machine ", gb(need), ", but it has ", gb(static_cast<double>(memory_bytes)),
      " of memory; lower the tables' dim, model.unet_levels or model.unet_channels"));
}

data::ReaderOptions ReaderOptionsOf(const JobConfig& job, const std::string& split, int rank, int world_size) {
  data::ReaderOptions o;
  const bool train = split == "train";
  o.split = split;
  o.rank = rank;
  o.world_size = world_size;
  o.batch_size = train ? job.training().batch_size() : job.eval().batch_size();
  o.max_seq_len = job.data().max_seq_len();
  o.seed = job.data().seed();
  o.shuffle_buffer = train ? job.data().shuffle_buffer() : 0;
  o.epochs = train ? job.training().epochs() : 1;
  o.equal_epochs = train;
  return o;
}

absl::StatusOr<ps::PsOptions> PsOptionsOf(const JobConfig& job, const comm::RoleAssignment& roles) {
  const ClusterConfig& cluster = job.cluster();
  if (cluster.num_servers() != roles.num_servers || cluster.num_workers() != roles.num_workers) {
    return absl::InvalidArgumentError(absl::StrCat("cluster config asks for ", cluster.num_servers(), " servers + ",
                                                   cluster.num_workers(), " workers but the job has ", roles.num_servers,
                                                   " + ", roles.num_workers, " ranks (mpirun -np ",
                                                   cluster.num_servers() + cluster.num_workers(), ")"));
  }
  ps::PsOptions o;
  o.roles = roles;
  o.consistency = cluster.consistency() == ClusterConfig::ASYNC ? ps::Consistency::kAsync : ps::Consistency::kSync;
  o.staleness = cluster.staleness();
  o.timeout = absl::Seconds(cluster.timeout_s());
  o.idle_timeout = cluster.server_idle_timeout_s() > 0 ? absl::Seconds(cluster.server_idle_timeout_s())
                                                       : absl::InfiniteDuration();
  o.max_message_bytes = cluster.max_message_bytes();
  o.pull_piece_bytes = cluster.pull_piece_bytes();
  return o;
}

std::vector<TableConfig> TablesOf(const JobConfig& job) { return {job.tables().begin(), job.tables().end()}; }

}  // namespace t2d::config
