#include "trainer/trainer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <glog/logging.h>
#include <google/protobuf/text_format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/checksum.h"
#include "common/file_util.h"
#include "common/hash.h"
#include "common/status_macros.h"
#include "configs/config_loader.h"
#include "data/sample_reader.h"
#include "model/dense_optimizer.h"
#include "model/dense_state.h"
#include "model/model.h"
#include "ps/remote_embedding_store.h"
#include "trainer/catalogue.h"
#include "trainer/npy.h"
#include "trainer/checkpoint.h"
#include "trainer/step_builder.h"

namespace t2d::trainer {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); }

std::vector<int> EvalKs(const config::EvalConfig& e) {
  std::vector<int> ks(e.k().begin(), e.k().end());
  if (ks.empty()) ks = {2, 10, 20, 50};
  return ks;
}

int MainK(const config::EvalConfig& e) {
  const auto ks = EvalKs(e);
  return std::find(ks.begin(), ks.end(), e.main_k()) != ks.end() ? e.main_k() : ks.back();
}

std::string JsonMetrics(const RankingMetrics& m) {
  std::string out;
  for (int k : m.ks()) {
    absl::StrAppendFormat(&out, ", \"recall@%d\": %.6f, \"mrr@%d\": %.6f, \"ndcg@%d\": %.6f", k, m.Recall(k), k,
                          m.Mrr(k), k, m.Ndcg(k));
  }
  return out;
}

}  // namespace

double LearningRateAt(const config::TrainingConfig& training, int64_t step, int64_t total_steps) {
  const double lr = training.learning_rate();
  const int64_t warmup = training.lr_warmup_steps();
  if (step < warmup) return lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const int64_t span = std::max<int64_t>(1, total_steps - warmup - 1);
  const double progress = std::min(1.0, static_cast<double>(step - warmup) / static_cast<double>(span));
  const double floor = training.lr_final_fraction();
  switch (training.lr_schedule()) {
    case config::TrainingConfig::CONSTANT: return lr;
    case config::TrainingConfig::LINEAR: return lr * (1.0 - (1.0 - floor) * progress);
    case config::TrainingConfig::COSINE: return lr * (floor + (1.0 - floor) * 0.5 * (1.0 + std::cos(M_PI * progress)));
  }
  return lr;
}

struct Trainer::Impl {
  TrainerContext ctx;
  int rank = 0, world = 1;
  int id_table = -1, tag_table = -1;
  int64_t id_dim = 0, tag_dim = 0;
  std::unique_ptr<Catalogue> catalogue;
  std::unique_ptr<model::Model> model;
  std::unique_ptr<model::DenseAdam> optimizer;
  std::unique_ptr<data::SampleReader> reader;
  std::unique_ptr<StepBuilder> builder;
  // Set in async mode with a staleness bound >= 1 on a parameter-server store: the next batch's
  // rows are requested before the current step runs (PERSIA-style prefetch within the bound).
  ps::RemoteEmbeddingStore* remote = nullptr;
  // The reader's cursor before the prefetched batch was read: what a checkpoint must record.
  std::optional<data::ReaderCursor> cursor_before_prefetch;
  std::vector<int64_t> sorted_counts;  // for the popularity baseline
  int64_t step = 0;
  int64_t total_steps = 0;  // of the whole run (for the learning-rate schedule)
  int64_t skipped_steps = 0;
  std::vector<float> sync;
  std::ofstream metrics;
  // Per-epoch evaluation history (kept in checkpoints so a resumed run selects the same epoch).
  std::vector<EvalResult> validation, test;

  const config::JobConfig& cfg() const { return ctx.config; }
  absl::Time Deadline() const { return absl::Now() + absl::Seconds(cfg().cluster().timeout_s()); }

  absl::StatusOr<model::Rows> Pull(const StepInput& in, bool requires_grad) {
    model::Rows rows;
    rows.id_rows = at::empty({static_cast<int64_t>(in.id_keys.size()), id_dim}, at::kFloat);
    T2D_RETURN_IF_ERROR(ctx.store->Lookup(
        id_table, in.id_keys, absl::MakeSpan(rows.id_rows.data_ptr<float>(), static_cast<size_t>(rows.id_rows.numel()))));
    rows.id_rows.set_requires_grad(requires_grad);
    if (tag_table >= 0) {
      rows.tag_rows = at::empty({static_cast<int64_t>(in.tag_keys.size()), tag_dim}, at::kFloat);
      T2D_RETURN_IF_ERROR(ctx.store->Lookup(tag_table, in.tag_keys,
                                            absl::MakeSpan(rows.tag_rows.data_ptr<float>(),
                                                           static_cast<size_t>(rows.tag_rows.numel()))));
      rows.tag_rows.set_requires_grad(requires_grad);
    }
    return rows;
  }

  absl::Status Push(int table, const std::vector<int64_t>& keys, const at::Tensor& rows, bool skip) {
    if (table < 0) return absl::OkStatus();
    if (skip || !rows.grad().defined()) {
      // Every worker pushes every step (the servers count pushes per step in sync mode).
      return ctx.store->ApplyGradients(table, {}, {});
    }
    at::Tensor g = rows.grad().mul(1.0 / world).contiguous();
    return ctx.store->ApplyGradients(table, keys,
                                     absl::MakeConstSpan(g.data_ptr<float>(), static_cast<size_t>(g.numel())));
  }

