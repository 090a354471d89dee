#include "serving/bundle_writer.h"

#include <google/protobuf/text_format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/checksum.h"
#include "common/file_util.h"
#include "common/sealed_folder.h"
#include "common/status_macros.h"
#include "configs/config_loader.h"
#include "model/dense_state.h"
#include "serving/item_index.h"
#include "serving/npy.h"

namespace t2d::serving {
namespace {

absl::Status FreshFolder(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(dir, ": cannot create: ", ec.message()));
  return absl::OkStatus();
}

absl::Status WriteText(const std::string& path, const google::protobuf::Message& message) {
  std::string text;
  google::protobuf::TextFormat::PrintToString(message, &text);
  return WriteFileAtomic(path, text);
}

int64_t Size(absl::Span<const int64_t> v) { return static_cast<int64_t>(v.size()); }

// The rows of `keys`/`rows` (width dim) that `base` lacks or holds with other values (bitwise).
void ChangedRows(absl::Span<const int64_t> keys, absl::Span<const float> rows, int64_t dim,
                 const std::vector<int64_t>& base_keys, const std::vector<float>& base_rows, std::vector<int64_t>* out_keys,
                 std::vector<float>* out_rows) {
  absl::flat_hash_map<int64_t, size_t> where;
  for (size_t i = 0; i < base_keys.size(); ++i) where[base_keys[i]] = i;
  const size_t w = static_cast<size_t>(dim);
  for (size_t i = 0; i < keys.size(); ++i) {
    const float* row = rows.data() + i * w;
    auto it = where.find(keys[i]);
    if (it != where.end() && std::memcmp(row, base_rows.data() + it->second * w, w * sizeof(float)) == 0) continue;
    out_keys->push_back(keys[i]);
    out_rows->insert(out_rows->end(), row, row + w);
  }
}

}  // namespace

bool UsesApproximateIndex(const config::JobConfig& job, int64_t num_items) {
  return num_items > job.serving().exact_max_items();
}

bool DeltaShipsIndex(const config::JobConfig& job, int64_t num_items) {
  return UsesApproximateIndex(job, num_items) && job.serving().index_kind() == config::ServingConfig::HNSW;
}

std::vector<std::string> BundleFiles(const config::JobConfig& job) {
  std::vector<std::string> files = {"dataset.textproto", "dense.t2dd",           "id_keys.npy",   "id_rows.npy",
                                    "item_ids.npy",      "item_index.faiss",     "item_tag_offsets.npy",
                                    "item_tags.npy",     "item_vectors.npy",     "job.textproto"};
  if (!job.model().item_tag_table().empty()) files.insert(files.end(), {"tag_keys.npy", "tag_rows.npy"});
  if (!job.model().user_id_table().empty()) files.insert(files.end(), {"user_keys.npy", "user_rows.npy"});
  if (!job.model().user_feature_table().empty()) {
    files.insert(files.end(), {"user_feature_keys.npy", "user_feature_rows.npy"});
  }
  return files;
}

std::vector<std::string> DeltaFiles(const config::JobConfig& job, int64_t num_items) {
  std::vector<std::string> files = {"dense.t2dd", "id_keys.npy", "id_rows.npy", "item_rows.npy", "item_vectors.npy",
                                    "job.textproto"};
  if (DeltaShipsIndex(job, num_items)) files.push_back("item_index.faiss");
  if (!job.model().item_tag_table().empty()) files.insert(files.end(), {"tag_keys.npy", "tag_rows.npy"});
  if (!job.model().user_id_table().empty()) files.insert(files.end(), {"user_keys.npy", "user_rows.npy"});
  if (!job.model().user_feature_table().empty()) {
    files.insert(files.end(), {"user_feature_keys.npy", "user_feature_rows.npy"});
  }
  return files;
}

