#pragma once
// Ranking evaluation of a worker's model against the whole catalogue (collective over the
// workers): every worker computes the item vectors of its slice of the catalogue and one
// allreduce assembles them; every worker ranks its own shards of the split; the metric sums are
// allreduced so that every worker returns the same EvalResult. The popularity baseline (items
// ranked by their training positives) is scored on the same targets.
//
// A target's rank is 1 + the number of catalogue items scored strictly higher, read from the
// same matmul that scores every other item (a separately computed dot product can differ in the
// last bit and miscount ties). Each sample's reverse diffusion runs from its own seed
// (EvalSampleSeed), so results do not depend on batching or the number of workers.
//
// Ownership: every pointer passed in is not owned and must outlive the evaluator.
// Thread-safety: not thread-safe; one thread drives a worker.
// Errors: absl::Status; libtorch exceptions inside evaluation are caught here and returned as
// Internal (this is an error boundary).

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "data/catalogue.h"
#include "model/model.h"
#include "trainer/row_fetcher.h"
#include "trainer/run_context.h"
#include "model/step_builder.h"

namespace t2d::trainer {

class Evaluator {
 public:
  Evaluator(const RunContext* context, const model::Model* model, model::StepBuilder* builder, RowFetcher* fetcher,
            const data::Catalogue* catalogue);

  // Ranks every sample of `split` against the whole catalogue. With `dump_path`, every worker
  // also writes per sample a JSON line: "target", "rank", then the sample as a serving request
  // ("user", "items", "times", "time"; docs/serving.md) to dump_path (".w<rank>" appended
  // when there are several workers). With `ranks_path`, every worker writes its samples' ranks
  // to ranks_path as tab-separated "user target time rank" lines under a header line (the
  // caller names a file per worker).
  absl::StatusOr<EvalResult> Evaluate(const std::string& split, const std::string& dump_path = "",
                                      const std::string& ranks_path = "");

  // Item vectors of the whole catalogue [N, E], identical on every worker.
  absl::StatusOr<at::Tensor> CatalogueVectors();

 private:
  absl::StatusOr<EvalResult> EvaluateUnguarded(const std::string& split, const std::string& dump_path,
                                               const std::string& ranks_path);
  int64_t PopularityRank(int64_t item_index) const;

  const RunContext& ctx_;
  const model::Model* const model_;
  model::StepBuilder* const builder_;
  RowFetcher* const fetcher_;
  const data::Catalogue* const catalogue_;
  std::vector<int64_t> sorted_counts_;  // descending, for the popularity baseline
};

}  // namespace t2d::trainer
