// model/model.h's Model: input validation, the embedding gather, and the composition of the
// modules: the diffusion module (diffusion.h), the user tower of the configured kind
// (user_tower.h) and the item tower (layers.h), whose dense parameters live in one
// ParameterRegistry (parameters.h). The registration order here — U-Net, user tower, item tower,
// then the user feature's projection when there is one, then the profile fields' projection when
// there are some — fixes the parameters' order in the flat buffer and their initial values (a
// model without a user feature or profile fields is unchanged by them).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <future>
#include <optional>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/diffusion.h"
#include "model/fused_ops.h"
#include "model/layers.h"
#include "model/model.h"
#include "model/parameters.h"
#include "model/schedule.h"
#include "model/user_tower.h"

namespace t2d::model {
namespace {

using at::Tensor;
using config::ModelConfig;

// Gathers item slots of several lists into one index set, so that the rows of a whole batch
// are read with one gather.
struct SlotGather {
  std::vector<int64_t> id;  // -1: padding
  std::vector<int64_t> tag_rows;
  std::vector<int64_t> tag_offsets{0};

  // `s` validated (ValidateSlots: its tag offsets run from 0 to tag_rows.size(), not
  // decreasing), so its slots' tags are its tag_rows in order: appended whole.
  void Append(const ItemSlots& s, bool with_tags) {
    id.insert(id.end(), s.id_rows.begin(), s.id_rows.end());
    if (!with_tags) return;
    const int64_t base = static_cast<int64_t>(tag_rows.size());
    tag_rows.insert(tag_rows.end(), s.tag_rows.begin(), s.tag_rows.end());
    tag_offsets.reserve(tag_offsets.size() + static_cast<size_t>(s.size()));
    for (int64_t i = 1; i <= s.size(); ++i) {
      tag_offsets.push_back(s.tag_offsets.empty() ? base : base + s.tag_offsets[static_cast<size_t>(i)]);  // none: no tags
    }
  }
};

}  // namespace

struct Model::Impl {
  Impl(const ModelConfig& c, const ModelDims& dm, const NoiseSchedule& schedule)
      : config(c), dims(dm), d(dm.id_dim + dm.tag_dim), noising(schedule) {}

  const ModelConfig config;
  const ModelDims dims;
  const int64_t d;  // D
  const NoisingProcess noising;
  ParameterRegistry params;
  std::unique_ptr<Diffusion> diffusion;  // null for kinds without one
  std::unique_ptr<UserTower> user_tower;
  ItemTower item_tower;
  std::optional<Linear> user_feature;  // D_user -> E, no bias; only with a user feature
  std::optional<Linear> user_profile;  // F * D_f -> E, no bias; only with profile fields

  // e_u plus the projected user rows (with a user feature) and the projected profile values
  // (with profile fields): e_u + W_user e_user + W_feat p.
  Tensor AddUserFeature(const Tensor& e_u, const Batch& batch, const Rows& rows) const {
    Tensor out = e_u;
    if (user_feature) out = out + (*user_feature)(rows.user_rows.index_select(0, LongTensor(batch.user_rows)));
    if (user_profile) out = out + (*user_profile)(ProfileInput(batch, rows));
    return out;
  }
  // p [B, F * D_f]: per sample, the rows of its F profile values side by side, a zero vector for
  // a missing one (row -1). The zero row is a constant put in front of the value rows, so a
  // missing value sends no gradient anywhere.
  Tensor ProfileInput(const Batch& batch, const Rows& rows) const {
    const Tensor& values = rows.user_feature_rows;
    const Tensor table = at::cat({at::zeros({1, dims.user_feature_dim}, values.options()), values}, 0);
    const Tensor index = LongTensor(batch.user_feature_rows).add(1);
    return table.index_select(0, index).view({batch.batch_size, dims.user_fields * dims.user_feature_dim});
  }

