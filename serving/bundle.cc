#include "serving/bundle.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <google/protobuf/text_format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "configs/config_loader.h"
#include "configs/job_options.h"
#include "embedding/initializer.h"
#include "model/dense_state.h"
#include "model/model.h"
#include "common/sealed_folder.h"
#include "serving/bundle_writer.h"
#include "serving/npy.h"

namespace t2d::serving {

struct Bundle::Impl {
  config::JobConfig config;
  std::unique_ptr<model::Model> model;
  NpyArray<int64_t> item_ids, id_keys, tag_keys, tag_offsets, tags;
  NpyArray<float> item_vectors, id_rows, tag_rows;
  at::Tensor items;  // [N, E] view of item_vectors
  absl::flat_hash_map<int64_t, int64_t> id_row, tag_row, item_index;
  std::unique_ptr<embedding::RowInitializer> id_init, tag_init;
  int64_t id_dim = 0, tag_dim = 0;
};

Bundle::Bundle(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Bundle::~Bundle() = default;
uint64_t Bundle::eval_seed() const { return impl_->config.eval().seed(); }
int64_t Bundle::num_items() const { return static_cast<int64_t>(impl_->item_ids.data.size()); }

absl::StatusOr<std::unique_ptr<Bundle>> Bundle::Load(const std::string& dir) {
  // Whether the tag files belong to the bundle depends on its job, which is verified (with every
  // listed file) by the time VerifyFolder asks for the expected set.
  const ExpectedFiles files = [&](const FolderManifest&) -> absl::StatusOr<std::vector<std::string>> {
    T2D_ASSIGN_OR_RETURN(config::JobConfig job, config::LoadJobConfig(dir + "/job.textproto"));
    return BundleFiles(job);
  };
  T2D_RETURN_IF_ERROR(VerifyFolder(dir, FolderManifest::BUNDLE, files).status());
  auto impl = std::make_unique<Impl>();
  Impl& b = *impl;
  T2D_ASSIGN_OR_RETURN(b.config, config::LoadJobConfig(dir + "/job.textproto"));
  T2D_ASSIGN_OR_RETURN(model::ModelDims dims, config::ModelDimsOf(b.config));
  T2D_ASSIGN_OR_RETURN(b.model, model::Model::Create(b.config.model(), dims));
  T2D_RETURN_IF_ERROR(model::LoadDenseState(dir + "/dense.t2dd", b.model.get(), nullptr));
  T2D_ASSIGN_OR_RETURN(b.item_ids, ReadNpyInt64(dir + "/item_ids.npy"));
  T2D_ASSIGN_OR_RETURN(b.item_vectors, ReadNpyFloat(dir + "/item_vectors.npy"));
  T2D_ASSIGN_OR_RETURN(b.id_keys, ReadNpyInt64(dir + "/id_keys.npy"));
  T2D_ASSIGN_OR_RETURN(b.id_rows, ReadNpyFloat(dir + "/id_rows.npy"));
  T2D_ASSIGN_OR_RETURN(b.tag_offsets, ReadNpyInt64(dir + "/item_tag_offsets.npy"));
  T2D_ASSIGN_OR_RETURN(b.tags, ReadNpyInt64(dir + "/item_tags.npy"));
  const int id_table = config::FindTable(b.config, b.config.model().item_id_table());
  const int tag_table = b.config.model().item_tag_table().empty() ? -1 : config::FindTable(b.config, b.config.model().item_tag_table());
  b.id_dim = dims.id_dim;
  b.tag_dim = dims.tag_dim;
  b.id_init = std::make_unique<embedding::RowInitializer>(b.config.tables(id_table).initializer());
  if (tag_table >= 0) {
    T2D_ASSIGN_OR_RETURN(b.tag_keys, ReadNpyInt64(dir + "/tag_keys.npy"));
    T2D_ASSIGN_OR_RETURN(b.tag_rows, ReadNpyFloat(dir + "/tag_rows.npy"));
    b.tag_init = std::make_unique<embedding::RowInitializer>(b.config.tables(tag_table).initializer());
  }
  const int64_t n = static_cast<int64_t>(b.item_ids.data.size());
  const bool consistent = b.item_vectors.shape.size() == 2 && b.item_vectors.shape[0] == n &&
                          b.item_vectors.shape[1] == b.model->output_dim() &&
                          b.id_rows.data.size() == b.id_keys.data.size() * static_cast<size_t>(b.id_dim) &&
                          b.tag_offsets.data.size() == static_cast<size_t>(n + 1) &&
                          b.tag_rows.data.size() == b.tag_keys.data.size() * static_cast<size_t>(b.tag_dim);
  if (!consistent) return absl::DataLossError(absl::StrCat(dir, ": bundle arrays have inconsistent shapes"));
  // A non-finite vector would rank as NaN against every request: refuse the bundle instead.
  for (const auto& [array, name] :
       {std::pair{&b.item_vectors, "item_vectors.npy"}, {&b.id_rows, "id_rows.npy"}, {&b.tag_rows, "tag_rows.npy"}}) {
    const auto& v = array->data;
    const auto bad = std::find_if(v.begin(), v.end(), [](float x) { return !std::isfinite(x); });
    if (bad != v.end()) {
      return absl::DataLossError(absl::StrCat(dir, "/", name, ": non-finite value ", *bad, " at element ", bad - v.begin()));
    }
  }
  for (size_t i = 0; i < b.id_keys.data.size(); ++i) b.id_row[b.id_keys.data[i]] = static_cast<int64_t>(i);
  for (size_t i = 0; i < b.tag_keys.data.size(); ++i) b.tag_row[b.tag_keys.data[i]] = static_cast<int64_t>(i);
  for (int64_t i = 0; i < n; ++i) b.item_index[b.item_ids.data[static_cast<size_t>(i)]] = i;
  b.items = at::from_blob(b.item_vectors.data.data(), {n, b.model->output_dim()}, at::kFloat);
  return std::unique_ptr<Bundle>(new Bundle(std::move(impl)));
}

absl::StatusOr<Retrieved> Bundle::TopK(absl::Span<const int64_t> history, int k, uint64_t seed) const {
  // Checked here: libtorch would throw (k < 0) or answer nothing (k = 0).
  if (k < 1) return absl::InvalidArgumentError(absl::StrCat("retrieve: k must be at least 1, got ", k));
  if (history.empty()) return absl::InvalidArgumentError("retrieve: empty history (give at least one item id)");
  const Impl& b = *impl_;
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  const int64_t n = b.config.data().max_seq_len();
  const size_t len = std::min<size_t>(history.size(), static_cast<size_t>(n));
  const auto recent = history.subspan(history.size() - len);
  // Rows of this request: the history items and their tags, in first-seen order.
  std::vector<int64_t> ids, tag_ids;
  absl::flat_hash_map<int64_t, int64_t> id_pos, tag_pos;
  model::Batch batch;
  batch.batch_size = 1;
  batch.seq_len = n;
  batch.lengths = {static_cast<int64_t>(len)};
  for (int64_t j = 0; j < n - static_cast<int64_t>(len); ++j) batch.history.AddPadding();
  for (int64_t id : recent) {
    auto [it, fresh] = id_pos.try_emplace(id, static_cast<int64_t>(ids.size()));
    if (fresh) ids.push_back(id);
    std::vector<int64_t> slot_tags;
    auto item = b.item_index.find(id);
    if (b.tag_init && item != b.item_index.end()) {
      for (int64_t t = b.tag_offsets.data[static_cast<size_t>(item->second)];
           t < b.tag_offsets.data[static_cast<size_t>(item->second) + 1]; ++t) {
        const int64_t tag = b.tags.data[static_cast<size_t>(t)];
        auto [tt, tfresh] = tag_pos.try_emplace(tag, static_cast<int64_t>(tag_ids.size()));
        if (tfresh) tag_ids.push_back(tag);
        slot_tags.push_back(tt->second);
      }
    }
    batch.history.Add(it->second, slot_tags);
  }
  auto fill = [](const std::vector<int64_t>& keys, const absl::flat_hash_map<int64_t, int64_t>& where,
                 const std::vector<float>& rows, int64_t dim, const embedding::RowInitializer& init) {
    at::Tensor t = at::empty({static_cast<int64_t>(keys.size()), dim}, at::kFloat);
    float* out = t.data_ptr<float>();
    for (size_t i = 0; i < keys.size(); ++i) {
      auto it = where.find(keys[i]);
      float* dst = out + i * static_cast<size_t>(dim);
      if (it == where.end()) {
        init.Fill(keys[i], absl::Span<float>(dst, static_cast<size_t>(dim)));
      } else {
        std::copy_n(rows.data() + static_cast<size_t>(it->second * dim), dim, dst);
      }
    }
    return t;
  };
  model::Rows rows;
  rows.id_rows = fill(ids, b.id_row, b.id_rows.data, b.id_dim, *b.id_init);
  if (b.tag_init) rows.tag_rows = fill(tag_ids, b.tag_row, b.tag_rows.data, b.tag_dim, *b.tag_init);
  model::InferenceOptions io;
  io.sample_seeds = {seed};
  T2D_ASSIGN_OR_RETURN(at::Tensor user, b.model->UserVectors(batch, rows, io));
  const auto t1 = Clock::now();
  c10::InferenceMode guard;
  at::Tensor scores = at::matmul(b.items, user.reshape({-1}));
  const int64_t kk = std::min<int64_t>(k, scores.size(0));
  auto [top, index] = at::topk(scores, kk);
  Retrieved r;
  for (int64_t i = 0; i < kk; ++i) {
    r.items.push_back(b.item_ids.data[static_cast<size_t>(index[i].item<int64_t>())]);
    r.scores.push_back(top[i].item<float>());
  }
  const auto t2 = Clock::now();
  r.user_tower_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
  r.search_ms = std::chrono::duration<double, std::milli>(t2 - t1).count();
  return r;
}

}  // namespace t2d::serving
