#pragma once
// Writes serving bundles and bundle deltas (layout: docs/serving.md), each a sealed folder
// (common/sealed_folder.h) whose MANIFEST is written last.
//
// A bundle (kind BUNDLE): the item vectors with their raw ids and their index
// (item_index.faiss, serving/item_index.h: exact up to serving.exact_max_items items, IVF or
// HNSW above), the embedding rows the user tower reads, the item tags, the dense state of the
// model, the job config it was trained with and the data set's manifest (the session and
// window options a request is cut with).
//
// A delta (kind BUNDLE_DELTA) holds what changed since a base bundle: the dense state (whole:
// it is small), the item vectors that differ (with their catalogue rows), the embedding rows
// that differ or are new; the index update is those item rows (replaced in the base's index),
// except for an HNSW index, which cannot replace rows: the delta then carries a whole new
// item_index.faiss. Its MANIFEST names the base by version (the SHA-256 of the base's MANIFEST). Deltas are cumulative: each is taken against a full bundle, so a server holding
// that bundle can apply any newer delta of it directly. The catalogue must be the base's.
//
// The trainer computes the contents (Trainer::Export); serving/bundle.h reads them back.
// Thread-safety: free functions. Errors: Internal naming the folder or file that could not be
// written; FailedPrecondition when a delta cannot be taken against the base (another
// catalogue or model); the base's own verification errors. An existing folder at `dir` is replaced.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "configs/job_config.pb.h"
#include "data/dataset.pb.h"
#include "model/model.h"

namespace t2d::serving {

struct BundleContents {
  const config::JobConfig* job = nullptr;          // not owned
  const data::DatasetManifest* dataset = nullptr;  // not owned: the data set the job trained on
  const model::Model* model = nullptr;             // not owned; its dense parameters are written
  int64_t step = 0;                         // training step of the exported model
  int num_workers = 1;
  absl::Span<const int64_t> item_ids;       // [N] catalogue order
  absl::Span<const float> item_vectors;     // [N, E] row-major
  int64_t vector_dim = 0;                   // E
  absl::Span<const int64_t> id_keys;        // [U] ids of the rows below
  absl::Span<const float> id_rows;          // [U, D_id]
  int64_t id_dim = 0;
  absl::Span<const int64_t> tag_keys;       // [V]; empty and tag_dim 0 without a tag table
  absl::Span<const float> tag_rows;         // [V, D_tag]
  int64_t tag_dim = 0;
  // [W] the user table's stored rows (model.user_id_table); empty and user_dim 0 without one. A
  // user without a row reads the table's initial value, as in training.
  absl::Span<const int64_t> user_keys;
  absl::Span<const float> user_rows;        // [W, D_user]
  int64_t user_dim = 0;
  // [P] the profile value table's stored rows (model.user_feature_table, keyed by
  // data::UserFeatureKey); empty and user_feature_dim 0 without one. A value without a row reads
  // the table's initial value for its key, as in training.
  absl::Span<const int64_t> user_feature_keys;
  absl::Span<const float> user_feature_rows;  // [P, D_f]
  int64_t user_feature_dim = 0;
  std::vector<int64_t> item_tag_offsets;    // [N + 1]: item i's tags are tags[offsets[i], offsets[i+1])
  std::vector<int64_t> item_tags;
};

absl::Status WriteBundle(const std::string& dir, const BundleContents& contents);

// What WriteBundleDelta wrote, as counts (for the export report).
struct DeltaStats {
  int64_t items_changed = 0, items_total = 0;
  int64_t id_rows_changed = 0, tag_rows_changed = 0, user_rows_changed = 0, user_feature_rows_changed = 0;
};
// Writes to `dir` a delta of `contents` against the full bundle at `base_dir` (verified first).
absl::StatusOr<DeltaStats> WriteBundleDelta(const std::string& dir, const BundleContents& contents,
                                            const std::string& base_dir);

// A delta read back (verified).
struct BundleDelta {
  std::string base_version;
  int64_t step = 0;
  config::JobConfig job;
  std::vector<int64_t> item_rows;    // catalogue rows whose vectors changed
  std::vector<float> item_vectors;   // [rows, E]
  int64_t vector_dim = 0;
  std::vector<int64_t> id_keys, tag_keys, user_keys, user_feature_keys;
  std::vector<float> id_rows, tag_rows, user_rows, user_feature_rows;
  bool has_index = false;            // dir/item_index.faiss: a whole new index (HNSW)
};
// Reads the delta at `dir` (the dense state stays in dir/dense.t2dd for the caller to load).
absl::StatusOr<BundleDelta> ReadBundleDelta(const std::string& dir);

// The files of a bundle (or a delta of a catalogue of `num_items`) of `job`: the tag (user, profile)
// files only when its model has a tag (user-id, profile value) table; a delta's index file only when it ships a whole index
// (DeltaShipsIndex). What the writer seals and the reader verifies.
std::vector<std::string> BundleFiles(const config::JobConfig& job);
std::vector<std::string> DeltaFiles(const config::JobConfig& job, int64_t num_items);
// Whether a catalogue of `num_items` gets an approximate index, and whether its deltas ship a
// whole index (HNSW) rather than replaced rows.
bool UsesApproximateIndex(const config::JobConfig& job, int64_t num_items);
bool DeltaShipsIndex(const config::JobConfig& job, int64_t num_items);

}  // namespace t2d::serving
