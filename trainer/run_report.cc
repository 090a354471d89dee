#include "trainer/run_report.h"

#include <glog/logging.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"

namespace t2d::trainer {

namespace {

// Adds "recall@K", "mrr@K", "ndcg@K" for every K of `m` to `j`.
void AddMetrics(const RankingMetrics& m, Json* j) {
  for (int k : m.ks()) {
    (*j)[absl::StrCat("recall@", k)] = m.Recall(k);
    (*j)[absl::StrCat("mrr@", k)] = m.Mrr(k);
    (*j)[absl::StrCat("ndcg@", k)] = m.Ndcg(k);
  }
}

}  // namespace

Json MetricsJson(const RankingMetrics& m) {
  Json j;
  j["users"] = m.count();
  AddMetrics(m, &j);
  return j;
}

std::string AnnLine(const EvalResult& r) {
  return absl::StrFormat("%s through the %s index: %s | the index finds %.4f of the exact top %d | scoring: exact %.2fs, "
                         "index %.2fs (+ %.2fs to build)",
                         r.split, r.ann_index, r.ann.ToString(), r.ann_recall, r.ann_top_k,
                         r.exact_seconds, r.ann_seconds, r.ann_build_seconds);
}

Json EvalJson(const EvalResult& r) {
  Json j;
  j["split"] = r.split;
  j["seconds"] = r.seconds;
  j["model"] = MetricsJson(r.model);
  j["popularity"] = MetricsJson(r.popularity);
  if (r.has_ann) {
    j["ann"] = MetricsJson(r.ann);
    j["ann"]["index"] = r.ann_index;
    j["ann"]["recall_of_exact_top"] = r.ann_recall;
    j["ann"]["exact_seconds"] = r.exact_seconds;
    j["ann"]["search_seconds"] = r.ann_seconds;
    j["ann"]["build_seconds"] = r.ann_build_seconds;
  }
  return j;
}

Json SummaryJson(const TrainResult& r, const config::EvalConfig& eval) {
  Json j;
  j["kind"] = "summary";
  j["steps"] = r.steps;
  j["skipped_steps"] = r.skipped_steps;
  j["workers"] = r.workers;
  j["train_seconds"] = r.train_seconds;
  j["eval_seconds"] = r.eval_seconds;
  j["step_seconds"] = r.step_seconds;
  j["step_cpu_seconds"] = r.step_cpu_seconds;
  j["parallel_branches"] = r.parallel_branches;
  j["samples_per_s"] = r.samples_per_second;
  j["first_loss"] = r.first_loss;
  j["last_loss"] = r.last_loss;
  if (r.best_epoch >= 0) {
    // The epoch of the selected evaluation, and that evaluation's number (they differ when
    // eval.every_epochs > 1); eval.write_ranks keeps ranks/test.<best_evaluation>.w*.tsv.
    j["best_epoch"] = r.test.epoch;
    j["best_evaluation"] = r.best_epoch + 1;
    j["selected_on"] = r.selected_on_validation ? "validation" : "last";
    j["test_users"] = r.test.model.count();
    AddMetrics(r.test.model, &j);
    j["popularity"] = MetricsJson(r.test.popularity);
    if (eval.paper_protocol()) {
      Json best;
      const auto ks = EvalKs(eval);
      for (size_t i = 0; i < ks.size(); ++i) best[absl::StrCat(ks[i])] = r.test_best_over_epochs[i];
      j["paper_protocol_best_test_recall"] = best;
    }
  }
  return j;
}

absl::StatusOr<std::unique_ptr<RunReport>> RunReport::Open(const std::string& output_dir, bool append) {
  std::unique_ptr<RunReport> report(new RunReport(output_dir, isatty(STDERR_FILENO) != 0));
  if (!output_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(output_dir, ec);
    report->metrics_.open(output_dir + "/metrics.jsonl", append ? std::ios::app : std::ios::trunc);
    if (!report->metrics_) return absl::InternalError(absl::StrCat(output_dir, "/metrics.jsonl: cannot open"));
  }
  return report;
}

void RunReport::Write(const Json& record) {
  if (metrics_.is_open()) metrics_ << record.dump() << "\n" << std::flush;
}

void RunReport::ShowProgress(const Progress& p) {
  const std::string line = absl::StrFormat(
      "epoch %d step %d/%d samples/s %.0f loss %.4f tower %.4f diffusion %.4f eta %.0fs", p.epoch, p.step,
      p.total_steps, p.samples_per_second, p.loss, p.tower, p.diffusion, p.eta_seconds);
  if (tty_) {
    const int width = 30;
    const int done = static_cast<int>(width * p.step / std::max<int64_t>(p.total_steps, 1));
    std::fprintf(stderr, "\r[%s%s] %s", std::string(static_cast<size_t>(done), '#').c_str(),
                 std::string(static_cast<size_t>(width - done), '.').c_str(), line.c_str());
    if (p.epoch_end) std::fprintf(stderr, "\n");
  } else {
    LOG(INFO) << line;
  }
  Json j;
  j["kind"] = "train";
  j["epoch"] = p.epoch;
  j["step"] = p.step;
  j["samples_per_s"] = p.samples_per_second;
  j["loss"] = p.loss;
  j["tower_loss"] = p.tower;
  j["diffusion_loss"] = p.diffusion;
  Write(j);
}

void RunReport::ShowEvaluation(int epoch, int64_t step, const EvalResult& r, bool log_line) {
  if (log_line) {
    LOG(INFO) << "epoch " << epoch << " " << r.split << " (" << r.model.count() << " samples, "
              << absl::StrFormat("%.1fs", r.seconds) << "): " << r.model.ToString();
    if (r.has_ann) LOG(INFO) << AnnLine(r);
  }
  Json j;
  j["kind"] = "eval";
  j["split"] = r.split;
  j["epoch"] = epoch;
  j["step"] = step;
  j["users"] = r.model.count();
  AddMetrics(r.model, &j);
  Write(j);
}

absl::Status RunReport::Finish(const TrainResult& r, const config::EvalConfig& eval) {
  if (r.best_epoch >= 0) {
    LOG(INFO) << "test at the " << (r.selected_on_validation ? "validation-selected" : "last (no validation split)")
              << " evaluation " << r.best_epoch + 1 << " (epoch " << r.test.epoch << ", " << r.test.model.count()
              << " samples): " << r.test.model.ToString();
    LOG(INFO) << "popularity baseline on test: " << r.test.popularity.ToString();
    if (eval.paper_protocol()) {
      std::string line;
      const auto ks = EvalKs(eval);
      for (size_t i = 0; i < ks.size(); ++i) absl::StrAppendFormat(&line, " Recall@%d=%.4f", ks[i], r.test_best_over_epochs[i]);
      LOG(INFO) << "paper protocol (best test value over epochs, optimistic):" << line;
    }
  }
  const Json summary = SummaryJson(r, eval);
  Write(summary);
  if (!output_dir_.empty()) return WriteFileAtomic(output_dir_ + "/summary.json", summary.dump() + "\n");
  return absl::OkStatus();
}

}  // namespace t2d::trainer