  absl::Status CheckReplicas() {
    const auto params = model->DenseParameters();
    uint32_t crc = Crc32(params.data(), params.size() * sizeof(float));
    uint32_t root_crc = crc;
    T2D_RETURN_IF_ERROR(ctx.workers->Broadcast(&root_crc, sizeof(root_crc), 0, Deadline()));
    float mismatch = root_crc != crc ? 1.0f : 0.0f;
    T2D_RETURN_IF_ERROR(ctx.workers->AllReduceSum(absl::MakeSpan(&mismatch, 1), Deadline()));
    if (mismatch > 0) {
      return absl::InternalError(absl::StrFormat(
          "dense replicas diverged at step %d: %d worker(s) differ from worker 0 (this worker's checksum %08x, "
          "worker 0's %08x)", step, static_cast<int>(mismatch), crc, root_crc));
    }
    return absl::OkStatus();
  }

  // One training step on `batch`. Returns the worker-averaged losses.
  // A step whose input is built and whose rows are requested (or, without prefetching, not yet).
  struct Prepared {
    StepInput in;
    uint64_t seed = 0;
    bool pulled = false;  // rows requested with tickets (async prefetch)
    ps::RemoteEmbeddingStore::Ticket id_ticket = 0, tag_ticket = 0;
  };

  // Builds the input of global step `at` from `batch` and, when prefetching, sends its pulls.
  absl::Status Prepare(const data::Batch& batch, int64_t at, Prepared* p) {
    p->seed = HashCombine(cfg().training().seed(), HashCombine(static_cast<uint64_t>(at), static_cast<uint64_t>(rank)));
    T2D_RETURN_IF_ERROR(builder->BuildTraining(batch, p->seed, &p->in));
    p->pulled = false;
    if (remote != nullptr) {
      T2D_ASSIGN_OR_RETURN(p->id_ticket, remote->Pull(id_table, p->in.id_keys));
      if (tag_table >= 0) {
        T2D_ASSIGN_OR_RETURN(p->tag_ticket, remote->Pull(tag_table, p->in.tag_keys));
      }
      p->pulled = true;
    }
    return absl::OkStatus();
  }

  absl::StatusOr<model::Rows> Rows(Prepared& p) {
    if (!p.pulled) return Pull(p.in, true);
    model::Rows rows;
    rows.id_rows = at::empty({static_cast<int64_t>(p.in.id_keys.size()), id_dim}, at::kFloat);
    T2D_RETURN_IF_ERROR(remote->Wait(p.id_ticket, absl::MakeSpan(rows.id_rows.data_ptr<float>(),
                                                                 static_cast<size_t>(rows.id_rows.numel()))));
    rows.id_rows.set_requires_grad(true);
    if (tag_table >= 0) {
      rows.tag_rows = at::empty({static_cast<int64_t>(p.in.tag_keys.size()), tag_dim}, at::kFloat);
      T2D_RETURN_IF_ERROR(remote->Wait(p.tag_ticket, absl::MakeSpan(rows.tag_rows.data_ptr<float>(),
                                                                    static_cast<size_t>(rows.tag_rows.numel()))));
      rows.tag_rows.set_requires_grad(true);
    }
    p.pulled = false;
    return rows;
  }

  // One training step on a prepared input. Returns the worker-averaged losses.
  absl::StatusOr<model::Model::Losses> Step(Prepared& p) {
    StepInput& in = p.in;
    const uint64_t seed = p.seed;
    T2D_ASSIGN_OR_RETURN(model::Rows rows, Rows(p));
    model->ZeroGradients();
    auto losses = model->ForwardBackward(in.batch, rows, in.candidates, HashCombine(seed, 0x6e6f697365ULL));
    if (!losses.ok()) return losses.status();
    // One allreduce: [dense grads | total, tower, diffusion loss | non-finite flag].
    const auto grads = model->DenseGradients();
    sync.resize(grads.size() + 4);
    std::copy(grads.begin(), grads.end(), sync.begin());
    const bool finite = std::isfinite(losses->total) &&
                        std::all_of(grads.begin(), grads.end(), [](float g) { return std::isfinite(g); });
    float* tail = sync.data() + grads.size();
    tail[0] = finite ? static_cast<float>(losses->total) : 0.f;
    tail[1] = finite ? static_cast<float>(losses->tower) : 0.f;
    tail[2] = finite ? static_cast<float>(losses->diffusion) : 0.f;
    tail[3] = finite ? 0.f : 1.f;
    T2D_RETURN_IF_ERROR(ctx.workers->AllReduceSum(absl::MakeSpan(sync), Deadline()));
    const float bad_workers = tail[3];
    const bool skip = bad_workers > 0;
    if (skip) {
      if (cfg().training().nonfinite_policy() == config::TrainingConfig::STOP) {
        return absl::InternalError(absl::StrFormat(
            "non-finite loss or dense gradient on %d worker(s) at step %d (this worker: loss %g); stopping as "
            "training.nonfinite_policy = STOP says (SKIP would skip such steps)", static_cast<int>(bad_workers), step,
            losses->total));
      }
      ++skipped_steps;
      if (rank == 0) LOG(WARNING) << "step " << step << ": non-finite loss or gradient on " << bad_workers
                                  << " worker(s); step skipped on every worker (nonfinite_policy = SKIP)";
    }
    T2D_RETURN_IF_ERROR(Push(id_table, in.id_keys, rows.id_rows, skip));
    T2D_RETURN_IF_ERROR(Push(tag_table, in.tag_keys, rows.tag_rows, skip));
    if (!skip) {
      optimizer->set_learning_rate(static_cast<float>(LearningRateAt(cfg().training(), step, total_steps)));
      const float inv = 1.0f / static_cast<float>(world);
      for (size_t i = 0; i < grads.size(); ++i) sync[i] *= inv;
      optimizer->Step(model->DenseParameters(), absl::MakeConstSpan(sync.data(), grads.size()));
    }
    ++step;
    const int every = cfg().training().replica_check_steps();
    if (every > 0 && step % every == 0) T2D_RETURN_IF_ERROR(CheckReplicas());
    model::Model::Losses avg;
    avg.total = tail[0] / world;
    avg.tower = tail[1] / world;
    avg.diffusion = tail[2] / world;
    return avg;
  }

