#pragma once
// NumPy .npy files (format version 1.0, little-endian, C order) for float32 and int64 arrays:
// the export bundle's vectors and ids, readable by numpy.load and FAISS tooling as they are.
// Thread-safety: free functions.
// Errors: the reader names the file and what is wrong (magic, dtype, shape, truncation).

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace t2d::serving {

absl::Status WriteNpy(const std::string& path, absl::Span<const float> data, const std::vector<int64_t>& shape);
absl::Status WriteNpy(const std::string& path, absl::Span<const int64_t> data, const std::vector<int64_t>& shape);

template <typename T>
struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<T> data;
};
absl::StatusOr<NpyArray<float>> ReadNpyFloat(const std::string& path);
absl::StatusOr<NpyArray<int64_t>> ReadNpyInt64(const std::string& path);

}  // namespace t2d::serving
