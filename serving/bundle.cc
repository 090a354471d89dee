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
#include "absl/strings/str_join.h"
#include "common/checksum.h"
#include "common/file_util.h"
#include "common/sealed_folder.h"
#include "common/status_macros.h"
#include "configs/config_loader.h"
#include "configs/job_options.h"
#include "data/user_profiles.h"
#include "embedding/initializer.h"
#include "model/dense_state.h"
#include "model/model.h"
#include "model/model_options.h"
#include "model/step_builder.h"
#include "serving/bundle_writer.h"
#include "serving/item_index.h"
#include "serving/npy.h"

namespace t2d::serving {
namespace {

using Clock = std::chrono::steady_clock;
double Ms(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

// Rows keyed by id, with the table's initializer for ids that have none (ids the trainer never
// touched read as their initial values there too).
struct RowTable {
  std::vector<int64_t> keys;
  std::vector<float> rows;
  int64_t dim = 0;
  absl::flat_hash_map<int64_t, int64_t> where;
  std::unique_ptr<embedding::RowInitializer> init;

  void Index() {
    where.clear();
    for (size_t i = 0; i < keys.size(); ++i) where[keys[i]] = static_cast<int64_t>(i);
  }
  at::Tensor Gather(const std::vector<int64_t>& ids) const {
    at::Tensor t = at::empty({static_cast<int64_t>(ids.size()), dim}, at::kFloat);
    float* out = t.data_ptr<float>();
    for (size_t i = 0; i < ids.size(); ++i) {
      float* dst = out + i * static_cast<size_t>(dim);
      auto it = where.find(ids[i]);
      if (it == where.end()) {
        init->Fill(ids[i], absl::Span<float>(dst, static_cast<size_t>(dim)));
      } else {
        std::copy_n(rows.data() + static_cast<size_t>(it->second * dim), dim, dst);
      }
    }
    return t;
  }
  // Replaces or adds the rows of `new_keys`.
  void Update(const std::vector<int64_t>& new_keys, const std::vector<float>& new_rows) {
    for (size_t i = 0; i < new_keys.size(); ++i) {
      auto [it, fresh] = where.try_emplace(new_keys[i], static_cast<int64_t>(keys.size()));
      if (fresh) {
        keys.push_back(new_keys[i]);
        rows.resize(rows.size() + static_cast<size_t>(dim));
      }
      std::copy_n(new_rows.data() + i * static_cast<size_t>(dim), dim, rows.data() + it->second * dim);
    }
  }
};

absl::Status CheckFinite(const std::vector<float>& v, const std::string& file) {
  const auto bad = std::find_if(v.begin(), v.end(), [](float x) { return !std::isfinite(x); });
  if (bad == v.end()) return absl::OkStatus();
  return absl::DataLossError(absl::StrCat(file, ": non-finite value ", *bad, " at element ", bad - v.begin()));
}

absl::StatusOr<RowTable> ReadRows(const std::string& dir, const std::string& name, int64_t dim,
                                  const config::TableConfig& table) {
  RowTable t;
  t.dim = dim;
  T2D_ASSIGN_OR_RETURN(NpyArray<int64_t> keys, ReadNpyInt64(dir + "/" + name + "_keys.npy"));
  T2D_ASSIGN_OR_RETURN(NpyArray<float> rows, ReadNpyFloat(dir + "/" + name + "_rows.npy"));
  if (rows.data.size() != keys.data.size() * static_cast<size_t>(dim)) {
    return absl::DataLossError(absl::StrCat(dir, "/", name, "_rows.npy: ", rows.data.size(), " values for ",
                                            keys.data.size(), " keys of width ", dim));
  }
  T2D_RETURN_IF_ERROR(CheckFinite(rows.data, absl::StrCat(dir, "/", name, "_rows.npy")));
  t.keys = std::move(keys.data);
  t.rows = std::move(rows.data);
  t.init = std::make_unique<embedding::RowInitializer>(table.initializer());
  t.Index();
  return t;
}

// The profile keys of `query`'s named values (Query::user_features) in the order of `fields` (0 for
// a field not given); left empty when the query names none.
absl::Status ProfileKeys(const Query& query, const std::vector<std::string>& fields, std::vector<int64_t>* keys) {
  keys->clear();
  if (query.user_features.empty()) return absl::OkStatus();
  if (!query.request.user_features.empty()) {
    return absl::InvalidArgumentError("user_features: given both by name and as keys (user_feature_keys)");
  }
  keys->assign(fields.size(), 0);
  for (const UserFeatureValue& v : query.user_features) {
    const auto it = std::find(fields.begin(), fields.end(), v.first);
    if (it == fields.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "user_features.", v.first, ": unknown profile field (",
          fields.empty() ? std::string("this model's data set has no profile fields")
                         : absl::StrCat("this model's data set has: ", absl::StrJoin(fields, ", ")),
          ")"));
    }
    (*keys)[static_cast<size_t>(it - fields.begin())] = data::UserFeatureKey(v.first, v.second);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> FolderVersion(const std::string& dir) {
  T2D_ASSIGN_OR_RETURN(std::string manifest, ReadFileToString(dir + "/MANIFEST"));
  return Sha256Hex(manifest.data(), manifest.size());
}

}  // namespace

struct Bundle::Impl {
  // Shared between a bundle and the bundles derived from it by deltas (immutable).
  std::shared_ptr<const config::JobConfig> config;
  std::shared_ptr<const data::Catalogue> catalogue;
  std::shared_ptr<const data::LiveSampleBuilder> live;
  model::StepBuilder::Options builder_options;
  model::ModelDims dims;  // with the data set's profile fields
  std::vector<std::string> user_feature_names;  // the data set's profile fields, in order
  uint64_t eval_seed = 0;
  std::string version, delta_version;
  int64_t step = 0;
  // Replaced by deltas.
  std::unique_ptr<model::Model> model;
  std::vector<float> item_vectors;  // [N, E]
  int64_t dim = 0;                  // E
  RowTable id_rows, tag_rows, user_rows, user_feature_rows;
  bool has_tags = false, has_users = false, has_user_features = false;
  // The approximate index (catalogues above serving.exact_max_items); null: exact search.
  std::shared_ptr<const ItemIndex> index;

