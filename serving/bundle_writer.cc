#include "serving/bundle_writer.h"

#include <google/protobuf/text_format.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/sealed_folder.h"
#include "common/status_macros.h"
#include "model/dense_state.h"
#include "serving/npy.h"

namespace t2d::serving {

std::vector<std::string> BundleFiles(const config::JobConfig& job) {
  std::vector<std::string> files = {"dense.t2dd",    "id_keys.npy",      "id_rows.npy",  "item_ids.npy", "item_tag_offsets.npy",
                                    "item_tags.npy", "item_vectors.npy", "job.textproto"};
  if (!job.model().item_tag_table().empty()) files.insert(files.end(), {"tag_keys.npy", "tag_rows.npy"});
  return files;
}

absl::Status WriteBundle(const std::string& dir, const BundleContents& c) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(dir, ": cannot create: ", ec.message()));
  const auto n = static_cast<int64_t>(c.item_ids.size());
  T2D_RETURN_IF_ERROR(WriteNpy(dir + "/item_ids.npy", c.item_ids, {n}));
  T2D_RETURN_IF_ERROR(WriteNpy(dir + "/item_vectors.npy", c.item_vectors, {n, c.vector_dim}));
  T2D_RETURN_IF_ERROR(WriteNpy(dir + "/id_keys.npy", c.id_keys, {static_cast<int64_t>(c.id_keys.size())}));
  T2D_RETURN_IF_ERROR(WriteNpy(dir + "/id_rows.npy", c.id_rows, {static_cast<int64_t>(c.id_keys.size()), c.id_dim}));
  T2D_RETURN_IF_ERROR(WriteNpy(dir + "/item_tag_offsets.npy", c.item_tag_offsets, {n + 1}));
  T2D_RETURN_IF_ERROR(WriteNpy(dir + "/item_tags.npy", c.item_tags, {static_cast<int64_t>(c.item_tags.size())}));
  if (c.tag_dim > 0) {
    T2D_RETURN_IF_ERROR(WriteNpy(dir + "/tag_keys.npy", c.tag_keys, {static_cast<int64_t>(c.tag_keys.size())}));
    T2D_RETURN_IF_ERROR(
        WriteNpy(dir + "/tag_rows.npy", c.tag_rows, {static_cast<int64_t>(c.tag_keys.size()), c.tag_dim}));
  }
  T2D_RETURN_IF_ERROR(model::SaveDenseState(dir + "/dense.t2dd", *c.model, nullptr));
  std::string text;
  google::protobuf::TextFormat::PrintToString(*c.job, &text);
  T2D_RETURN_IF_ERROR(WriteFileAtomic(dir + "/job.textproto", text));
  FolderManifest m;
  m.set_kind(FolderManifest::BUNDLE);
  m.set_step(c.step);
  m.set_num_workers(c.num_workers);
  return SealFolder(dir, m, BundleFiles(*c.job));
}

}  // namespace t2d::serving
