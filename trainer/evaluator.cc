#include "trainer/evaluator.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <fstream>
#include <functional>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "configs/job_options.h"
#include "data/sample_reader.h"

namespace t2d::trainer {

Evaluator::Evaluator(const RunContext* context, const model::Model* model, model::StepBuilder* builder, RowFetcher* fetcher,
                     const data::Catalogue* catalogue)
    : ctx_(*context), model_(model), builder_(builder), fetcher_(fetcher), catalogue_(catalogue),
      sorted_counts_(catalogue->counts()) {
  std::sort(sorted_counts_.begin(), sorted_counts_.end(), std::greater<int64_t>());
}

int64_t Evaluator::PopularityRank(int64_t item_index) const {
  const int64_t c = catalogue_->counts()[static_cast<size_t>(item_index)];
  // sorted_counts_ is descending: items strictly more popular come before the first c.
  const auto it = std::lower_bound(sorted_counts_.begin(), sorted_counts_.end(), c, std::greater<int64_t>());
  return 1 + static_cast<int64_t>(it - sorted_counts_.begin());
}

absl::StatusOr<at::Tensor> Evaluator::CatalogueVectors() {
  try {
    const int64_t n = catalogue_->size();
    const int64_t e = model_->output_dim();
    const int64_t begin = n * ctx_.rank / ctx_.world, end = n * (ctx_.rank + 1) / ctx_.world;
    at::Tensor all = at::zeros({n, e}, at::kFloat);
    if (end > begin) {
      model::StepInput in;
      builder_->BuildCatalogue(begin, end, &in);
      T2D_ASSIGN_OR_RETURN(model::Rows rows, fetcher_->Fetch(in, false));
      T2D_ASSIGN_OR_RETURN(at::Tensor v, model_->ItemVectors(in.candidates.items, rows));
      all.narrow(0, begin, end - begin).copy_(v);
    }
    T2D_RETURN_IF_ERROR(ctx_.workers->AllReduceSum(
        absl::MakeSpan(all.data_ptr<float>(), static_cast<size_t>(all.numel())), ctx_.Deadline()));
    return all;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("catalogue item vectors: ", e.what()));
  }
}

absl::StatusOr<EvalResult> Evaluator::Evaluate(const std::string& split, const std::string& dump_path) {
  try {
    return EvaluateUnguarded(split, dump_path);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("evaluation of split ", split, ": ", e.what()));
  }
}

absl::StatusOr<EvalResult> Evaluator::EvaluateUnguarded(const std::string& split, const std::string& dump_path) {
  const auto start = std::chrono::steady_clock::now();
  std::ofstream dump;
  if (!dump_path.empty()) {
    const std::string path = ctx_.world > 1 ? absl::StrCat(dump_path, ".w", ctx_.rank) : dump_path;
    dump.open(path, std::ios::trunc);
    if (!dump) return absl::InternalError(absl::StrCat(path, ": cannot create"));
  }
  const auto& cfg = ctx_.cfg();
  EvalResult result;
  result.split = split;
  result.model = RankingMetrics(EvalKs(cfg.eval()));
  result.popularity = RankingMetrics(EvalKs(cfg.eval()));
  T2D_ASSIGN_OR_RETURN(at::Tensor items, CatalogueVectors());
  T2D_ASSIGN_OR_RETURN(auto reader, data::SampleReader::Open(cfg.data().dataset_dir(),
                                                             config::ReaderOptionsOf(cfg, split, ctx_.rank, ctx_.world)));
  const bool has_timestamps = reader->manifest().has_timestamps();
  data::SampleBatch batch;
  model::InferenceOptions io;
  constexpr int64_t kItemBlock = 65536;
  while (true) {
    T2D_ASSIGN_OR_RETURN(bool more, reader->Next(&batch));
    if (!more) break;
    const auto b_size = static_cast<size_t>(batch.size);
    model::StepInput in;
    T2D_RETURN_IF_ERROR(builder_->BuildUsers(batch, &in));
    T2D_ASSIGN_OR_RETURN(model::Rows rows, fetcher_->Fetch(in, false));
    io.sample_seeds.resize(b_size);
    for (size_t b = 0; b < b_size; ++b) io.sample_seeds[b] = model::EvalSampleSeed(cfg.eval().seed(), batch.user_id[b]);
    T2D_ASSIGN_OR_RETURN(at::Tensor users, model_->UserVectors(in.batch, rows, io));
    c10::InferenceMode guard;
    std::vector<int64_t> target_index(b_size);
    for (size_t b = 0; b < b_size; ++b) {
      const int64_t idx = catalogue_->IndexOf(batch.target_id[b]);
      if (idx < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("evaluation target ", batch.target_id[b], " of split ", split, " is not in the catalogue"));
      }
      target_index[b] = idx;
    }
    std::vector<float> target_score(b_size);
    for (int64_t lo = 0; lo < items.size(0); lo += kItemBlock) {
      const int64_t len = std::min(kItemBlock, items.size(0) - lo);
      at::Tensor scores = at::matmul(users, items.narrow(0, lo, len).t()).contiguous();
      const float* sc = scores.data_ptr<float>();
      for (size_t b = 0; b < b_size; ++b) {
        const int64_t ti = target_index[b];
        if (ti >= lo && ti < lo + len) target_score[b] = sc[static_cast<int64_t>(b) * len + (ti - lo)];
      }
    }
    at::Tensor target_scores = at::from_blob(target_score.data(), {batch.size, 1}, at::kFloat).clone();
    at::Tensor higher = at::zeros({batch.size}, at::kLong);
    for (int64_t lo = 0; lo < items.size(0); lo += kItemBlock) {
      const int64_t len = std::min(kItemBlock, items.size(0) - lo);
      at::Tensor scores = at::matmul(users, items.narrow(0, lo, len).t());
      higher += (scores > target_scores).sum(1);
    }
    const int64_t* h = higher.data_ptr<int64_t>();
    for (size_t b = 0; b < b_size; ++b) {
      result.model.Add(1 + h[b]);
      if (dump.is_open()) {
        // A serving request with the sample's target and rank in front (docs/serving.md): the
        // same line, less "target" and "rank", asks `t2diff serve` for this user's ranking.
        const size_t row = b * static_cast<size_t>(batch.max_seq_len);
        const auto len = static_cast<size_t>(batch.history_len[b]);
        nlohmann::ordered_json line;
        line["target"] = batch.target_id[b];
        line["rank"] = 1 + h[b];
        line["user"] = batch.user_id[b];
        line["items"] = std::vector<int64_t>(batch.history_id.begin() + row, batch.history_id.begin() + row + len);
        if (has_timestamps) {
          line["times"] = std::vector<int64_t>(batch.history_time.begin() + row, batch.history_time.begin() + row + len);
          line["time"] = batch.target_time[b];
        }
        dump << line.dump() << '\n';
      }
      result.popularity.Add(PopularityRank(target_index[b]));
    }
  }
  for (RankingMetrics* m : {&result.model, &result.popularity}) {
    auto sums = m->Sums();
    T2D_RETURN_IF_ERROR(ctx_.workers->AllReduceSum(absl::MakeSpan(sums), ctx_.Deadline()));
    m->SetSums(sums);
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace t2d::trainer