  at::Tensor Items() const {
    return at::from_blob(const_cast<float*>(item_vectors.data()), {catalogue->size(), dim}, at::kFloat);
  }
};

Bundle::Bundle(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Bundle::~Bundle() = default;
int64_t Bundle::num_items() const { return impl_->catalogue->size(); }
int64_t Bundle::step() const { return impl_->step; }
const std::string& Bundle::version() const { return impl_->version; }
const std::string& Bundle::delta_version() const { return impl_->delta_version; }
std::string Bundle::search_kind() const { return impl_->index ? impl_->index->name() : "exact"; }

absl::StatusOr<std::unique_ptr<Bundle>> Bundle::Load(const std::string& dir) {
  // Whether the tag files belong to the bundle depends on its job, which is verified (with every
  // listed file) by the time VerifyFolder asks for the expected set.
  const ExpectedFiles files = [&](const FolderManifest&) -> absl::StatusOr<std::vector<std::string>> {
    T2D_ASSIGN_OR_RETURN(config::JobConfig job, config::LoadJobConfig(dir + "/job.textproto"));
    return BundleFiles(job);
  };
  T2D_ASSIGN_OR_RETURN(FolderManifest header, VerifyFolder(dir, FolderManifest::BUNDLE, files));
  auto impl = std::make_unique<Impl>();
  Impl& b = *impl;
  T2D_ASSIGN_OR_RETURN(b.version, FolderVersion(dir));
  b.step = header.step();
  T2D_ASSIGN_OR_RETURN(config::JobConfig job, config::LoadJobConfig(dir + "/job.textproto"));
  b.config = std::make_shared<const config::JobConfig>(job);
  b.eval_seed = job.eval().seed();
  T2D_ASSIGN_OR_RETURN(std::string dataset_text, ReadFileToString(dir + "/dataset.textproto"));
  data::DatasetManifest dataset;
  if (!google::protobuf::TextFormat::ParseFromString(dataset_text, &dataset)) {
    return absl::DataLossError(absl::StrCat(dir, "/dataset.textproto: not a data set manifest"));
  }
  T2D_ASSIGN_OR_RETURN(b.dims, config::ModelDimsOf(job, dataset));
  const model::ModelDims& dims = b.dims;
  b.user_feature_names.assign(dataset.user_feature_names().begin(), dataset.user_feature_names().end());
  T2D_ASSIGN_OR_RETURN(b.model, model::Model::Create(job.model(), dims));
  T2D_RETURN_IF_ERROR(model::LoadDenseState(dir + "/dense.t2dd", b.model.get(), nullptr));
  T2D_ASSIGN_OR_RETURN(NpyArray<int64_t> item_ids, ReadNpyInt64(dir + "/item_ids.npy"));
  T2D_ASSIGN_OR_RETURN(NpyArray<float> vectors, ReadNpyFloat(dir + "/item_vectors.npy"));
  T2D_ASSIGN_OR_RETURN(NpyArray<int64_t> offsets, ReadNpyInt64(dir + "/item_tag_offsets.npy"));
  T2D_ASSIGN_OR_RETURN(NpyArray<int64_t> tags, ReadNpyInt64(dir + "/item_tags.npy"));
  const int64_t n = static_cast<int64_t>(item_ids.data.size());
  b.dim = b.model->output_dim();
  if (vectors.shape.size() != 2 || vectors.shape[0] != n || vectors.shape[1] != b.dim) {
    return absl::DataLossError(absl::StrCat(dir, "/item_vectors.npy: shape does not match ", n, " items of width ", b.dim));
  }
  if (offsets.data.size() != static_cast<size_t>(n + 1) || offsets.data[0] != 0 ||
      !std::is_sorted(offsets.data.begin(), offsets.data.end()) ||
      offsets.data.back() != static_cast<int64_t>(tags.data.size())) {
    return absl::DataLossError(absl::StrCat(dir, "/item_tag_offsets.npy: not ", n + 1, " ascending offsets into item_tags.npy"));
  }
  // A non-finite vector would rank as NaN against every request: refuse the bundle instead.
  T2D_RETURN_IF_ERROR(CheckFinite(vectors.data, dir + "/item_vectors.npy"));
  std::vector<std::vector<int64_t>> item_tags(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    item_tags[static_cast<size_t>(i)].assign(tags.data.begin() + offsets.data[static_cast<size_t>(i)],
                                             tags.data.begin() + offsets.data[static_cast<size_t>(i) + 1]);
  }
  b.catalogue = std::shared_ptr<const data::Catalogue>(data::Catalogue::FromItems(item_ids.data, std::move(item_tags), {}));
  if (b.catalogue->size() != n) return absl::DataLossError(absl::StrCat(dir, "/item_ids.npy: duplicate item ids"));
  const data::ReaderOptions reader = config::ReaderOptionsOf(job, "test", 0, 1);
  b.live = std::make_shared<const data::LiveSampleBuilder>(dataset, b.catalogue.get(), reader.max_seq_len, reader.max_tags);
  b.builder_options = config::StepBuilderOptionsOf(job);
  b.item_vectors = std::move(vectors.data);
  // Up to serving.exact_max_items items, searches score the whole catalogue with one matmul, as
  // evaluation does (the bundle's flat index holds the same vectors, for other readers).
  if (UsesApproximateIndex(job, n)) {
    T2D_ASSIGN_OR_RETURN(b.index, ItemIndex::Read(dir + "/item_index.faiss", n, b.dim, job.serving()));
  }
  const int id_table = config::FindTable(job, job.model().item_id_table());
  T2D_ASSIGN_OR_RETURN(b.id_rows, ReadRows(dir, "id", dims.id_dim, job.tables(id_table)));
  b.has_tags = !job.model().item_tag_table().empty();
  if (b.has_tags) {
    const int tag_table = config::FindTable(job, job.model().item_tag_table());
    T2D_ASSIGN_OR_RETURN(b.tag_rows, ReadRows(dir, "tag", dims.tag_dim, job.tables(tag_table)));
  }
  b.has_users = !job.model().user_id_table().empty();
  if (b.has_users) {
    const int user_table = config::FindTable(job, job.model().user_id_table());
    T2D_ASSIGN_OR_RETURN(b.user_rows, ReadRows(dir, "user", dims.user_dim, job.tables(user_table)));
  }
  b.has_user_features = !job.model().user_feature_table().empty();
  if (b.has_user_features) {
    const int table = config::FindTable(job, job.model().user_feature_table());
    T2D_ASSIGN_OR_RETURN(b.user_feature_rows, ReadRows(dir, "user_feature", dims.user_feature_dim, job.tables(table)));
  }
  return std::unique_ptr<Bundle>(new Bundle(std::move(impl)));
}

absl::StatusOr<Retrieved> Bundle::TopK(const Query& query) const {
  auto r = Search(absl::MakeConstSpan(&query, 1));
  return std::move(r[0]);
}

std::vector<absl::StatusOr<Retrieved>> Bundle::Search(absl::Span<const Query> queries) const {
  const Impl& b = *impl_;
  const auto t0 = Clock::now();
  std::vector<absl::StatusOr<Retrieved>> out(queries.size(), absl::UnknownError("not answered"));
  // The valid queries, in order, become samples 0..m-1.
  std::vector<size_t> sample_of;
  std::vector<int64_t> profile_keys;  // one query's profile keys, read by Fill
  data::SampleBatch batch;
  b.live->Reset(static_cast<int>(queries.size()), &batch);
  for (size_t q = 0; q < queries.size(); ++q) {
    const Query& query = queries[q];
    if (query.k < 1) {
      out[q] = absl::InvalidArgumentError(absl::StrCat("k: must be at least 1, got ", query.k));
      continue;
    }
    if (static_cast<int64_t>(query.request.items.size()) > kMaxQueryItems) {
      out[q] = absl::InvalidArgumentError(absl::StrCat("items: ", query.request.items.size(),
                                                       " behaviours, more than the limit of ", kMaxQueryItems));
      continue;
    }
    const int row = static_cast<int>(sample_of.size());
    data::LiveRequest request = query.request;
    absl::Status filled = ProfileKeys(query, b.user_feature_names, &profile_keys);
    if (filled.ok() && !query.user_features.empty()) request.user_features = profile_keys;
    if (filled.ok()) filled = b.live->Fill(request, row, &batch);
    if (filled.ok() && b.builder_options.time_lags) {
      // The model checks a whole batch's lags; a query whose time precedes one of its behaviours
      // (possible in a data set in file order) is refused here, alone.
      const float* lag = batch.time_lag.data() + static_cast<size_t>(row) * static_cast<size_t>(batch.max_seq_len);
      if (std::any_of(lag, lag + batch.history_len[static_cast<size_t>(row)], [](float x) { return !(x >= 0); })) {
        filled = absl::InvalidArgumentError("time: before one of the behaviours' times (time lags must not be negative)");
      }
    }
    if (!filled.ok()) {
      out[q] = filled;
      continue;
    }
    sample_of.push_back(q);
  }
  const int m = static_cast<int>(sample_of.size());
  if (m == 0) return out;
  if (m < static_cast<int>(queries.size())) ResizeSampleBatch(m, batch.max_seq_len, batch.max_tags, batch.user_fields, &batch);
  auto fail_all = [&](const absl::Status& s) {
    for (size_t q : sample_of) out[q] = s;
    return out;
  };
  model::StepBuilder builder(b.catalogue.get(), b.builder_options);
  model::StepInput in;
  if (absl::Status s = builder.BuildUsers(batch, &in); !s.ok()) return fail_all(s);
  model::Rows rows;
  rows.id_rows = b.id_rows.Gather(in.id_keys);
  if (b.has_tags) rows.tag_rows = b.tag_rows.Gather(in.tag_keys);
  if (b.has_users) rows.user_rows = b.user_rows.Gather(in.user_keys);
  if (b.has_user_features) rows.user_feature_rows = b.user_feature_rows.Gather(in.user_feature_keys);
  model::InferenceOptions io;
  for (int i = 0; i < m; ++i) {
    const Query& query = queries[sample_of[static_cast<size_t>(i)]];
    io.sample_seeds.push_back(query.seed.has_value() ? *query.seed : model::EvalSampleSeed(b.eval_seed, query.request.user));
  }
  absl::StatusOr<at::Tensor> users = b.model->UserVectors(in.batch, rows, io);
  if (!users.ok()) return fail_all(users.status());
  const auto t1 = Clock::now();
  int64_t k_max = 0;
  for (size_t q : sample_of) k_max = std::max<int64_t>(k_max, queries[q].k);
  k_max = std::min(k_max, b.catalogue->size());
  std::vector<Retrieved> found(static_cast<size_t>(m));
  if (b.index) {
    const at::Tensor u = users->contiguous();
    absl::StatusOr<std::vector<Hits>> hits =
        b.index->Search(absl::MakeConstSpan(u.data_ptr<float>(), static_cast<size_t>(u.numel())), m, static_cast<int>(k_max));
    if (!hits.ok()) return fail_all(hits.status());
    for (int i = 0; i < m; ++i) {
      const size_t k = std::min<size_t>(static_cast<size_t>(queries[sample_of[static_cast<size_t>(i)]].k),
                                        (*hits)[static_cast<size_t>(i)].rows.size());
      Retrieved& r = found[static_cast<size_t>(i)];
      for (size_t j = 0; j < k; ++j) {
        r.items.push_back(b.catalogue->ids()[static_cast<size_t>((*hits)[static_cast<size_t>(i)].rows[j])]);
        r.scores.push_back((*hits)[static_cast<size_t>(i)].scores[j]);
      }
    }
  } else {
    c10::InferenceMode guard;
    // Scores as evaluation computes them: one matmul of the user vectors with every item vector.
    at::Tensor scores = at::matmul(*users, b.Items().t());
    auto [top, index] = at::topk(scores, k_max, 1);
    top = top.contiguous();
    index = index.contiguous();
    const float* ts = top.data_ptr<float>();
    const int64_t* ix = index.data_ptr<int64_t>();
    for (int i = 0; i < m; ++i) {
      const int64_t k = std::min<int64_t>(queries[sample_of[static_cast<size_t>(i)]].k, k_max);
      Retrieved& r = found[static_cast<size_t>(i)];
      for (int64_t j = 0; j < k; ++j) {
        r.items.push_back(b.catalogue->ids()[static_cast<size_t>(ix[i * k_max + j])]);
        r.scores.push_back(ts[i * k_max + j]);
      }
    }
  }
  const auto t2 = Clock::now();
  for (int i = 0; i < m; ++i) {
    Retrieved& r = found[static_cast<size_t>(i)];
    r.user_tower_ms = Ms(t0, t1);
    r.search_ms = Ms(t1, t2);
    out[sample_of[static_cast<size_t>(i)]] = std::move(r);
  }
  return out;
}

absl::StatusOr<std::unique_ptr<Bundle>> Bundle::WithDelta(const std::string& dir) const {
  const Impl& base = *impl_;
  T2D_ASSIGN_OR_RETURN(BundleDelta delta, ReadBundleDelta(dir));
  if (delta.base_version != base.version) {
    return absl::FailedPreconditionError(absl::StrCat(dir, ": a delta of bundle ", delta.base_version.substr(0, 12),
                                                      "..., not of the bundle being served (", base.version.substr(0, 12),
                                                      "...)"));
  }
  const config::JobConfig& job = *base.config;
  if (delta.job.model().SerializeAsString() != job.model().SerializeAsString()) {
    return absl::FailedPreconditionError(absl::StrCat(dir, "/job.textproto: the delta's model config differs from the bundle's"));
  }
  auto impl = std::make_unique<Impl>();
  Impl& b = *impl;
  b.config = base.config;
  b.catalogue = base.catalogue;
  b.live = base.live;
  b.builder_options = base.builder_options;
  b.dims = base.dims;
  b.user_feature_names = base.user_feature_names;
  b.eval_seed = base.eval_seed;
  b.version = base.version;
  T2D_ASSIGN_OR_RETURN(b.delta_version, FolderVersion(dir));
  b.step = delta.step;
  T2D_ASSIGN_OR_RETURN(b.model, model::Model::Create(job.model(), b.dims));
  T2D_RETURN_IF_ERROR(model::LoadDenseState(dir + "/dense.t2dd", b.model.get(), nullptr));
  b.dim = base.dim;
  b.item_vectors = base.item_vectors;
  const int64_t n = base.catalogue->size();
  if (delta.vector_dim != b.dim) {
    return absl::DataLossError(absl::StrCat(dir, "/item_vectors.npy: width ", delta.vector_dim, ", the bundle's is ", b.dim));
  }
  for (size_t i = 0; i < delta.item_rows.size(); ++i) {
    const int64_t row = delta.item_rows[i];
    if (row < 0 || row >= n) {
      return absl::DataLossError(absl::StrCat(dir, "/item_rows.npy: row ", row, " outside the catalogue of ", n));
    }
    std::copy_n(delta.item_vectors.data() + i * static_cast<size_t>(b.dim), b.dim,
                b.item_vectors.data() + row * b.dim);
  }
  auto copy_rows = [](const RowTable& from, RowTable* to) {
    to->keys = from.keys;
    to->rows = from.rows;
    to->dim = from.dim;
    to->where = from.where;
    to->init = from.init ? std::make_unique<embedding::RowInitializer>(*from.init) : nullptr;
  };
  if (delta.id_rows.size() != delta.id_keys.size() * static_cast<size_t>(base.id_rows.dim) ||
      delta.tag_rows.size() != delta.tag_keys.size() * static_cast<size_t>(base.tag_rows.dim) ||
      delta.user_rows.size() != delta.user_keys.size() * static_cast<size_t>(base.user_rows.dim) ||
      delta.user_feature_rows.size() !=
          delta.user_feature_keys.size() * static_cast<size_t>(base.user_feature_rows.dim)) {
    return absl::DataLossError(absl::StrCat(dir, ": embedding rows of another width than the bundle's"));
  }
  copy_rows(base.id_rows, &b.id_rows);
  b.id_rows.Update(delta.id_keys, delta.id_rows);
  b.has_tags = base.has_tags;
  if (b.has_tags) {
    copy_rows(base.tag_rows, &b.tag_rows);
    b.tag_rows.Update(delta.tag_keys, delta.tag_rows);
  }
  b.has_users = base.has_users;
  if (b.has_users) {
    copy_rows(base.user_rows, &b.user_rows);
    b.user_rows.Update(delta.user_keys, delta.user_rows);
  }
  b.has_user_features = base.has_user_features;
  if (b.has_user_features) {
    copy_rows(base.user_feature_rows, &b.user_feature_rows);
    b.user_feature_rows.Update(delta.user_feature_keys, delta.user_feature_rows);
  }
  if (delta.has_index) {
    T2D_ASSIGN_OR_RETURN(b.index, ItemIndex::Read(dir + "/item_index.faiss", n, b.dim, job.serving()));
  } else if (base.index) {
    T2D_ASSIGN_OR_RETURN(b.index, base.index->WithRowsReplaced(delta.item_rows, delta.item_vectors));
  }
  return std::unique_ptr<Bundle>(new Bundle(std::move(impl)));
}

}  // namespace t2d::serving