  // Item vectors of the whole catalogue [N, E]: each worker computes a slice, one allreduce.
  absl::StatusOr<at::Tensor> CatalogueVectors() {
    const int64_t n = catalogue->size();
    const int64_t e = model->output_dim();
    const int64_t begin = n * rank / world, end = n * (rank + 1) / world;
    at::Tensor all = at::zeros({n, e}, at::kFloat);
    if (end > begin) {
      StepInput in;
      builder->BuildCatalogue(begin, end, &in);
      T2D_ASSIGN_OR_RETURN(model::Rows rows, Pull(in, false));
      T2D_ASSIGN_OR_RETURN(at::Tensor v, model->ItemVectors(in.candidates.items, rows));
      all.narrow(0, begin, end - begin).copy_(v);
    }
    T2D_RETURN_IF_ERROR(ctx.workers->AllReduceSum(
        absl::MakeSpan(all.data_ptr<float>(), static_cast<size_t>(all.numel())), Deadline()));
    return all;
  }

  int64_t PopularityRank(int64_t item_index) const {
    const int64_t c = catalogue->counts()[static_cast<size_t>(item_index)];
    // sorted_counts is descending: items strictly more popular come before the first c.
    const auto it = std::lower_bound(sorted_counts.begin(), sorted_counts.end(), c, std::greater<int64_t>());
    return 1 + static_cast<int64_t>(it - sorted_counts.begin());
  }

