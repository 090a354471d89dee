#pragma once
// Loading and validating the job configuration (configs/job_config.proto).
//
// A config file is a JobConfig in protobuf text format. Loading:
//   1. parses the text; unknown fields, type errors and syntax errors are reported as
//      "FILE:LINE:COL: message";
//   2. applies command-line overrides ("training.batch_size=1024", "tables[item_id].dim=8",
//      "eval.k=2,10,20"); an override naming a missing field or with a bad value is an error
//      naming the override;
//   3. validates every set field against its (min)/(max)/(required) options from
//      common/field_options.proto and runs the cross-field checks (ValidateJobConfig).
// All errors found in step 3 are reported together, one per line, each naming the field path
// and where it was set (FILE:LINE or the --set override).
//
// Thread-safety: free functions without shared state.

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "configs/job_config.pb.h"

namespace t2d::config {

// Reads, overrides and validates the config file at `path`.
// Errors: NotFound (no file), InvalidArgument (anything wrong with the contents).
absl::StatusOr<JobConfig> LoadJobConfig(const std::string& path,
                                        const std::vector<std::string>& overrides = {});

// As LoadJobConfig, with the text given directly; `filename` is used in messages only.
absl::StatusOr<JobConfig> ParseJobConfig(const std::string& text, const std::string& filename,
                                         const std::vector<std::string>& overrides = {});

// Applies one "path=value" override to `config`. Path segments are field names separated by
// '.', a repeated message field takes an index ("tables[0]") or the value of its `name` field
// ("tables[item_id]"); a repeated scalar field takes a comma-separated list that replaces it.
absl::Status ApplyOverride(const std::string& assignment, JobConfig* config);

// Field-option and cross-field checks on an already parsed config; all problems in one error.
absl::Status ValidateJobConfig(const JobConfig& config);

// Index of the table called `name` in config.tables(), or -1.
int FindTable(const JobConfig& config, const std::string& name);

}  // namespace t2d::config
