#pragma once
// Moves a step's embedding rows between the EmbeddingStore and the model: pulls the rows of a
// model::StepInput's unique ids (as leaf tensors, model/model.h's Rows) and pushes their gradients.
//
// Pulls go through the store's asynchronous interface (EmbeddingStore::Pull / Wait): Request
// sends them and returns at once, Take waits for the rows. The in-process store answers at
// Request time and the parameter-server store when the replies arrive; the trainer runs the
// same path over both, prefetching the next step's rows (async mode) or requesting and taking
// at once (Fetch).
//
// Ownership: the context's store must outlive the fetcher. Thread-safety: not thread-safe (the
// store has one caller thread).
// Errors: the store's (Unavailable, DeadlineExceeded, InvalidArgument); a pending request that
// fails to be taken leaves the store unusable, as a transport failure does.

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/model.h"
#include "trainer/run_context.h"
#include "model/step_builder.h"

namespace t2d::trainer {

class RowFetcher {
 public:
  // Requested rows of one model::StepInput, to be taken once.
  struct Pending {
    embedding::EmbeddingStore::Ticket id_ticket = 0, tag_ticket = 0, user_ticket = 0, user_feature_ticket = 0;
    bool active = false;
  };

  // `context` is not owned and must outlive the fetcher.
  explicit RowFetcher(const RunContext* context);
  RowFetcher(const RowFetcher&) = delete;
  RowFetcher& operator=(const RowFetcher&) = delete;

  // Sends the pulls of in.id_keys (and in.tag_keys, in.user_keys, in.user_feature_keys when the
  // job has a tag table, a user table, a profile table).
  absl::StatusOr<Pending> Request(const model::StepInput& in);
  // Waits for the rows of `pending` (REQUIRES: requested for `in`) and marks it taken.
  absl::StatusOr<model::Rows> Take(const model::StepInput& in, Pending* pending, bool requires_grad);
  // Request, then Take.
  absl::StatusOr<model::Rows> Fetch(const model::StepInput& in, bool requires_grad);

  // Pushes the row gradients of `rows` (scaled by 1 / number of workers, so that a step is the
  // average over workers as for the dense part), or an empty push when `skip` or the rows have
  // no gradient: every worker pushes every table every step, since sync servers count pushes.
  absl::Status Push(const model::StepInput& in, const model::Rows& rows, bool skip);

 private:
  absl::Status PushTable(int table, const std::vector<int64_t>& keys, const at::Tensor& rows, bool skip);

  const RunContext& ctx_;
  const int64_t id_dim_, tag_dim_, user_dim_, user_feature_dim_;
};

}  // namespace t2d::trainer
