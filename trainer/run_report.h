#pragma once
// What a training run tells its user, on worker 0: the progress line (a live bar when stderr is a
// terminal, a log line otherwise), the evaluation lines, and the machine-readable records in
// <training.output_dir>/metrics.jsonl (one JSON object per line: "train" per progress interval,
// "eval" per evaluation, "summary" at the end) and summary.json. Records are built with
// nlohmann::json; their fields are listed in docs/formats.md.
//
// Thread-safety: not thread-safe. Errors: opening or writing the files is an error naming them.

#include <cstdint>
#include <fstream>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trainer/metrics.h"
#include "trainer/run_context.h"

namespace t2d::trainer {

using Json = nlohmann::ordered_json;

// {"recall@2": ..., "mrr@2": ..., "ndcg@2": ..., "recall@10": ...} of `m`, plus "users".
Json MetricsJson(const RankingMetrics& m);
// The run's summary: counters, timing, losses and, after any evaluation, the test metrics at the
// selected evaluation, the popularity baseline and (paper protocol) best-over-epochs recall.
Json SummaryJson(const TrainResult& r, const config::EvalConfig& eval);
// An evaluation's split, metrics and popularity baseline.
Json EvalJson(const EvalResult& r);
// One line for eval.ann: the metrics through the serving index, its recall of the exact top
// main_k, and the time of each.
std::string AnnLine(const EvalResult& r);

class RunReport {
 public:
  // `output_dir` "" writes no files. `append` continues a resumed run's metrics.jsonl.
  static absl::StatusOr<std::unique_ptr<RunReport>> Open(const std::string& output_dir, bool append);

  struct Progress {
    int epoch = 0;  // 1-based
    int64_t step = 0, total_steps = 0;
    double samples_per_second = 0;
    double loss = 0, tower = 0, diffusion = 0;  // interval means
    double eta_seconds = 0;
    bool epoch_end = false;
  };
  void ShowProgress(const Progress& p);
  void ShowEvaluation(int epoch, int64_t step, const EvalResult& r, bool log_line);
  // Logs the selected test metrics and writes the summary record and summary.json.
  absl::Status Finish(const TrainResult& r, const config::EvalConfig& eval);

 private:
  RunReport(std::string output_dir, bool tty) : output_dir_(std::move(output_dir)), tty_(tty) {}
  void Write(const Json& record);

  const std::string output_dir_;
  const bool tty_;
  std::ofstream metrics_;
};

}  // namespace t2d::trainer
