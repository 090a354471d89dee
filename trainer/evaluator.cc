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
#include "serving/item_index.h"

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

absl::StatusOr<EvalResult> Evaluator::Evaluate(const std::string& split, const std::string& dump_path,
                                               const std::string& ranks_path) {
  try {
    return EvaluateUnguarded(split, dump_path, ranks_path);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("evaluation of split ", split, ": ", e.what()));
  }
}

absl::StatusOr<EvalResult> Evaluator::EvaluateUnguarded(const std::string& split, const std::string& dump_path,
                                                        const std::string& ranks_path) {
  const auto start = std::chrono::steady_clock::now();
  // File errors are returned after the collective calls below, which the other workers wait in.
  absl::Status written;
  std::ofstream dump, ranks;
  if (!dump_path.empty()) {
    const std::string path = ctx_.world > 1 ? absl::StrCat(dump_path, ".w", ctx_.rank) : dump_path;
    dump.open(path, std::ios::trunc);
    if (!dump) written = absl::InternalError(absl::StrCat(path, ": cannot create"));
  }
  if (!ranks_path.empty()) {
    ranks.open(ranks_path, std::ios::trunc);
    if (!ranks && written.ok()) written = absl::InternalError(absl::StrCat(ranks_path, ": cannot create"));
    if (ranks) ranks << "user\ttarget\ttime\trank\n";
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
  using Clock = std::chrono::steady_clock;
  auto since = [](Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); };
  // eval.max_samples: this worker's share of the cap.
  const int64_t max_samples = cfg.eval().max_samples();
  const int64_t cap = max_samples > 0 ? max_samples * (ctx_.rank + 1) / ctx_.world - max_samples * ctx_.rank / ctx_.world : -1;
  int64_t taken = 0;
  // eval.ann: the serving index of the catalogue, and the exact top main_k to measure it by.
  std::unique_ptr<serving::ItemIndex> index;
  const int main_k = MainK(cfg.eval());
  int max_k = 0;
  for (int k : result.model.ks()) max_k = std::max(max_k, k);
  double overlap = 0, exact_seconds = 0, ann_seconds = 0;
  if (cfg.eval().ann()) {
    const auto t0 = Clock::now();
    const at::Tensor flat = items.contiguous();
    T2D_ASSIGN_OR_RETURN(index, serving::ItemIndex::Build(absl::MakeConstSpan(flat.data_ptr<float>(), static_cast<size_t>(flat.numel())),
                                                          flat.size(0), flat.size(1), cfg.serving()));
    result.has_ann = true;
    result.ann_index = index->name();
    result.ann = RankingMetrics(EvalKs(cfg.eval()));
    result.ann_build_seconds = since(t0);
    result.ann_top_k = static_cast<int>(std::min<int64_t>(main_k, items.size(0)));
  }
  while (cap < 0 || taken < cap) {
    T2D_ASSIGN_OR_RETURN(bool more, reader->Next(&batch));
    if (!more) break;
    if (cap >= 0 && taken + batch.size > cap) {
      data::ResizeSampleBatch(static_cast<int>(cap - taken), batch.max_seq_len, batch.max_tags, batch.user_fields, &batch);
    }
    taken += batch.size;
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
    const auto exact_start = Clock::now();
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
    exact_seconds += since(exact_start);
    if (index) {
      // The exact top main_k, block by block (bounded memory), to measure the index against.
      const int64_t kk = std::min<int64_t>(main_k, items.size(0));
      at::Tensor best_scores, best_rows;
      for (int64_t lo = 0; lo < items.size(0); lo += kItemBlock) {
        const int64_t len = std::min(kItemBlock, items.size(0) - lo);
        auto [sc, ix] = at::topk(at::matmul(users, items.narrow(0, lo, len).t()), std::min(kk, len), 1);
        ix = ix + lo;
        if (!best_scores.defined()) {
          best_scores = sc;
          best_rows = ix;
        } else {
          auto [merged, at_] = at::topk(at::cat({best_scores, sc}, 1), kk, 1);
          best_rows = at::gather(at::cat({best_rows, ix}, 1), 1, at_);
          best_scores = merged;
        }
      }
      best_rows = best_rows.contiguous();
      const auto ann_start = Clock::now();
      const at::Tensor u = users.contiguous();
      T2D_ASSIGN_OR_RETURN(std::vector<serving::Hits> hits,
                           index->Search(absl::MakeConstSpan(u.data_ptr<float>(), static_cast<size_t>(u.numel())),
                                         batch.size, std::max<int>(max_k, static_cast<int>(kk))));
      ann_seconds += since(ann_start);
      const int64_t* exact_rows = best_rows.data_ptr<int64_t>();
      for (size_t b = 0; b < b_size; ++b) {
        const auto& found = hits[b].rows;
        const auto at_target = std::find(found.begin(), found.end(), target_index[b]);
        result.ann.Add(at_target == found.end() ? max_k + 1 : 1 + (at_target - found.begin()));
        int64_t common = 0;
        const auto top = found.begin() + static_cast<std::ptrdiff_t>(std::min<size_t>(static_cast<size_t>(kk), found.size()));
        for (int64_t j = 0; j < kk; ++j) common += std::count(found.begin(), top, exact_rows[static_cast<int64_t>(b) * kk + j]);
        overlap += static_cast<double>(common) / static_cast<double>(kk);
      }
    }
    for (size_t b = 0; b < b_size; ++b) {
      result.model.Add(1 + h[b]);
      if (ranks.is_open()) {
        ranks << batch.user_id[b] << '\t' << batch.target_id[b] << '\t' << batch.target_time[b] << '\t' << 1 + h[b]
              << '\n';
      }
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
        if (batch.user_fields > 0) {
          // The profile as keys (evaluation has no value texts), in the data set's field order.
          const auto* keys = batch.user_feature.data() + b * static_cast<size_t>(batch.user_fields);
          line["user_feature_keys"] = std::vector<int64_t>(keys, keys + batch.user_fields);
        }
        dump << line.dump() << '\n';
      }
      result.popularity.Add(PopularityRank(target_index[b]));
    }
  }
  for (auto* out : {&dump, &ranks}) {
    if (!out->is_open()) continue;
    out->close();
    if (out->fail() && written.ok()) {
      written = absl::DataLossError(absl::StrCat(out == &ranks ? ranks_path : dump_path, ": write failed (disk full?)"));
    }
  }
  for (RankingMetrics* m : {&result.model, &result.popularity, &result.ann}) {
    if (m == &result.ann && !result.has_ann) continue;
    auto sums = m->Sums();
    T2D_RETURN_IF_ERROR(ctx_.workers->AllReduceSum(absl::MakeSpan(sums), ctx_.Deadline()));
    m->SetSums(sums);
  }
  if (result.has_ann) {
    std::vector<double> totals = {overlap, exact_seconds, ann_seconds};
    T2D_RETURN_IF_ERROR(ctx_.workers->AllReduceSum(absl::MakeSpan(totals), ctx_.Deadline()));
    result.ann_recall = result.ann.count() > 0 ? totals[0] / static_cast<double>(result.ann.count()) : 0;
    result.exact_seconds = totals[1];
    result.ann_seconds = totals[2];
  }
  T2D_RETURN_IF_ERROR(written);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace t2d::trainer
