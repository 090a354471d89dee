#pragma once
// The one place where a job config becomes the options of the folders below it.
//
// The lower floors (embedding/, data/, model/, ps/) never see the job schema: each owns its
// options (embedding/table_config.proto, data/data_config.proto, model/model_config.proto and
// the plain structs data::ReaderOptions, model::ModelDims, ps::PsOptions), and the job config
// (configs/job_config.proto) composes the protos. What needs more than one section of the job
// (a table's width for the model, the training batch size for a reader, the cluster's process
// counts against the MPI world) is worked out here.
//
// Thread-safety: pure functions.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/roles.h"
#include "configs/job_config.pb.h"
#include "data/dataset.pb.h"
#include "data/sample_reader.h"
#include "model/model_options.h"
#include "model/step_builder.h"
#include "ps/ps_options.h"

namespace t2d::config {

// How samples become model input for this job (loss, negatives, tag table, time lags, session
// mode): one answer for training, evaluation and serving.
model::StepBuilder::Options StepBuilderOptionsOf(const JobConfig& job);

// The sizes of the model (model.item_id_table / item_tag_table / user_id_table widths,
// data.session_len), after model::ValidateModelConfig. Errors: InvalidArgument naming the field.
// Without the data set the number of user profile fields is unknown: these dims have none (no
// profile term even with model.user_feature_table set); use the overload below to build a model.
absl::StatusOr<model::ModelDims> ModelDimsOf(const JobConfig& job);
// The same, with the profile fields of `dataset` (the data set the model trains on or was trained
// on): with model.user_feature_table set, its width D_f and F = the manifest's
// user_feature_names; without it, no profile term whatever the data set has. Errors: as above,
// and InvalidArgument naming model.user_feature_table when it is set and the data set has no
// profile fields.
absl::StatusOr<model::ModelDims> ModelDimsOf(const JobConfig& job, const data::DatasetManifest& dataset);

// Memory one worker's dense model needs at least, in bytes: 16 a dense parameter (values,
// gradients and Adam's two moments), counted as model::Model::Create would lay them out (with
// ModelDimsOf(job): without the profile projection, F * D_f * E parameters, for want of F).
// Errors: as ModelDimsOf.
absl::StatusOr<int64_t> DenseModelBytesOf(const JobConfig& job);

// Whether the workers that share one machine fit their dense models into `memory_bytes`: all
// cluster.num_workers without a hostfile, at least one with. Errors: ResourceExhausted saying
// what the model needs, what the machine has and which fields to lower; as ModelDimsOf.
absl::Status CheckDenseModelFits(const JobConfig& job, int64_t memory_bytes);

// Options of a job's reader for `split`: n, shuffle buffer and seed from job.data(), batch size
// and epochs from job.training() ("train"; eval.batch_size for the evaluation splits). "train"
// shuffles, runs training.epochs epochs and equalises ranks; the evaluation splits are read
// once, in file order, each rank its own shards completely.
data::ReaderOptions ReaderOptionsOf(const JobConfig& job, const std::string& split, int rank, int world_size);

// Options of the servers and the worker-side client. Errors: InvalidArgument when the config's
// server/worker counts disagree with `roles` (the mpirun world).
absl::StatusOr<ps::PsOptions> PsOptionsOf(const JobConfig& job, const comm::RoleAssignment& roles);

// The job's tables, in config order (a table's index is its id everywhere).
std::vector<TableConfig> TablesOf(const JobConfig& job);

}  // namespace t2d::config