  // Item embeddings [S, D] of the gathered slots.
  Tensor Embed(const SlotGather& g, const Rows& rows) const {
    const bool tags = dims.tag_dim > 0;
    return GatherItems(rows.id_rows, tags ? rows.tag_rows : Tensor(), LongTensor(g.id),
                       tags ? LongTensor(g.tag_offsets) : at::empty({0}, at::kLong),
                       tags ? LongTensor(g.tag_rows) : at::empty({0}, at::kLong));
  }
  // Registers every module's parameters, in the order that defines the layout (file comment).
  void Register(const NoiseSchedule& schedule) {
    diffusion = Diffusion::Create(config, d, schedule, params);
    user_tower = UserTower::Create(config, d, dims.session_len, params);
    item_tower = ItemTower::Register(params, d, user_tower->output_dim());
    if (dims.user_dim > 0) {
      user_feature = Linear::Register(params, "user_feature.linear", dims.user_dim, user_tower->output_dim(),
                                      /*bias=*/false, /*diffusion=*/false);
    }
    if (dims.user_fields > 0) {
      user_profile = Linear::Register(params, "user_profile.linear", dims.user_fields * dims.user_feature_dim,
                                      user_tower->output_dim(), /*bias=*/false, /*diffusion=*/false);
    }
  }
  // The history embeddings [B, n, D] alone (inference).
  Tensor EmbedHistory(const Batch& batch, const Rows& rows) const {
    SlotGather g;
    g.Append(batch.history, dims.tag_dim > 0);
    return Embed(g, rows).view({batch.batch_size, batch.seq_len, d});
  }
};

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::~Model() = default;

absl::StatusOr<std::unique_ptr<Model>> Model::Create(const ModelConfig& config, const ModelDims& dims) {
  T2D_RETURN_IF_ERROR(ValidateModelConfig(config, dims));
  T2D_ASSIGN_OR_RETURN(const NoiseSchedule schedule, NoiseSchedule::FromConfig(config));
  try {
    auto impl = std::make_unique<Impl>(config, dims, schedule);
    impl->Register(schedule);
    impl->params.Allocate(config.init_seed());
    return std::unique_ptr<Model>(new Model(std::move(impl)));
  } catch (const std::exception& ex) {
    return absl::InternalError(absl::StrCat("model: building the parameters failed: ", ex.what()));
  }
}

absl::StatusOr<int64_t> Model::DenseParameterCount(const ModelConfig& config, const ModelDims& dims) {
  T2D_RETURN_IF_ERROR(ValidateModelConfig(config, dims));
  T2D_ASSIGN_OR_RETURN(const NoiseSchedule schedule, NoiseSchedule::FromConfig(config));
  try {
    // The same registration as Create, without Allocate.
    Impl impl(config, dims, schedule);
    impl.Register(schedule);
    int64_t total = 0;
    for (const ParameterInfo& info : impl.params.infos()) total += info.numel;
    return total;
  } catch (const std::exception& ex) {
    return absl::InternalError(absl::StrCat("model: registering the parameters failed: ", ex.what()));
  }
}

const ModelConfig& Model::config() const { return impl_->config; }
const ModelDims& Model::dims() const { return impl_->dims; }
int64_t Model::input_dim() const { return impl_->d; }
int64_t Model::output_dim() const { return impl_->user_tower->output_dim(); }

namespace {

absl::Status CheckRows(const Rows& rows, const ModelDims& dims) {
  if (!rows.id_rows.defined() || rows.id_rows.dim() != 2 || rows.id_rows.size(1) != dims.id_dim ||
      rows.id_rows.scalar_type() != at::kFloat) {
    return absl::InvalidArgumentError(absl::StrCat("rows.id_rows must be a float [U, ", dims.id_dim, "] tensor"));
  }
  if (dims.tag_dim > 0 && (!rows.tag_rows.defined() || rows.tag_rows.dim() != 2 ||
                           rows.tag_rows.size(1) != dims.tag_dim || rows.tag_rows.scalar_type() != at::kFloat)) {
    return absl::InvalidArgumentError(absl::StrCat("rows.tag_rows must be a float [U_tag, ", dims.tag_dim, "] tensor"));
  }
  if (dims.user_dim > 0 && (!rows.user_rows.defined() || rows.user_rows.dim() != 2 ||
                            rows.user_rows.size(1) != dims.user_dim || rows.user_rows.scalar_type() != at::kFloat)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rows.user_rows must be a float [U_user, ", dims.user_dim, "] tensor (model.user_id_table)"));
  }
  if (dims.user_fields > 0 &&
      (!rows.user_feature_rows.defined() || rows.user_feature_rows.dim() != 2 ||
       rows.user_feature_rows.size(1) != dims.user_feature_dim || rows.user_feature_rows.scalar_type() != at::kFloat)) {
    return absl::InvalidArgumentError(absl::StrCat("rows.user_feature_rows must be a float [U_f, ", dims.user_feature_dim,
                                                   "] tensor (model.user_feature_table)"));
  }
  return absl::OkStatus();
}

// Batch::user_rows against the model's user feature and the user rows given.
absl::Status CheckUserRows(const Batch& batch, const Rows& rows, const ModelDims& dims) {
  if (dims.user_dim == 0) {
    if (batch.user_rows.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError("batch.user_rows: the model has no user feature (model.user_id_table is empty)");
  }
  if (static_cast<int64_t>(batch.user_rows.size()) != batch.batch_size) {
    return absl::InvalidArgumentError(absl::StrCat("batch.user_rows has ", batch.user_rows.size(), " entries, expected ",
                                                   batch.batch_size, " (model.user_id_table)"));
  }
  const int64_t u = rows.user_rows.size(0);
  for (size_t i = 0; i < batch.user_rows.size(); ++i) {
    if (batch.user_rows[i] < 0 || batch.user_rows[i] >= u) {
      return absl::InvalidArgumentError(
          absl::StrCat("batch.user_rows[", i, "] = ", batch.user_rows[i], " is outside [0, ", u, ")"));
    }
  }
  return absl::OkStatus();
}

// Batch::user_feature_rows against the model's profile fields and the profile rows given.
absl::Status CheckUserFeatureRows(const Batch& batch, const Rows& rows, const ModelDims& dims) {
  if (dims.user_fields == 0) {
    if (batch.user_feature_rows.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(
        "batch.user_feature_rows: the model has no profile fields (model.user_feature_table is empty)");
  }
  if (static_cast<int64_t>(batch.user_feature_rows.size()) != batch.batch_size * dims.user_fields) {
    return absl::InvalidArgumentError(absl::StrCat("batch.user_feature_rows has ", batch.user_feature_rows.size(),
                                                   " entries, expected ", batch.batch_size, " samples x ",
                                                   dims.user_fields, " profile fields (model.user_feature_table)"));
  }
  const int64_t u = rows.user_feature_rows.size(0);
  for (size_t i = 0; i < batch.user_feature_rows.size(); ++i) {
    const int64_t r = batch.user_feature_rows[i];
    if (r < -1 || r >= u) {
      return absl::InvalidArgumentError(absl::StrCat("batch.user_feature_rows[", i, "] = ", r, " is outside [-1, ", u,
                                                     ") (-1: no value)"));
    }
  }
  return absl::OkStatus();
}

int64_t TagRowCount(const Rows& rows, const ModelDims& dims) { return dims.tag_dim > 0 ? rows.tag_rows.size(0) : 0; }

// The checks of a training batch beyond ValidateBatch: the loss's inputs and the noise.
absl::Status ValidateTrainingInputs(const Batch& batch, const Candidates& candidates, const ModelConfig& config,
                                    int64_t d, const TrainNoise* noise) {
  const int64_t b = batch.batch_size, n = batch.seq_len, c = candidates.items.size();
  if (config.loss() == ModelConfig::FULL_SOFTMAX) {
    if (c < 1) return absl::InvalidArgumentError("candidates: FULL_SOFTMAX needs a non-empty candidate set");
    if (static_cast<int64_t>(batch.target_candidates.size()) != b) {
      return absl::InvalidArgumentError(absl::StrCat("batch.target_candidates has ", batch.target_candidates.size(),
                                                     " entries, expected ", b, " (FULL_SOFTMAX)"));
    }
    for (int64_t i = 0; i < b; ++i) {
      const int64_t t = batch.target_candidates[static_cast<size_t>(i)];
      if (t < 0 || t >= c) {
        return absl::InvalidArgumentError(
            absl::StrCat("batch.target_candidates[", i, "] = ", t, " is outside [0, ", c, ")"));
      }
      if (candidates.items.id_rows[static_cast<size_t>(t)] != batch.targets.id_rows[static_cast<size_t>(i)]) {
        return absl::InvalidArgumentError(absl::StrCat("batch.target_candidates[", i, "] = ", t,
                                                       " names a candidate with another id row than the target"));
      }
    }
  } else if (config.logq_correction()) {
    if (static_cast<int64_t>(batch.target_log_q.size()) != b ||
        static_cast<int64_t>(candidates.log_q.size()) != c) {
      return absl::InvalidArgumentError(absl::StrCat(
          "SAMPLED_SOFTMAX with logq_correction needs batch.target_log_q [", b, "] and candidates.log_q [", c,
          "]; got ", batch.target_log_q.size(), " and ", candidates.log_q.size()));
    }
  }
  if (config.time_lag_feature() && batch.time_lags.empty()) {
    return absl::InvalidArgumentError("batch.time_lags: model.time_lag_feature is on but the batch has no time lags");
  }
  if (noise != nullptr) {
    if (!noise->steps.defined() || noise->steps.numel() != b || !noise->eps.defined() ||
        noise->eps.sizes() != at::IntArrayRef({b, n, d})) {
      return absl::InvalidArgumentError("TrainNoise: steps must be [B] and eps [B, n, D]");
    }
  }
  return absl::OkStatus();
}

// L_tower. items [B + C, E]: the targets' vectors, then the candidates'.
Tensor TowerLoss(const Tensor& users, const Tensor& items, const Batch& batch, const Candidates& candidates,
                 const ModelConfig& config) {
  const int64_t b = batch.batch_size, c = candidates.items.size();
  if (config.loss() == ModelConfig::FULL_SOFTMAX) {
    return SoftmaxLoss(users, items.narrow(0, b, c), LongTensor(batch.target_candidates), Tensor(), Tensor());
  }
  // Columns: the in-batch positives, then the shared negatives.
  Tensor logq;
  if (config.logq_correction()) {
    std::vector<float> q(batch.target_log_q);
    q.insert(q.end(), candidates.log_q.begin(), candidates.log_q.end());
    logq = FloatTensor(q, {b + c});
  }
  // Another copy of the positive item (a duplicate target or a negative equal to it) is not a
  // negative: exclude it.
  std::vector<int64_t> ids(batch.targets.id_rows);
  ids.insert(ids.end(), candidates.items.id_rows.begin(), candidates.items.id_rows.end());
  const Tensor id_t = LongTensor(ids);
  Tensor same = id_t.narrow(0, 0, b).unsqueeze(1).eq(id_t.unsqueeze(0));
  same.narrow(1, 0, b).diagonal().fill_(false);
  return SoftmaxLoss(users, items, at::arange(b, at::kLong), logq, same);
}

}  // namespace

absl::StatusOr<ForwardOutput> Model::Forward(const Batch& batch, const Rows& rows, const Candidates& candidates,
                                             uint64_t noise_seed, const TrainNoise* noise,
                                             const AfterDiffusion* after_diffusion) {
  const Impl& m = *impl_;
  T2D_RETURN_IF_ERROR(CheckRows(rows, m.dims));
  const int64_t u = rows.id_rows.size(0), ut = TagRowCount(rows, m.dims);
  T2D_RETURN_IF_ERROR(ValidateBatch(batch, u, ut));
  T2D_RETURN_IF_ERROR(CheckUserRows(batch, rows, m.dims));
  T2D_RETURN_IF_ERROR(CheckUserFeatureRows(batch, rows, m.dims));
  T2D_RETURN_IF_ERROR(ValidateSlots(candidates.items, "candidates.items", u, ut, false));
  T2D_RETURN_IF_ERROR(ValidateTrainingInputs(batch, candidates, m.config, m.d, noise));
  const int64_t b = batch.batch_size, n = batch.seq_len, c = candidates.items.size();
  try {
    // Parallel branches: the diffusion's noise is drawn on the second thread meanwhile (the
    // future's destructor waits for it on every path).
    std::future<DrawnNoise> drawing;
    if (after_diffusion != nullptr && m.diffusion != nullptr && noise == nullptr) {
      drawing = std::async(std::launch::async, [&m, b, n, noise_seed] { return m.diffusion->DrawNoise(b, n, noise_seed); });
    }
    SlotGather g;
    const bool tags = m.dims.tag_dim > 0;
    g.Append(batch.history, tags);
    g.Append(batch.targets, tags);
    g.Append(candidates.items, tags);
    const Tensor all = m.Embed(g, rows);
    const Tensor x = all.narrow(0, 0, b * n).view({b, n, m.d});
    const Tensor items = m.item_tower(all.narrow(0, b * n, b + c));
    const SequenceMask mask = MakeSequenceMask(batch);

    ForwardOutput out;
    std::shared_ptr<DeferredDiffusionPass> deferred;
    out.diffusion_loss = at::zeros({}, at::kFloat);
    if (m.diffusion != nullptr) {
      const DrawnNoise drawn = drawing.valid() ? drawing.get() : DrawnNoise{};
      T2D_ASSIGN_OR_RETURN(Diffusion::TrainOutput diffused,
                           m.diffusion->Train(x, all.narrow(0, b * n, b), mask, noise_seed, noise,
                                              after_diffusion != nullptr, drawn.steps.defined() ? &drawn : nullptr));
      out.diffusion_loss = diffused.loss;
      out.x_hat = diffused.x_hat;
      deferred = std::move(diffused.deferred);
    }
    const Tensor weighted = out.diffusion_loss * static_cast<double>(m.config.diffusion_loss_weight());
    if (after_diffusion != nullptr) (*after_diffusion)(weighted, deferred);
    out.user_vectors = m.AddUserFeature(m.user_tower->Forward(x, out.x_hat, mask.mask, batch), batch, rows);
    out.target_vectors = items.narrow(0, 0, b);
    out.tower_loss = TowerLoss(out.user_vectors, items, batch, candidates, m.config);
    out.total_loss = out.tower_loss + weighted;
    return out;
  } catch (const std::exception& ex) {
    return absl::InternalError(absl::StrCat("model forward: ", ex.what()));
  }
}

absl::StatusOr<Model::Losses> Model::ForwardBackward(const Batch& batch, const Rows& rows,
                                                     const Candidates& candidates, uint64_t noise_seed,
                                                     bool parallel_branches) {
  if (parallel_branches && impl_->diffusion != nullptr) {
    // The diffusion branch's backward on its own thread (model.h: why the bits are the same).
    std::thread branch;
    std::string branch_error;
    std::shared_ptr<DeferredDiffusionPass> pass;  // the kernel's pass, shared once the towers are done
    const AfterDiffusion start = [&](const Tensor& weighted, const std::shared_ptr<DeferredDiffusionPass>& deferred) {
      pass = deferred;
      branch = std::thread([weighted, &branch_error] {
        try {
          weighted.backward();
        } catch (const std::exception& ex) {
          branch_error = ex.what();
        }
      });
    };
    auto out = Forward(batch, rows, candidates, noise_seed, nullptr, &start);
    std::string tower_error;
    if (out.ok()) {
      try {
        out->tower_loss.backward();
        if (pass != nullptr) pass->Help();
      } catch (const std::exception& ex) {
        tower_error = ex.what();
      }
    }
    if (branch.joinable()) branch.join();
    if (!out.ok()) return out.status();
    if (!tower_error.empty() || !branch_error.empty()) {
      return absl::InternalError(absl::StrCat("model backward: ", tower_error.empty() ? branch_error : tower_error));
    }
    if (pass != nullptr) {
      // The forward's diffusion and total losses were stand-ins: the pass's loss, weighted and
      // added as Forward does (the same bits as the single-threaded step).
      try {
        at::NoGradGuard no_grad;
        out->diffusion_loss = pass->Loss();
        const Tensor weighted = out->diffusion_loss * static_cast<double>(impl_->config.diffusion_loss_weight());
        out->total_loss = out->tower_loss + weighted;
      } catch (const std::exception& ex) {
        return absl::InternalError(absl::StrCat("model backward: ", ex.what()));
      }
    }
    Losses l;
    l.total = out->total_loss.item<double>();
    l.tower = out->tower_loss.item<double>();
    l.diffusion = out->diffusion_loss.item<double>();
    return l;
  }
  T2D_ASSIGN_OR_RETURN(ForwardOutput out, Forward(batch, rows, candidates, noise_seed));
  try {
    out.total_loss.backward();
    Losses l;
    l.total = out.total_loss.item<double>();
    l.tower = out.tower_loss.item<double>();
    l.diffusion = out.diffusion_loss.item<double>();
    return l;
  } catch (const std::exception& ex) {
    return absl::InternalError(absl::StrCat("model backward: ", ex.what()));
  }
}

namespace {

// Inference reads the history only: validate it against a dummy target list.
absl::Status ValidateInferenceBatch(const Batch& batch, const Rows& rows, const ModelDims& dims,
                                    const ModelConfig& config, const InferenceOptions& options) {
  T2D_RETURN_IF_ERROR(CheckRows(rows, dims));
  if (batch.batch_size < 1) return absl::InvalidArgumentError("batch: batch_size must be >= 1");
  if (!options.sample_seeds.empty() && static_cast<int64_t>(options.sample_seeds.size()) != batch.batch_size) {
    return absl::InvalidArgumentError(absl::StrCat("inference: ", options.sample_seeds.size(),
                                                   " sample seeds for a batch of ", batch.batch_size));
  }
  Batch probe;
  probe.batch_size = batch.batch_size;
  probe.seq_len = batch.seq_len;
  probe.lengths = batch.lengths;
  probe.time_lags = batch.time_lags;
  probe.session_lengths = batch.session_lengths;
  probe.history = batch.history;
  for (int64_t i = 0; i < batch.batch_size; ++i) probe.targets.Add(0);
  if (dims.tag_dim == 0) probe.targets.tag_offsets.clear();
  T2D_RETURN_IF_ERROR(ValidateBatch(probe, std::max<int64_t>(1, rows.id_rows.size(0)), TagRowCount(rows, dims)));
  T2D_RETURN_IF_ERROR(CheckUserRows(batch, rows, dims));
  T2D_RETURN_IF_ERROR(CheckUserFeatureRows(batch, rows, dims));
  if (config.time_lag_feature() && batch.time_lags.empty()) {
    return absl::InvalidArgumentError("batch.time_lags: model.time_lag_feature is on but the batch has no time lags");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<at::Tensor> Model::GenerateNextItem(const Batch& batch, const Rows& rows,
                                                   const InferenceOptions& options) const {
  const Impl& m = *impl_;
  if (m.diffusion == nullptr) return absl::FailedPreconditionError("GenerateNextItem: the model has no diffusion module");
  T2D_RETURN_IF_ERROR(ValidateInferenceBatch(batch, rows, m.dims, m.config, options));
  try {
    c10::InferenceMode guard;
    return m.diffusion->Generate(m.EmbedHistory(batch, rows), MakeSequenceMask(batch).mask, options);
  } catch (const std::exception& ex) {
    return absl::InternalError(absl::StrCat("model inference: ", ex.what()));
  }
}

absl::StatusOr<at::Tensor> Model::UserVectors(const Batch& batch, const Rows& rows,
                                              const InferenceOptions& options) const {
  const Impl& m = *impl_;
  T2D_RETURN_IF_ERROR(ValidateInferenceBatch(batch, rows, m.dims, m.config, options));
  try {
    c10::InferenceMode guard;
    const Tensor x = m.EmbedHistory(batch, rows);
    const Tensor mask = MakeSequenceMask(batch).mask;
    Tensor x_hat;
    if (m.diffusion != nullptr) {
      // Sequences are right-aligned: position n - 1 is the newest behaviour.
      x_hat = m.config.inference_token() == ModelConfig::LAST_BEHAVIOUR ? x.select(1, batch.seq_len - 1)
                                                                        : m.diffusion->Generate(x, mask, options);
    }
    return m.AddUserFeature(m.user_tower->Forward(x, x_hat, mask, batch), batch, rows);
  } catch (const std::exception& ex) {
    return absl::InternalError(absl::StrCat("model inference: ", ex.what()));
  }
}

absl::StatusOr<at::Tensor> Model::ItemVectors(const ItemSlots& items, const Rows& rows) const {
  const Impl& m = *impl_;
  T2D_RETURN_IF_ERROR(CheckRows(rows, m.dims));
  T2D_RETURN_IF_ERROR(ValidateSlots(items, "items", rows.id_rows.size(0), TagRowCount(rows, m.dims), false));
  try {
    c10::InferenceMode guard;
    SlotGather g;
    g.Append(items, m.dims.tag_dim > 0);
    return m.item_tower(m.Embed(g, rows));
  } catch (const std::exception& ex) {
    return absl::InternalError(absl::StrCat("model inference: ", ex.what()));
  }
}

at::Tensor Model::ForwardNoise(const at::Tensor& z0, const at::Tensor& steps, uint64_t seed) const {
  at::NoGradGuard no_grad;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return impl_->noising.Apply(z0, steps.to(at::kLong), at::randn(z0.sizes(), gen, at::kFloat));
}

absl::Span<float> Model::DenseParameters() {
  const Tensor& v = impl_->params.values();
  return absl::Span<float>(v.data_ptr<float>(), static_cast<size_t>(v.numel()));
}
absl::Span<const float> Model::DenseParameters() const {
  const Tensor& v = impl_->params.values();
  return absl::Span<const float>(v.data_ptr<float>(), static_cast<size_t>(v.numel()));
}
absl::Span<float> Model::DenseGradients() {
  const Tensor& g = impl_->params.gradients();
  return absl::Span<float>(g.data_ptr<float>(), static_cast<size_t>(g.numel()));
}
void Model::ZeroGradients() { impl_->params.gradients().zero_(); }
const std::vector<ParameterInfo>& Model::Parameters() const { return impl_->params.infos(); }
at::Tensor Model::ParameterTensor(size_t i) const { return impl_->params.tensor(i); }

}  // namespace t2d::model
