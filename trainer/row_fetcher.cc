#include "trainer/row_fetcher.h"

#include <ATen/ATen.h>

#include "common/status_macros.h"

namespace t2d::trainer {
namespace {

absl::Span<float> Floats(at::Tensor& t) { return absl::MakeSpan(t.data_ptr<float>(), static_cast<size_t>(t.numel())); }

}  // namespace

RowFetcher::RowFetcher(const RunContext* context)
    : ctx_(*context),
      id_dim_(context->store->dim(context->id_table)),
      tag_dim_(context->tag_table >= 0 ? context->store->dim(context->tag_table) : 0),
      user_dim_(context->user_table >= 0 ? context->store->dim(context->user_table) : 0),
      user_feature_dim_(context->user_feature_table >= 0 ? context->store->dim(context->user_feature_table) : 0) {}

absl::StatusOr<RowFetcher::Pending> RowFetcher::Request(const model::StepInput& in) {
  Pending p;
  T2D_ASSIGN_OR_RETURN(p.id_ticket, ctx_.store->Pull(ctx_.id_table, in.id_keys));
  if (ctx_.tag_table >= 0) {
    T2D_ASSIGN_OR_RETURN(p.tag_ticket, ctx_.store->Pull(ctx_.tag_table, in.tag_keys));
  }
  if (ctx_.user_table >= 0) {
    T2D_ASSIGN_OR_RETURN(p.user_ticket, ctx_.store->Pull(ctx_.user_table, in.user_keys));
  }
  if (ctx_.user_feature_table >= 0) {
    T2D_ASSIGN_OR_RETURN(p.user_feature_ticket, ctx_.store->Pull(ctx_.user_feature_table, in.user_feature_keys));
  }
  p.active = true;
  return p;
}

absl::StatusOr<model::Rows> RowFetcher::Take(const model::StepInput& in, Pending* pending, bool requires_grad) {
  if (!pending->active) return absl::FailedPreconditionError("row fetcher: rows taken twice or never requested");
  pending->active = false;
  model::Rows rows;
  rows.id_rows = at::empty({static_cast<int64_t>(in.id_keys.size()), id_dim_}, at::kFloat);
  T2D_RETURN_IF_ERROR(ctx_.store->Wait(pending->id_ticket, Floats(rows.id_rows)));
  rows.id_rows.set_requires_grad(requires_grad);
  if (ctx_.tag_table >= 0) {
    rows.tag_rows = at::empty({static_cast<int64_t>(in.tag_keys.size()), tag_dim_}, at::kFloat);
    T2D_RETURN_IF_ERROR(ctx_.store->Wait(pending->tag_ticket, Floats(rows.tag_rows)));
    rows.tag_rows.set_requires_grad(requires_grad);
  }
  if (ctx_.user_table >= 0) {
    rows.user_rows = at::empty({static_cast<int64_t>(in.user_keys.size()), user_dim_}, at::kFloat);
    T2D_RETURN_IF_ERROR(ctx_.store->Wait(pending->user_ticket, Floats(rows.user_rows)));
    rows.user_rows.set_requires_grad(requires_grad);
  }
  if (ctx_.user_feature_table >= 0) {
    rows.user_feature_rows =
        at::empty({static_cast<int64_t>(in.user_feature_keys.size()), user_feature_dim_}, at::kFloat);
    T2D_RETURN_IF_ERROR(ctx_.store->Wait(pending->user_feature_ticket, Floats(rows.user_feature_rows)));
    rows.user_feature_rows.set_requires_grad(requires_grad);
  }
  return rows;
}

absl::StatusOr<model::Rows> RowFetcher::Fetch(const model::StepInput& in, bool requires_grad) {
  T2D_ASSIGN_OR_RETURN(Pending p, Request(in));
  return Take(in, &p, requires_grad);
}

absl::Status RowFetcher::Push(const model::StepInput& in, const model::Rows& rows, bool skip) {
  T2D_RETURN_IF_ERROR(PushTable(ctx_.id_table, in.id_keys, rows.id_rows, skip));
  if (ctx_.tag_table >= 0) T2D_RETURN_IF_ERROR(PushTable(ctx_.tag_table, in.tag_keys, rows.tag_rows, skip));
  if (ctx_.user_table >= 0) T2D_RETURN_IF_ERROR(PushTable(ctx_.user_table, in.user_keys, rows.user_rows, skip));
  // Missing profile values (key 0) have no row here: their zero input sends no gradient.
  if (ctx_.user_feature_table >= 0) {
    T2D_RETURN_IF_ERROR(PushTable(ctx_.user_feature_table, in.user_feature_keys, rows.user_feature_rows, skip));
  }
  return absl::OkStatus();
}

absl::Status RowFetcher::PushTable(int table, const std::vector<int64_t>& keys, const at::Tensor& rows, bool skip) {
  if (skip || !rows.grad().defined()) return ctx_.store->ApplyGradients(table, {}, {});
  at::Tensor g = rows.grad().mul(1.0 / ctx_.world).contiguous();
  return ctx_.store->ApplyGradients(table, keys,
                                    absl::MakeConstSpan(g.data_ptr<float>(), static_cast<size_t>(g.numel())));
}

}  // namespace t2d::trainer