  absl::StatusOr<EvalResult> Evaluate(const std::string& split, const std::string& dump_path = "") {
    const auto start = Clock::now();
    std::ofstream dump;
    if (!dump_path.empty()) {
      const std::string path = world > 1 ? absl::StrCat(dump_path, ".w", rank) : dump_path;
      dump.open(path, std::ios::trunc);
      if (!dump) return absl::InternalError(absl::StrCat(path, ": cannot create"));
    }
    EvalResult result;
    result.split = split;
    result.model = RankingMetrics(EvalKs(cfg().eval()));
    result.popularity = RankingMetrics(EvalKs(cfg().eval()));
    T2D_ASSIGN_OR_RETURN(at::Tensor items, CatalogueVectors());
    data::ReaderOptions ro;
    ro.split = split;
    ro.rank = rank;
    ro.world_size = world;
    ro.batch_size = cfg().eval().batch_size();
    ro.max_seq_len = cfg().data().max_seq_len();
    ro.shuffle_buffer = 0;
    ro.epochs = 1;
    ro.equal_epochs = false;
    auto reader_or = data::SampleReader::Open(cfg().data().dataset_dir(), ro);
    if (!reader_or.ok()) return reader_or.status();
    auto eval_reader = *std::move(reader_or);
    data::Batch batch;
    model::InferenceOptions io;
    constexpr int64_t kItemBlock = 65536;
    while (true) {
      T2D_ASSIGN_OR_RETURN(bool more, eval_reader->Next(&batch));
      if (!more) break;
      StepInput in;
      T2D_RETURN_IF_ERROR(builder->BuildUsers(batch, &in));
      T2D_ASSIGN_OR_RETURN(model::Rows rows, Pull(in, false));
      io.sample_seeds.resize(static_cast<size_t>(batch.size));
      for (int b = 0; b < batch.size; ++b) {
        io.sample_seeds[static_cast<size_t>(b)] = EvalSampleSeed(cfg().eval().seed(), batch.user_id[static_cast<size_t>(b)]);
      }
      T2D_ASSIGN_OR_RETURN(at::Tensor users, model->UserVectors(in.batch, rows, io));
      c10::InferenceMode guard;
      std::vector<int64_t> target_index(static_cast<size_t>(batch.size));
      for (int b = 0; b < batch.size; ++b) {
        const int64_t idx = catalogue->IndexOf(batch.target_id[static_cast<size_t>(b)]);
        if (idx < 0) {
          return absl::InvalidArgumentError(absl::StrCat("evaluation target ", batch.target_id[static_cast<size_t>(b)],
                                                         " of split ", split, " is not in the catalogue"));
        }
        target_index[static_cast<size_t>(b)] = idx;
      }
      // The target's score is read from the same matmul that scores every other item (a
      // separately computed dot product can differ in the last bit and miscount ties).
      std::vector<float> target_score(static_cast<size_t>(batch.size));
      for (int64_t lo = 0; lo < items.size(0); lo += kItemBlock) {
        const int64_t len = std::min(kItemBlock, items.size(0) - lo);
        at::Tensor scores = at::matmul(users, items.narrow(0, lo, len).t()).contiguous();
        const float* sc = scores.data_ptr<float>();
        for (int b = 0; b < batch.size; ++b) {
          const int64_t ti = target_index[static_cast<size_t>(b)];
          if (ti >= lo && ti < lo + len) target_score[static_cast<size_t>(b)] = sc[b * len + (ti - lo)];
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
      for (int b = 0; b < batch.size; ++b) {
        result.model.Add(1 + h[b]);
        if (dump.is_open()) {
          // user target rank | history, oldest first
          dump << batch.user_id[static_cast<size_t>(b)] << ' ' << batch.target_id[static_cast<size_t>(b)] << ' '
               << 1 + h[b] << " |";
          for (int j = 0; j < batch.history_len[static_cast<size_t>(b)]; ++j) {
            dump << ' ' << batch.history_id[static_cast<size_t>(b) * static_cast<size_t>(batch.max_seq_len) + static_cast<size_t>(j)];
          }
          dump << '\n';
        }
        result.popularity.Add(PopularityRank(target_index[static_cast<size_t>(b)]));
      }
    }
    for (RankingMetrics* m : {&result.model, &result.popularity}) {
      auto sums = m->Sums();
      T2D_RETURN_IF_ERROR(ctx.workers->AllReduceSum(absl::MakeSpan(sums), Deadline()));
      m->SetSums(sums);
    }
    result.seconds = Seconds(start);
    return result;
  }

  void WriteMetric(const std::string& json) {
    if (metrics.is_open()) metrics << json << "\n" << std::flush;
  }

  // --- Checkpoints -----------------------------------------------------------------------

  std::string EvalHistory() const {
    std::string out;
    for (const auto* list : {&validation, &test}) {
      for (const auto& r : *list) {
        absl::StrAppend(&out, r.split);
        for (double v : r.model.Sums()) absl::StrAppendFormat(&out, " %.17g", v);
        absl::StrAppend(&out, " |");
        for (double v : r.popularity.Sums()) absl::StrAppendFormat(&out, " %.17g", v);
        absl::StrAppend(&out, "\n");
      }
    }
    return out;
  }

  absl::Status LoadEvalHistory(const std::string& text) {
    validation.clear();
    test.clear();
    for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
      std::vector<std::string> halves = absl::StrSplit(line, '|');
      std::vector<std::string> a = absl::StrSplit(halves[0], ' ', absl::SkipEmpty());
      if (halves.size() != 2 || a.empty()) return absl::DataLossError(absl::StrCat("bad evaluation history line: ", line));
      EvalResult r;
      r.split = a[0];
      r.model = RankingMetrics(EvalKs(cfg().eval()));
      r.popularity = RankingMetrics(EvalKs(cfg().eval()));
      std::vector<double> m, p;
      for (size_t i = 1; i < a.size(); ++i) m.push_back(std::stod(a[i]));
      for (absl::string_view v : absl::StrSplit(halves[1], ' ', absl::SkipEmpty())) p.push_back(std::stod(std::string(v)));
      if (m.size() != r.model.Sums().size() || p.size() != m.size()) {
        return absl::DataLossError("evaluation history does not match eval.k");
      }
      r.model.SetSums(m);
      r.popularity.SetSums(p);
      (r.split == "test" ? test : validation).push_back(std::move(r));
    }
    return absl::OkStatus();
  }

  absl::Status SaveCheckpoint(int epoch) {
    const std::string& dir = cfg().checkpoint().dir();
    if (dir.empty()) return absl::OkStatus();
    const auto start = Clock::now();
    const std::string staging = StagingDir(dir, step);
    if (rank == 0) T2D_RETURN_IF_ERROR(PrepareStaging(dir, step));
    T2D_RETURN_IF_ERROR(ctx.workers->Barrier(Deadline()));
    if (rank == 0) {
      std::error_code ec;
      fs::create_directories(staging + "/sparse", ec);
      T2D_RETURN_IF_ERROR(ctx.store->Save(staging + "/sparse"));
      T2D_RETURN_IF_ERROR(model::SaveDenseState(staging + "/dense.t2dd", *model, optimizer.get()));
      T2D_RETURN_IF_ERROR(WriteFileAtomic(staging + "/evals.txt", EvalHistory()));
    }
    const auto cursor = cursor_before_prefetch ? *cursor_before_prefetch : reader->cursor();
    T2D_RETURN_IF_ERROR(WriteFileAtomic(absl::StrCat(staging, "/cursor-", rank, ".txt"),
                                        absl::StrCat(cursor.Serialize(), "\n", step, " ", skipped_steps, "\n")));
    T2D_RETURN_IF_ERROR(ctx.workers->Barrier(Deadline()));
    if (rank == 0) {
      CheckpointManifest m;
      m.set_epoch(epoch);
      m.set_num_workers(world);
      m.set_num_servers(cfg().cluster().num_servers());
      T2D_ASSIGN_OR_RETURN(std::string path, Commit(dir, step, m, cfg().checkpoint().keep_last()));
      LOG(INFO) << "checkpoint written: path=" << path << " step=" << step
                << absl::StrFormat(" ms=%.0f", 1000 * Seconds(start));
    }
    return ctx.workers->Barrier(Deadline());
  }

  // Loads the newest intact checkpoint. `for_training`: also the data cursors and counters
  // (which needs the same number of workers); otherwise only the model (eval, export).
  absl::Status Resume(bool for_training) {
    const std::string& dir = cfg().checkpoint().dir();
    if (dir.empty()) return absl::FailedPreconditionError("no checkpoint.dir to load a checkpoint from");
    auto folder = FindLatestCheckpoint(dir);
    if (!folder.ok()) {
      if (!for_training) return folder.status();
      if (rank == 0) LOG(INFO) << "no checkpoint to resume from in " << dir << "; starting fresh";
      return absl::OkStatus();
    }
    T2D_ASSIGN_OR_RETURN(CheckpointManifest m, VerifyCheckpoint(*folder));
    if (for_training && m.num_workers() != world) {
      return absl::FailedPreconditionError(absl::StrCat(*folder, ": written by ", m.num_workers(),
                                                        " workers; resume with the same number (this job has ", world, ")"));
    }
    if (rank == 0) T2D_RETURN_IF_ERROR(ctx.store->Load(*folder + "/sparse"));
    T2D_RETURN_IF_ERROR(model::LoadDenseState(*folder + "/dense.t2dd", model.get(), optimizer.get()));
    if (!for_training) {
      step = m.step();
      T2D_RETURN_IF_ERROR(ctx.workers->Barrier(Deadline()));
      if (rank == 0) LOG(INFO) << "loaded model of step " << step << " from " << *folder;
      return absl::OkStatus();
    }
    T2D_ASSIGN_OR_RETURN(std::string evals, ReadFileToString(*folder + "/evals.txt"));
    T2D_RETURN_IF_ERROR(LoadEvalHistory(evals));
    const std::string cursor_path = absl::StrCat(*folder, "/cursor-", rank, ".txt");
    T2D_ASSIGN_OR_RETURN(std::string text, ReadFileToString(cursor_path));
    std::vector<std::string> lines = absl::StrSplit(text, '\n');
    std::vector<std::string> counters = lines.size() > 1 ? absl::StrSplit(lines[1], ' ') : std::vector<std::string>{};
    auto cursor = data::ReaderCursor::Parse(lines[0]);
    if (!cursor.ok() || counters.size() != 2 || !absl::SimpleAtoi(counters[0], &step) ||
        !absl::SimpleAtoi(counters[1], &skipped_steps)) {
      return absl::DataLossError(absl::StrCat(cursor_path, ": malformed cursor file"));
    }
    T2D_RETURN_IF_ERROR(reader->Restore(*cursor));
    T2D_RETURN_IF_ERROR(ctx.workers->Barrier(Deadline()));
    if (rank == 0) LOG(INFO) << "resumed from " << *folder << " at step " << step;
    return absl::OkStatus();
  }
};

Trainer::Trainer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Trainer::~Trainer() = default;
int64_t Trainer::step() const { return impl_->step; }

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const TrainerContext& context) {
  auto impl = std::make_unique<Impl>();
  impl->ctx = context;
  // Intra-op threads of this worker (torch's own default here is 1, whatever the core count).
  at::set_num_threads(context.config.cluster().torch_threads());
  Impl& t = *impl;
  const auto& cfg = context.config;
  t.rank = context.workers->rank();
  t.world = context.workers->size();
  t.id_table = config::FindTable(cfg, cfg.model().item_id_table());
  t.tag_table = cfg.model().item_tag_table().empty() ? -1 : config::FindTable(cfg, cfg.model().item_tag_table());
  if (t.id_table < 0) return absl::InvalidArgumentError("model.item_id_table names no table");
  t.id_dim = cfg.tables(t.id_table).dim();
  t.tag_dim = t.tag_table >= 0 ? cfg.tables(t.tag_table).dim() : 0;
  if (cfg.data().dataset_dir().empty()) return absl::InvalidArgumentError("data.dataset_dir is empty: run `t2diff prepare` first");
  T2D_ASSIGN_OR_RETURN(t.catalogue, Catalogue::Load(cfg.data().dataset_dir()));
  if (!t.catalogue->has_counts()) {
    // Popularity (for the baseline and for sampling negatives) from the training targets.
    data::ReaderOptions co;
    co.split = "train";
    co.batch_size = 4096;
    co.max_seq_len = 1;
    co.shuffle_buffer = 0;
    co.epochs = 1;
    co.equal_epochs = false;
    T2D_ASSIGN_OR_RETURN(auto counter, data::SampleReader::Open(cfg.data().dataset_dir(), co));
    std::vector<int64_t> counts(static_cast<size_t>(t.catalogue->size()));
    data::Batch b;
    while (true) {
      T2D_ASSIGN_OR_RETURN(bool more, counter->Next(&b));
      if (!more) break;
      for (int i = 0; i < b.size; ++i) {
        const int64_t idx = t.catalogue->IndexOf(b.target_id[static_cast<size_t>(i)]);
        if (idx >= 0) ++counts[static_cast<size_t>(idx)];
      }
    }
    t.catalogue->SetCounts(std::move(counts));
  }
  t.sorted_counts = t.catalogue->counts();
  std::sort(t.sorted_counts.begin(), t.sorted_counts.end(), std::greater<int64_t>());
  T2D_ASSIGN_OR_RETURN(model::ModelDims dims, model::DimsFromJobConfig(cfg));
  T2D_ASSIGN_OR_RETURN(t.model, model::Model::Create(cfg.model(), dims));
  model::DenseAdamOptions opt;
  opt.learning_rate = cfg.training().learning_rate();
  opt.clip_norm = cfg.training().grad_clip_norm();
  t.optimizer = std::make_unique<model::DenseAdam>(t.model->DenseParameters().size(), opt);
  StepBuilder::Options so;
  so.full_softmax = cfg.model().loss() == config::ModelConfig::FULL_SOFTMAX;
  so.num_negatives = cfg.model().num_negatives();
  so.use_tags = t.tag_table >= 0;
  so.time_lags = cfg.model().time_lag_feature();
  so.time_gap_sessions = cfg.data().session_mode() == config::DataConfig::TIME_GAP;
  t.builder = std::make_unique<StepBuilder>(t.catalogue.get(), so);
  if (cfg.cluster().consistency() == config::ClusterConfig::ASYNC && cfg.cluster().staleness() >= 1) {
    t.remote = dynamic_cast<ps::RemoteEmbeddingStore*>(context.store);
  }

  data::ReaderOptions ro;
  ro.split = "train";
  ro.rank = t.rank;
  ro.world_size = t.world;
  ro.batch_size = cfg.training().batch_size();
  ro.max_seq_len = cfg.data().max_seq_len();
  ro.shuffle_buffer = cfg.data().shuffle_buffer();
  ro.seed = cfg.data().seed();
  ro.epochs = cfg.training().epochs();
  ro.equal_epochs = true;
  T2D_ASSIGN_OR_RETURN(t.reader, data::SampleReader::Open(cfg.data().dataset_dir(), ro));
  if (t.reader->samples_per_epoch() == 0) {
    return absl::FailedPreconditionError(absl::StrCat("worker ", t.rank, " has no training samples in ",
                                                      cfg.data().dataset_dir(), " (fewer shards than workers?)"));
  }
  // All workers start from worker 0's dense parameters (identical anyway for a fixed seed).
  auto params = t.model->DenseParameters();
  T2D_RETURN_IF_ERROR(context.workers->Broadcast(params.data(), params.size() * sizeof(float), 0, t.Deadline()));
  if (t.rank == 0 && !context.output_dir.empty()) {
    std::error_code ec;
    fs::create_directories(context.output_dir, ec);
    t.metrics.open(context.output_dir + "/metrics.jsonl", context.resume ? std::ios::app : std::ios::trunc);
    if (!t.metrics) return absl::InternalError(absl::StrCat(context.output_dir, "/metrics.jsonl: cannot open"));
  }
  return std::unique_ptr<Trainer>(new Trainer(std::move(impl)));
}