absl::Status WriteBundle(const std::string& dir, const BundleContents& c) {
  T2D_RETURN_IF_ERROR(FreshFolder(dir));
  const int64_t n = Size(c.item_ids);
  T2D_RETURN_IF_ERROR(WriteNpy(dir + "/item_ids.npy", c.item_ids, {n}));
  T2D_RETURN_IF_ERROR(WriteNpy(dir + "/item_vectors.npy", c.item_vectors, {n, c.vector_dim}));
  T2D_RETURN_IF_ERROR(WriteNpy(dir + "/id_keys.npy", c.id_keys, {Size(c.id_keys)}));
  T2D_RETURN_IF_ERROR(WriteNpy(dir + "/id_rows.npy", c.id_rows, {Size(c.id_keys), c.id_dim}));
  T2D_RETURN_IF_ERROR(WriteNpy(dir + "/item_tag_offsets.npy", c.item_tag_offsets, {n + 1}));
  T2D_RETURN_IF_ERROR(WriteNpy(dir + "/item_tags.npy", c.item_tags, {static_cast<int64_t>(c.item_tags.size())}));
  if (c.tag_dim > 0) {
    T2D_RETURN_IF_ERROR(WriteNpy(dir + "/tag_keys.npy", c.tag_keys, {Size(c.tag_keys)}));
    T2D_RETURN_IF_ERROR(WriteNpy(dir + "/tag_rows.npy", c.tag_rows, {Size(c.tag_keys), c.tag_dim}));
  }
  if (c.user_dim > 0) {
    T2D_RETURN_IF_ERROR(WriteNpy(dir + "/user_keys.npy", c.user_keys, {Size(c.user_keys)}));
    T2D_RETURN_IF_ERROR(WriteNpy(dir + "/user_rows.npy", c.user_rows, {Size(c.user_keys), c.user_dim}));
  }
  if (c.user_feature_dim > 0) {
    T2D_RETURN_IF_ERROR(WriteNpy(dir + "/user_feature_keys.npy", c.user_feature_keys, {Size(c.user_feature_keys)}));
    T2D_RETURN_IF_ERROR(WriteNpy(dir + "/user_feature_rows.npy", c.user_feature_rows,
                                 {Size(c.user_feature_keys), c.user_feature_dim}));
  }
  T2D_RETURN_IF_ERROR(model::SaveDenseState(dir + "/dense.t2dd", *c.model, nullptr));
  T2D_RETURN_IF_ERROR(WriteText(dir + "/job.textproto", *c.job));
  T2D_RETURN_IF_ERROR(WriteText(dir + "/dataset.textproto", *c.dataset));
  T2D_ASSIGN_OR_RETURN(auto index, ItemIndex::Build(c.item_vectors, n, c.vector_dim, c.job->serving()));
  T2D_RETURN_IF_ERROR(index->Write(dir + "/item_index.faiss"));
  FolderManifest m;
  m.set_kind(FolderManifest::BUNDLE);
  m.set_num_items(n);
  m.set_step(c.step);
  m.set_num_workers(c.num_workers);
  return SealFolder(dir, m, BundleFiles(*c.job));
}

