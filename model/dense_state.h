#pragma once
// The on-disk format of the dense model state: the model's dense parameters and, optionally,
// the dense optimizer's state. Checkpoints and export bundles store one such file per worker
// (all workers hold identical dense state). Format: docs/model.md, "Dense state files".
//
// A file is a list of named arrays (float32 or int64, with a shape) followed by a CRC-32 of
// everything before it. Parameters are stored under "param/<name>" with their shape, so
// loading into a model built from another config fails with an error naming the parameter.
// Writes are atomic (temporary file + rename). Thread-safety: free functions; the model and
// optimizer must not be used concurrently with Save/Load.
// Errors: NotFound (no file), DataLoss (bad magic, truncated, checksum mismatch),
// FailedPrecondition (a parameter missing, extra or of another shape; optimizer size mismatch).

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/dense_optimizer.h"
#include "model/model.h"

namespace t2d::model {

struct DenseArray {
  std::string name;
  std::vector<int64_t> shape;
  bool is_int = false;
  std::vector<float> f32;    // when !is_int
  std::vector<int64_t> i64;  // when is_int
};

// Serialises arrays to the file format (bytes) and back. `what` names the source in errors.
std::string EncodeDenseState(const std::vector<DenseArray>& arrays);
absl::StatusOr<std::vector<DenseArray>> DecodeDenseState(const std::string& bytes, const std::string& what);

// Writes the model's parameters and, when `optimizer` is not null, its state.
absl::Status SaveDenseState(const std::string& path, const Model& model, const DenseAdam* optimizer);
// Reads a file written by SaveDenseState into `model` (and `optimizer` when not null; the file
// must then hold optimizer state). Nothing is modified unless the whole file is valid.
absl::Status LoadDenseState(const std::string& path, Model* model, DenseAdam* optimizer);

}  // namespace t2d::model