absl::StatusOr<EvalResult> Trainer::Evaluate(const std::string& split, const std::string& dump_path) {
  return impl_->Evaluate(split, dump_path);
}
absl::Status Trainer::LoadLatestModel() { return impl_->Resume(false); }

absl::StatusOr<TrainResult> Trainer::Train() {
  Impl& t = *impl_;
  const auto& cfg = t.cfg();
  if (t.ctx.resume) T2D_RETURN_IF_ERROR(t.Resume(true));
  const int64_t batch = cfg.training().batch_size();
  const int64_t steps_per_epoch = (t.reader->samples_per_epoch() + batch - 1) / batch;
  const int epochs = cfg.training().epochs();
  const int64_t total_steps = cfg.training().max_steps() > 0
                                  ? std::min<int64_t>(cfg.training().max_steps(), steps_per_epoch * epochs)
                                  : steps_per_epoch * epochs;
  const int main_k = MainK(cfg.eval());
  // The schedule spans the configured epochs, so a run cut by max_steps and resumed follows it.
  t.total_steps = steps_per_epoch * epochs;
  TrainResult result;
  if (t.rank == 0) {
    LOG(INFO) << "training: workers=" << t.world << " samples_per_worker_epoch=" << t.reader->samples_per_epoch()
              << " steps_per_epoch=" << steps_per_epoch << " epochs=" << epochs << " total_steps=" << total_steps
              << " dense_params=" << t.model->DenseParameters().size() << " catalogue=" << t.catalogue->size();
  }
  const bool tty = isatty(STDERR_FILENO) != 0;
  const auto start = Clock::now();
  auto interval_start = Clock::now();
  int64_t interval_steps = 0;
  double interval_loss = 0, interval_tower = 0, interval_diff = 0;
  int64_t trained_steps = 0;
  double step_seconds = 0;  // reading + training steps only (no evaluation or checkpoints)
  // Evaluation and checkpoint time, reported beside the training time.
  double other_seconds = 0;
  data::Batch batch_data;
  Impl::Prepared current, next;
  bool have_next = false;
  while (t.step < total_steps) {
    const int epoch = static_cast<int>(t.step / steps_per_epoch);
    const auto step_start = Clock::now();
    if (!have_next) {
      T2D_ASSIGN_OR_RETURN(bool more, t.reader->Next(&batch_data));
      if (!more) break;
      T2D_RETURN_IF_ERROR(t.Prepare(batch_data, t.step, &next));
    }
    std::swap(current, next);
    have_next = false;
    t.cursor_before_prefetch.reset();
    if (t.remote != nullptr && t.step + 1 < total_steps) {
      // Request the following batch's rows now; they arrive while this step computes.
      t.cursor_before_prefetch = t.reader->cursor();
      T2D_ASSIGN_OR_RETURN(bool more, t.reader->Next(&batch_data));
      if (more) {
        T2D_RETURN_IF_ERROR(t.Prepare(batch_data, t.step + 1, &next));
        have_next = true;
      } else {
        t.cursor_before_prefetch.reset();
      }
    }
    T2D_ASSIGN_OR_RETURN(model::Model::Losses l, t.Step(current));
    step_seconds += Seconds(step_start);
    ++trained_steps;
    if (result.first_loss == 0) result.first_loss = l.total;
    result.last_loss = l.total;
    interval_loss += l.total;
    interval_tower += l.tower;
    interval_diff += l.diffusion;
    ++interval_steps;
    const bool epoch_end = t.step % steps_per_epoch == 0 || t.step == total_steps;
    if (t.rank == 0 && (t.step % cfg.training().log_every_steps() == 0 || epoch_end)) {
      const double secs = Seconds(interval_start);
      const double sps = static_cast<double>(interval_steps * batch * t.world) / std::max(secs, 1e-9);
      const double elapsed = Seconds(start);
      const double eta = elapsed / static_cast<double>(trained_steps) * static_cast<double>(total_steps - t.step);
      const std::string line = absl::StrFormat(
          "epoch %d step %d/%d samples/s %.0f loss %.4f tower %.4f diffusion %.4f eta %.0fs", epoch + 1, t.step,
          total_steps, sps, interval_loss / interval_steps, interval_tower / interval_steps,
          interval_diff / interval_steps, eta);
      if (tty) {
        const int width = 30;
        const int done = static_cast<int>(width * t.step / std::max<int64_t>(total_steps, 1));
        std::fprintf(stderr, "\r[%s%s] %s", std::string(static_cast<size_t>(done), '#').c_str(),
                     std::string(static_cast<size_t>(width - done), '.').c_str(), line.c_str());
        if (epoch_end) std::fprintf(stderr, "\n");
      } else {
        LOG(INFO) << line;
      }
      t.WriteMetric(absl::StrFormat(
          "{\"kind\": \"train\", \"epoch\": %d, \"step\": %d, \"samples_per_s\": %.1f, \"loss\": %.6f, "
          "\"tower_loss\": %.6f, \"diffusion_loss\": %.6f}",
          epoch + 1, t.step, sps, interval_loss / interval_steps, interval_tower / interval_steps,
          interval_diff / interval_steps));
      interval_start = Clock::now();
      interval_steps = 0;
      interval_loss = interval_tower = interval_diff = 0;
    }
    if (t.step % steps_per_epoch == 0 || (t.step == total_steps && total_steps == steps_per_epoch * epochs)) {
      const int done_epochs = static_cast<int>((t.step + steps_per_epoch - 1) / steps_per_epoch);
      if (done_epochs % cfg.eval().every_epochs() == 0 || t.step == total_steps) {
        const auto eval_start = Clock::now();
        for (const char* split : {"valid", "test"}) {
          T2D_ASSIGN_OR_RETURN(EvalResult r, t.Evaluate(split));
          if (t.rank == 0 && (std::string(split) == "valid" || cfg.eval().paper_protocol())) {
            LOG(INFO) << "epoch " << done_epochs << " " << split << " (" << r.model.count() << " users, "
                      << absl::StrFormat("%.1fs", r.seconds) << "): " << r.model.ToString();
          }
          t.WriteMetric(absl::StrFormat("{\"kind\": \"eval\", \"split\": \"%s\", \"epoch\": %d, \"step\": %d, \"users\": %d%s}",
                                        split, done_epochs, t.step, r.model.count(), JsonMetrics(r.model)));
          (std::string(split) == "valid" ? t.validation : t.test).push_back(std::move(r));
        }
        other_seconds += Seconds(eval_start);
        interval_start = Clock::now();  // the next progress interval measures training only
      }
    }
    const int64_t every = cfg.checkpoint().every_steps();
    if ((every > 0 && t.step % every == 0) || t.step == total_steps) {
      const auto save_start = Clock::now();
      T2D_RETURN_IF_ERROR(t.SaveCheckpoint(static_cast<int>(t.step / steps_per_epoch)));
      other_seconds += Seconds(save_start);
      interval_start = Clock::now();
    }
  }
  result.train_seconds = Seconds(start);
  result.eval_seconds = other_seconds;
  result.steps = t.step;
  result.samples_per_second = static_cast<double>(trained_steps * batch * t.world) / std::max(step_seconds, 1e-9);
  result.validation = t.validation;
  // Select the epoch on validation; without validation samples, the last evaluation.
  int best = static_cast<int>(t.test.size()) - 1;
  bool have_validation = !t.validation.empty() && t.validation.front().model.count() > 0;
  if (have_validation) {
    for (size_t i = 0; i < t.validation.size(); ++i) {
      if (t.validation[i].model.Recall(main_k) > t.validation[static_cast<size_t>(best)].model.Recall(main_k)) {
        best = static_cast<int>(i);
      }
    }
  }
  result.best_epoch = best;
  if (best >= 0) result.test = t.test[static_cast<size_t>(best)];
  for (int k : EvalKs(cfg.eval())) {
    double m = 0;
    for (const auto& r : t.test) m = std::max(m, r.model.Recall(k));
    result.test_best_over_epochs.push_back(m);
  }
  if (t.rank == 0 && best >= 0) {
    LOG(INFO) << "test at the " << (have_validation ? "validation-selected" : "last (no validation split)")
              << " evaluation " << best + 1 << " (" << result.test.model.count() << " users): " << result.test.model.ToString();
    LOG(INFO) << "popularity baseline on test: " << result.test.popularity.ToString();
    if (cfg.eval().paper_protocol()) {
      std::string line;
      const auto ks = EvalKs(cfg.eval());
      for (size_t i = 0; i < ks.size(); ++i) absl::StrAppendFormat(&line, " Recall@%d=%.4f", ks[i], result.test_best_over_epochs[i]);
      LOG(INFO) << "paper protocol (best test value over epochs, optimistic):" << line;
    }
  }
  if (t.rank == 0) {
    std::string summary = absl::StrFormat(
        "{\"kind\": \"summary\", \"steps\": %d, \"skipped_steps\": %d, \"workers\": %d, \"train_seconds\": %.2f, "
        "\"eval_seconds\": %.2f, \"step_seconds\": %.2f, \"samples_per_s\": %.1f, \"first_loss\": %.6f, \"last_loss\": %.6f",
        result.steps, t.skipped_steps, t.world, result.train_seconds, result.eval_seconds, step_seconds, result.samples_per_second,
        result.first_loss, result.last_loss);
    if (best >= 0) {
      absl::StrAppendFormat(&summary, ", \"best_epoch\": %d, \"selected_on\": \"%s\", \"test_users\": %d%s, \"popularity\": {\"users\": %d%s}",
                            best + 1, have_validation ? "validation" : "last", result.test.model.count(),
                            JsonMetrics(result.test.model), result.test.popularity.count(), JsonMetrics(result.test.popularity));
      if (cfg.eval().paper_protocol()) {
        const auto ks = EvalKs(cfg.eval());
        absl::StrAppend(&summary, ", \"paper_protocol_best_test_recall\": {");
        for (size_t i = 0; i < ks.size(); ++i) {
          absl::StrAppendFormat(&summary, "%s\"%d\": %.6f", i ? ", " : "", ks[i], result.test_best_over_epochs[i]);
        }
        absl::StrAppend(&summary, "}");
      }
    }
    summary += "}";
    t.WriteMetric(summary);
    if (!t.ctx.output_dir.empty()) T2D_RETURN_IF_ERROR(WriteFileAtomic(t.ctx.output_dir + "/summary.json", summary + "\n"));
  }
  return result;
}