absl::StatusOr<DeltaStats> WriteBundleDelta(const std::string& dir, const BundleContents& c, const std::string& base_dir) {
  const ExpectedFiles base_files = [&](const FolderManifest&) -> absl::StatusOr<std::vector<std::string>> {
    T2D_ASSIGN_OR_RETURN(config::JobConfig job, config::LoadJobConfig(base_dir + "/job.textproto"));
    return BundleFiles(job);
  };
  T2D_RETURN_IF_ERROR(VerifyFolder(base_dir, FolderManifest::BUNDLE, base_files).status());
  T2D_ASSIGN_OR_RETURN(std::string base_manifest, ReadFileToString(base_dir + "/MANIFEST"));
  T2D_ASSIGN_OR_RETURN(config::JobConfig base_job, config::LoadJobConfig(base_dir + "/job.textproto"));
  if (base_job.model().SerializeAsString() != c.job->model().SerializeAsString()) {
    return absl::FailedPreconditionError(
        absl::StrCat("--base ", base_dir, ": its model config differs from this job's; export a full bundle"));
  }
  // The index update (rows or a whole index) follows the base's index, so its settings must hold.
  if (base_job.serving().SerializeAsString() != c.job->serving().SerializeAsString()) {
    return absl::FailedPreconditionError(
        absl::StrCat("--base ", base_dir, ": its serving (index) settings differ from this job's; export a full bundle"));
  }
  T2D_ASSIGN_OR_RETURN(NpyArray<int64_t> base_ids, ReadNpyInt64(base_dir + "/item_ids.npy"));
  if (!std::equal(base_ids.data.begin(), base_ids.data.end(), c.item_ids.begin(), c.item_ids.end())) {
    return absl::FailedPreconditionError(
        absl::StrCat("--base ", base_dir, ": its catalogue differs from this job's; export a full bundle"));
  }
  T2D_ASSIGN_OR_RETURN(NpyArray<float> base_vectors, ReadNpyFloat(base_dir + "/item_vectors.npy"));
  if (base_vectors.data.size() != c.item_vectors.size()) {
    return absl::FailedPreconditionError(absl::StrCat("--base ", base_dir, ": item vectors of another width"));
  }
  DeltaStats stats;
  stats.items_total = Size(c.item_ids);
  std::vector<int64_t> item_rows;
  std::vector<float> item_vectors;
  const size_t e = static_cast<size_t>(c.vector_dim);
  for (size_t i = 0; i < c.item_ids.size(); ++i) {
    const float* v = c.item_vectors.data() + i * e;
    if (std::memcmp(v, base_vectors.data.data() + i * e, e * sizeof(float)) == 0) continue;
    item_rows.push_back(static_cast<int64_t>(i));
    item_vectors.insert(item_vectors.end(), v, v + e);
  }
  std::vector<int64_t> id_keys, tag_keys, user_keys, user_feature_keys;
  std::vector<float> id_rows, tag_rows, user_rows, user_feature_rows;
  {
    T2D_ASSIGN_OR_RETURN(NpyArray<int64_t> keys, ReadNpyInt64(base_dir + "/id_keys.npy"));
    T2D_ASSIGN_OR_RETURN(NpyArray<float> rows, ReadNpyFloat(base_dir + "/id_rows.npy"));
    ChangedRows(c.id_keys, c.id_rows, c.id_dim, keys.data, rows.data, &id_keys, &id_rows);
  }
  if (c.tag_dim > 0) {
    T2D_ASSIGN_OR_RETURN(NpyArray<int64_t> keys, ReadNpyInt64(base_dir + "/tag_keys.npy"));
    T2D_ASSIGN_OR_RETURN(NpyArray<float> rows, ReadNpyFloat(base_dir + "/tag_rows.npy"));
    ChangedRows(c.tag_keys, c.tag_rows, c.tag_dim, keys.data, rows.data, &tag_keys, &tag_rows);
  }
  if (c.user_dim > 0) {
    T2D_ASSIGN_OR_RETURN(NpyArray<int64_t> keys, ReadNpyInt64(base_dir + "/user_keys.npy"));
    T2D_ASSIGN_OR_RETURN(NpyArray<float> rows, ReadNpyFloat(base_dir + "/user_rows.npy"));
    ChangedRows(c.user_keys, c.user_rows, c.user_dim, keys.data, rows.data, &user_keys, &user_rows);
  }
  if (c.user_feature_dim > 0) {
    T2D_ASSIGN_OR_RETURN(NpyArray<int64_t> keys, ReadNpyInt64(base_dir + "/user_feature_keys.npy"));
    T2D_ASSIGN_OR_RETURN(NpyArray<float> rows, ReadNpyFloat(base_dir + "/user_feature_rows.npy"));
    ChangedRows(c.user_feature_keys, c.user_feature_rows, c.user_feature_dim, keys.data, rows.data,
                &user_feature_keys, &user_feature_rows);
  }
  stats.items_changed = Size(item_rows);
  stats.id_rows_changed = Size(id_keys);
  stats.tag_rows_changed = Size(tag_keys);
  stats.user_rows_changed = Size(user_keys);
  stats.user_feature_rows_changed = Size(user_feature_keys);
  T2D_RETURN_IF_ERROR(FreshFolder(dir));
  T2D_RETURN_IF_ERROR(WriteNpy(dir + "/item_rows.npy", item_rows, {Size(item_rows)}));
  T2D_RETURN_IF_ERROR(WriteNpy(dir + "/item_vectors.npy", item_vectors, {Size(item_rows), c.vector_dim}));
  T2D_RETURN_IF_ERROR(WriteNpy(dir + "/id_keys.npy", id_keys, {Size(id_keys)}));
  T2D_RETURN_IF_ERROR(WriteNpy(dir + "/id_rows.npy", id_rows, {Size(id_keys), c.id_dim}));
  if (c.tag_dim > 0) {
    T2D_RETURN_IF_ERROR(WriteNpy(dir + "/tag_keys.npy", tag_keys, {Size(tag_keys)}));
    T2D_RETURN_IF_ERROR(WriteNpy(dir + "/tag_rows.npy", tag_rows, {Size(tag_keys), c.tag_dim}));
  }
  if (c.user_dim > 0) {
    T2D_RETURN_IF_ERROR(WriteNpy(dir + "/user_keys.npy", user_keys, {Size(user_keys)}));
    T2D_RETURN_IF_ERROR(WriteNpy(dir + "/user_rows.npy", user_rows, {Size(user_keys), c.user_dim}));
  }
  if (c.user_feature_dim > 0) {
    T2D_RETURN_IF_ERROR(WriteNpy(dir + "/user_feature_keys.npy", user_feature_keys, {Size(user_feature_keys)}));
    T2D_RETURN_IF_ERROR(WriteNpy(dir + "/user_feature_rows.npy", user_feature_rows,
                                 {Size(user_feature_keys), c.user_feature_dim}));
  }
  T2D_RETURN_IF_ERROR(model::SaveDenseState(dir + "/dense.t2dd", *c.model, nullptr));
  T2D_RETURN_IF_ERROR(WriteText(dir + "/job.textproto", *c.job));
  if (DeltaShipsIndex(*c.job, stats.items_total)) {
    T2D_ASSIGN_OR_RETURN(auto index, ItemIndex::Build(c.item_vectors, stats.items_total, c.vector_dim, c.job->serving()));
    T2D_RETURN_IF_ERROR(index->Write(dir + "/item_index.faiss"));
  }
  FolderManifest m;
  m.set_kind(FolderManifest::BUNDLE_DELTA);
  m.set_num_items(stats.items_total);
  m.set_step(c.step);
  m.set_num_workers(c.num_workers);
  m.set_base_version(Sha256Hex(base_manifest.data(), base_manifest.size()));
  T2D_RETURN_IF_ERROR(SealFolder(dir, m, DeltaFiles(*c.job, stats.items_total)));
  return stats;
}

