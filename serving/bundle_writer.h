#pragma once
// Writes a serving bundle (layout: docs/export.md): the item vectors with their raw ids, the
// embedding rows the user tower reads, the item tags, the dense state of the model, the job
// config it was trained with, and a MANIFEST (common/sealed_folder.h, kind BUNDLE) written last.
// The trainer computes the contents (Trainer::Export); serving/bundle.h reads them back.
//
// Thread-safety: free function. Errors: Internal naming the folder or file that could not be
// written; an existing folder at `dir` is replaced.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "configs/job_config.pb.h"
#include "model/model.h"

namespace t2d::serving {

struct BundleContents {
  const config::JobConfig* job = nullptr;   // not owned
  const model::Model* model = nullptr;      // not owned; its dense parameters are written
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
  std::vector<int64_t> item_tag_offsets;    // [N + 1]: item i's tags are tags[offsets[i], offsets[i+1])
  std::vector<int64_t> item_tags;
};

absl::Status WriteBundle(const std::string& dir, const BundleContents& contents);

// The files of a bundle of `job`, sorted: the tag files only when its model has a tag table
// (then contents.tag_dim > 0). What the writer seals and the reader verifies.
std::vector<std::string> BundleFiles(const config::JobConfig& job);

}  // namespace t2d::serving