absl::Status Trainer::Export(const std::string& dir) {
  Impl& t = *impl_;
  const auto start = Clock::now();
  T2D_ASSIGN_OR_RETURN(at::Tensor vectors, t.CatalogueVectors());
  if (t.rank == 0) {
    std::error_code ec;
    fs::remove_all(dir, ec);
    fs::create_directories(dir, ec);
    if (ec) return absl::InternalError(absl::StrCat(dir, ": cannot create: ", ec.message()));
    StepInput in;
    t.builder->BuildCatalogue(0, t.catalogue->size(), &in);
    T2D_ASSIGN_OR_RETURN(model::Rows rows, t.Pull(in, false));
    const int64_t n = t.catalogue->size();
    T2D_RETURN_IF_ERROR(WriteNpy(dir + "/item_ids.npy", t.catalogue->ids(), {n}));
    T2D_RETURN_IF_ERROR(WriteNpy(dir + "/item_vectors.npy",
                                 absl::MakeConstSpan(vectors.data_ptr<float>(), static_cast<size_t>(vectors.numel())),
                                 {n, vectors.size(1)}));
    T2D_RETURN_IF_ERROR(WriteNpy(dir + "/id_keys.npy", in.id_keys, {static_cast<int64_t>(in.id_keys.size())}));
    T2D_RETURN_IF_ERROR(WriteNpy(dir + "/id_rows.npy",
                                 absl::MakeConstSpan(rows.id_rows.data_ptr<float>(), static_cast<size_t>(rows.id_rows.numel())),
                                 {rows.id_rows.size(0), rows.id_rows.size(1)}));
    std::vector<int64_t> tag_offsets{0}, tags;
    for (int64_t i = 0; i < n; ++i) {
      const auto& it = t.catalogue->tags(i);
      tags.insert(tags.end(), it.begin(), it.end());
      tag_offsets.push_back(static_cast<int64_t>(tags.size()));
    }
    T2D_RETURN_IF_ERROR(WriteNpy(dir + "/item_tag_offsets.npy", tag_offsets, {n + 1}));
    T2D_RETURN_IF_ERROR(WriteNpy(dir + "/item_tags.npy", tags, {static_cast<int64_t>(tags.size())}));
    if (t.tag_table >= 0) {
      T2D_RETURN_IF_ERROR(WriteNpy(dir + "/tag_keys.npy", in.tag_keys, {static_cast<int64_t>(in.tag_keys.size())}));
      T2D_RETURN_IF_ERROR(WriteNpy(dir + "/tag_rows.npy",
                                   absl::MakeConstSpan(rows.tag_rows.data_ptr<float>(), static_cast<size_t>(rows.tag_rows.numel())),
                                   {rows.tag_rows.size(0), rows.tag_rows.size(1)}));
    }
    T2D_RETURN_IF_ERROR(model::SaveDenseState(dir + "/dense.t2dd", *t.model, nullptr));
    std::string text;
    google::protobuf::TextFormat::PrintToString(t.cfg(), &text);
    T2D_RETURN_IF_ERROR(WriteFileAtomic(dir + "/job.textproto", text));
    CheckpointManifest m;
    m.set_step(t.step);
    m.set_num_workers(t.world);
    T2D_RETURN_IF_ERROR(SealFolder(dir, m));
    LOG(INFO) << "export written: dir=" << dir << " items=" << n << " dim=" << vectors.size(1)
              << absl::StrFormat(" ms=%.0f", 1000 * Seconds(start));
  }
  return t.ctx.workers->Barrier(t.Deadline());
}

}  // namespace t2d::trainer