absl::StatusOr<BundleDelta> ReadBundleDelta(const std::string& dir) {
  const ExpectedFiles files = [&](const FolderManifest& header) -> absl::StatusOr<std::vector<std::string>> {
    T2D_ASSIGN_OR_RETURN(config::JobConfig job, config::LoadJobConfig(dir + "/job.textproto"));
    return DeltaFiles(job, header.num_items());
  };
  T2D_ASSIGN_OR_RETURN(FolderManifest header, VerifyFolder(dir, FolderManifest::BUNDLE_DELTA, files));
  BundleDelta d;
  d.base_version = header.base_version();
  d.step = header.step();
  T2D_ASSIGN_OR_RETURN(d.job, config::LoadJobConfig(dir + "/job.textproto"));
  d.has_index = DeltaShipsIndex(d.job, header.num_items());
  T2D_ASSIGN_OR_RETURN(NpyArray<int64_t> rows, ReadNpyInt64(dir + "/item_rows.npy"));
  T2D_ASSIGN_OR_RETURN(NpyArray<float> vectors, ReadNpyFloat(dir + "/item_vectors.npy"));
  if (vectors.shape.size() != 2 || vectors.shape[0] != static_cast<int64_t>(rows.data.size())) {
    return absl::DataLossError(absl::StrCat(dir, "/item_vectors.npy: not one vector per row of item_rows.npy"));
  }
  d.item_rows = std::move(rows.data);
  d.item_vectors = std::move(vectors.data);
  d.vector_dim = vectors.shape[1];
  auto read_rows = [&](const std::string& name, std::vector<int64_t>* keys, std::vector<float>* values) -> absl::Status {
    T2D_ASSIGN_OR_RETURN(NpyArray<int64_t> k, ReadNpyInt64(dir + "/" + name + "_keys.npy"));
    T2D_ASSIGN_OR_RETURN(NpyArray<float> v, ReadNpyFloat(dir + "/" + name + "_rows.npy"));
    if (v.shape.size() != 2 || v.shape[0] != static_cast<int64_t>(k.data.size())) {
      return absl::DataLossError(absl::StrCat(dir, "/", name, "_rows.npy: not one row per key"));
    }
    *keys = std::move(k.data);
    *values = std::move(v.data);
    return absl::OkStatus();
  };
  T2D_RETURN_IF_ERROR(read_rows("id", &d.id_keys, &d.id_rows));
  if (!d.job.model().item_tag_table().empty()) T2D_RETURN_IF_ERROR(read_rows("tag", &d.tag_keys, &d.tag_rows));
  if (!d.job.model().user_id_table().empty()) T2D_RETURN_IF_ERROR(read_rows("user", &d.user_keys, &d.user_rows));
  if (!d.job.model().user_feature_table().empty()) {
    T2D_RETURN_IF_ERROR(read_rows("user_feature", &d.user_feature_keys, &d.user_feature_rows));
  }
  for (const auto* v : {&d.item_vectors, &d.id_rows, &d.tag_rows, &d.user_rows, &d.user_feature_rows}) {
    if (std::any_of(v->begin(), v->end(), [](float x) { return !std::isfinite(x); })) {
      return absl::DataLossError(absl::StrCat(dir, ": non-finite value in the delta's vectors or rows"));
    }
  }
  return d;
}

}  // namespace t2d::serving
