#include "trainer/trainer.h"

#include <ATen/Parallel.h>
#include <glog/logging.h>

#include <sched.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <future>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "configs/config_loader.h"
#include "configs/job_options.h"
#include "data/catalogue.h"
#include "data/prepare.h"
#include "data/sample_reader.h"
#include "embedding/embedding_table.h"
#include "embedding/local_embedding_store.h"
#include "embedding/shard_file.h"
#include "model/dense_optimizer.h"
#include "model/model.h"
#include "serving/bundle_writer.h"
#include "trainer/evaluator.h"
#include "trainer/row_fetcher.h"
#include "trainer/run_report.h"
#include "trainer/run_state.h"
#include "model/step_builder.h"
#include "trainer/train_step.h"

namespace t2d::trainer {
namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); }
// cluster.parallel_branches as set; unset, on for a single process with in-process tables that
// may run on at least twice cluster.torch_threads cores (the second thread then has a core of
// its own; with parameter servers or several workers per host the cores are shared, so it stays
// off unless asked for). The gradients are the same bits either way (model/model.h).
bool ParallelBranches(const config::JobConfig& cfg, const RunContext& ctx) {
  if (cfg.cluster().has_parallel_branches()) return cfg.cluster().parallel_branches();
  if (ctx.world != 1 || dynamic_cast<const embedding::LocalEmbeddingStore*>(ctx.store) == nullptr) return false;
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  if (sched_getaffinity(0, sizeof(cpus), &cpus) != 0) return false;
  return CPU_COUNT(&cpus) >= 2 * cfg.cluster().torch_threads();
}

// CPU time of every thread of this process (the step's, the batch builder's, torch's).
double ProcessCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Progress of the current reporting interval (training steps only).
struct Interval {
  Clock::time_point start = Clock::now();
  int64_t steps = 0;
  double loss = 0, tower = 0, diffusion = 0;
  void Add(const model::Model::Losses& l) {
    ++steps;
    loss += l.total;
    tower += l.tower;
    diffusion += l.diffusion;
  }
  void Restart() { *this = Interval(); }
};

// eval.write_ranks: the ranks file of test evaluation `index` (0-based) of worker `rank`.
std::string RanksFile(const config::JobConfig& cfg, size_t index, int rank) {
  return absl::StrCat(cfg.training().output_dir(), "/ranks/test.", index + 1, ".w", rank, ".tsv");
}

}  // namespace

struct Trainer::Impl {
  TrainerContext tc;  // owns the config that ctx points at
  RunContext ctx;
  std::unique_ptr<data::Catalogue> catalogue;
  std::unique_ptr<model::Model> model;
  std::unique_ptr<model::DenseAdam> optimizer;
  std::unique_ptr<data::SampleReader> reader;
  std::unique_ptr<model::StepBuilder> builder;
  std::unique_ptr<RowFetcher> fetcher;
  std::unique_ptr<TrainStep> stepper;
  std::unique_ptr<Evaluator> evaluator;
  std::unique_ptr<RunState> state;
  std::unique_ptr<RunReport> report;  // worker 0 only
  // Async mode with a staleness bound >= 1: the next batch's rows are requested before the
  // current step runs (PERSIA-style prefetch within the bound).
  bool prefetch = false;

  const config::JobConfig& cfg() const { return tc.config; }
};

Trainer::Trainer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Trainer::~Trainer() = default;
int64_t Trainer::step() const { return impl_->state->step; }

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const TrainerContext& context) {
  auto impl = std::make_unique<Impl>();
  Impl& t = *impl;
  t.tc = context;
  const config::JobConfig& cfg = t.tc.config;
  // Intra-op threads of this worker (torch's own default here is 1, whatever the core count).
  at::set_num_threads(cfg.cluster().torch_threads());
  RunContext& ctx = t.ctx;
  ctx.config = &cfg;
  ctx.store = context.store;
  ctx.workers = context.workers;
  ctx.rank = context.workers->rank();
  ctx.world = context.workers->size();
  ctx.parallel_branches = ParallelBranches(cfg, ctx);
  ctx.id_table = config::FindTable(cfg, cfg.model().item_id_table());
  ctx.tag_table = cfg.model().item_tag_table().empty() ? -1 : config::FindTable(cfg, cfg.model().item_tag_table());
  ctx.user_table = cfg.model().user_id_table().empty() ? -1 : config::FindTable(cfg, cfg.model().user_id_table());
  ctx.user_feature_table =
      cfg.model().user_feature_table().empty() ? -1 : config::FindTable(cfg, cfg.model().user_feature_table());
  if (ctx.id_table < 0) return absl::InvalidArgumentError("model.item_id_table names no table");
  if (cfg.data().dataset_dir().empty()) return absl::InvalidArgumentError("data.dataset_dir is empty: run `t2diff prepare` first");
  T2D_ASSIGN_OR_RETURN(t.catalogue, data::Catalogue::Load(cfg.data().dataset_dir()));
  if (cfg.model().loss() == config::ModelConfig::FULL_SOFTMAX && t.catalogue->size() > cfg.model().full_softmax_max_items()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model.loss FULL_SOFTMAX over a catalogue of ", t.catalogue->size(), " items (",
        cfg.data().dataset_dir(), ") scores every item for every sample of every step; above "
        "model.full_softmax_max_items (", cfg.model().full_softmax_max_items(),
        ") use model.loss SAMPLED_SOFTMAX, or raise the limit"));
  }
  // The data set says how many profile fields the model reads (model.user_feature_table).
  T2D_ASSIGN_OR_RETURN(const data::DatasetManifest dataset, data::ReadManifest(cfg.data().dataset_dir()));
  T2D_ASSIGN_OR_RETURN(model::ModelDims dims, config::ModelDimsOf(cfg, dataset));
  T2D_ASSIGN_OR_RETURN(t.model, model::Model::Create(cfg.model(), dims));
  model::DenseAdamOptions opt;
  opt.learning_rate = cfg.training().learning_rate();
  opt.clip_norm = cfg.training().grad_clip_norm();
  t.optimizer = std::make_unique<model::DenseAdam>(t.model->DenseParameters().size(), opt);
  t.builder = std::make_unique<model::StepBuilder>(t.catalogue.get(), config::StepBuilderOptionsOf(cfg));
  t.prefetch = cfg.cluster().consistency() == config::ClusterConfig::ASYNC && cfg.cluster().staleness() >= 1;
  t.fetcher = std::make_unique<RowFetcher>(&ctx);
  t.stepper = std::make_unique<TrainStep>(&ctx, t.model.get(), t.optimizer.get(), t.builder.get(), t.fetcher.get());
  t.evaluator = std::make_unique<Evaluator>(&ctx, t.model.get(), t.builder.get(), t.fetcher.get(), t.catalogue.get());
  t.state = std::make_unique<RunState>(&ctx, t.model.get(), t.optimizer.get());
  T2D_ASSIGN_OR_RETURN(t.reader, data::SampleReader::Open(cfg.data().dataset_dir(),
                                                          config::ReaderOptionsOf(cfg, "train", ctx.rank, ctx.world)));
  if (t.reader->samples_per_epoch() == 0) {
    return absl::FailedPreconditionError(absl::StrCat("worker ", ctx.rank, " has no training samples in ",
                                                      cfg.data().dataset_dir(), " (fewer shards than workers?)"));
  }
  // All workers start from worker 0's dense parameters (identical anyway for a fixed seed).
  auto params = t.model->DenseParameters();
  T2D_RETURN_IF_ERROR(ctx.workers->Broadcast(params.data(), params.size() * sizeof(float), 0, ctx.Deadline()));
  return std::unique_ptr<Trainer>(new Trainer(std::move(impl)));
}

absl::StatusOr<EvalResult> Trainer::Evaluate(const std::string& split, const std::string& dump_path) {
  return impl_->evaluator->Evaluate(split, dump_path);
}

absl::Status Trainer::LoadLatestModel() { return impl_->state->LoadModel(); }

absl::StatusOr<TrainResult> Trainer::Train() {
  Impl& t = *impl_;
  const auto& cfg = t.cfg();
  const RunContext& ctx = t.ctx;
  RunState& st = *t.state;
  bool resumed = false;
  if (t.tc.resume) {
    T2D_ASSIGN_OR_RETURN(resumed, st.Resume(t.reader.get()));
  } else {
    T2D_RETURN_IF_ERROR(st.CheckFreshStart());
  }
  if (!resumed) T2D_RETURN_IF_ERROR(st.InitTables());
  // Opened only now, so that a refused start leaves the previous run's metrics as they were.
  if (ctx.rank == 0) {
    T2D_ASSIGN_OR_RETURN(t.report, RunReport::Open(t.tc.output_dir, t.tc.resume));
  }
  const int64_t batch = cfg.training().batch_size();
  const int64_t steps_per_epoch = (t.reader->samples_per_epoch() + batch - 1) / batch;
  const int epochs = cfg.training().epochs();
  // The schedule spans the configured epochs, so a run cut by max_steps and resumed follows it.
  const int64_t schedule_steps = steps_per_epoch * epochs;
  const int64_t total_steps = cfg.training().max_steps() > 0 ? std::min<int64_t>(cfg.training().max_steps(), schedule_steps)
                                                             : schedule_steps;
  if (ctx.rank == 0) {
    LOG(INFO) << "training: workers=" << ctx.world << " samples_per_worker_epoch=" << t.reader->samples_per_epoch()
              << " steps_per_epoch=" << steps_per_epoch << " epochs=" << epochs << " total_steps=" << total_steps
              << " dense_params=" << t.model->DenseParameters().size() << " catalogue=" << t.catalogue->size()
              << " torch_threads=" << cfg.cluster().torch_threads()
              << " parallel_branches=" << (ctx.parallel_branches ? "on" : "off")
              << (cfg.cluster().has_parallel_branches() ? "" : " (unset: chosen for this machine)");
  }
  TrainResult result;
  result.workers = ctx.world;
  const auto start = Clock::now();
  Interval interval;
  int64_t trained_steps = 0;
  double step_seconds = 0;   // reading + training steps only (no evaluation or checkpoints)
  double step_cpu_seconds = 0;  // this process's CPU time over the same spans
  double other_seconds = 0;  // evaluation and checkpoint time, reported beside the training time
  data::SampleBatch batch_data;
  TrainStep::Prepared current, next;
  bool have_next = false;
  // The reader's cursor before the prefetched batch was read: what a checkpoint must record.
  std::optional<data::ReaderCursor> cursor_before_prefetch;
  while (st.step < total_steps) {
    const int epoch = static_cast<int>(st.step / steps_per_epoch);
    const auto step_start = Clock::now();
    const double step_cpu_start = ProcessCpuSeconds();
    if (!have_next) {
      T2D_ASSIGN_OR_RETURN(bool more, t.reader->Next(&batch_data));
      if (!more) break;
      T2D_RETURN_IF_ERROR(t.stepper->Prepare(batch_data, st.step, &next));
    }
    std::swap(current, next);
    have_next = false;
    cursor_before_prefetch.reset();
    // The next batch is read and built while this step trains: on a helper thread in sync
    // mode, whose rows are requested only after this step's pushes (the consistency contract);
    // in async mode here, its rows requested at once (they arrive while this step computes).
    // The helper touches only the reader, batch_data, `next` and the step builder, none of which
    // the step uses; it is joined (`building`'s destructor at the latest) before anything reads
    // them, the checkpoint's cursor included.
    std::future<absl::StatusOr<bool>> building;
    if (st.step + 1 < total_steps) {
      cursor_before_prefetch = t.reader->cursor();
      const int64_t at = st.step + 1;
      if (t.prefetch) {
        T2D_ASSIGN_OR_RETURN(bool more, t.reader->Next(&batch_data));
        if (more) {
          T2D_RETURN_IF_ERROR(t.stepper->Prepare(batch_data, at, &next));
          have_next = true;
        } else {
          cursor_before_prefetch.reset();
        }
      } else {
        building = std::async(std::launch::async, [&t, &batch_data, &next, at]() -> absl::StatusOr<bool> {
          T2D_ASSIGN_OR_RETURN(bool more, t.reader->Next(&batch_data));
          if (more) T2D_RETURN_IF_ERROR(t.stepper->Build(batch_data, at, &next));
          return more;
        });
      }
    }
    absl::StatusOr<TrainStep::Result> ran = t.stepper->Run(current, st.step, schedule_steps);
    if (building.valid()) {
      absl::StatusOr<bool> more = building.get();
      if (!ran.ok()) return ran.status();
      if (!more.ok()) return more.status();
      if (*more) {
        T2D_RETURN_IF_ERROR(t.stepper->Request(&next));
        have_next = true;
      } else {
        cursor_before_prefetch.reset();
      }
    }
    T2D_ASSIGN_OR_RETURN(TrainStep::Result r, std::move(ran));
    if (r.skipped) ++st.skipped_steps;
    ++st.step;
    const int every = cfg.training().replica_check_steps();
    if (every > 0 && st.step % every == 0) T2D_RETURN_IF_ERROR(t.stepper->CheckReplicas(st.step));
    step_seconds += Seconds(step_start);
    step_cpu_seconds += ProcessCpuSeconds() - step_cpu_start;
    ++trained_steps;
    if (result.first_loss == 0) result.first_loss = r.losses.total;
    result.last_loss = r.losses.total;
    interval.Add(r.losses);
    const bool epoch_end = st.step % steps_per_epoch == 0 || st.step == total_steps;
    if (ctx.rank == 0 && (st.step % cfg.training().log_every_steps() == 0 || epoch_end)) {
      RunReport::Progress p;
      p.epoch = epoch + 1;
      p.step = st.step;
      p.total_steps = total_steps;
      p.samples_per_second =
          static_cast<double>(interval.steps * batch * ctx.world) / std::max(Seconds(interval.start), 1e-9);
      p.eta_seconds = Seconds(start) / static_cast<double>(trained_steps) * static_cast<double>(total_steps - st.step);
      p.loss = interval.loss / static_cast<double>(interval.steps);
      p.tower = interval.tower / static_cast<double>(interval.steps);
      p.diffusion = interval.diffusion / static_cast<double>(interval.steps);
      p.epoch_end = epoch_end;
      t.report->ShowProgress(p);
      interval.Restart();
    }
    if (st.step % steps_per_epoch == 0 || (st.step == total_steps && total_steps == schedule_steps)) {
      const int done_epochs = static_cast<int>((st.step + steps_per_epoch - 1) / steps_per_epoch);
      if (done_epochs % cfg.eval().every_epochs() == 0 || st.step == total_steps) {
        const auto eval_start = Clock::now();
        for (const char* split : {"valid", "test"}) {
          const bool valid = std::string(split) == "valid";
          const std::string ranks = valid || !cfg.eval().write_ranks() ? "" : RanksFile(cfg, st.test.size(), ctx.rank);
          if (!ranks.empty()) {
            // A folder that cannot be made fails the file's creation inside the evaluation, which
            // reports it after its collective calls (returning here would leave the others waiting).
            std::error_code ignored;
            std::filesystem::create_directories(std::filesystem::path(ranks).parent_path(), ignored);
          }
          T2D_ASSIGN_OR_RETURN(EvalResult e, t.evaluator->Evaluate(split, "", ranks));
          e.epoch = done_epochs;
          if (ctx.rank == 0) t.report->ShowEvaluation(done_epochs, st.step, e, valid || cfg.eval().paper_protocol());
          (valid ? st.validation : st.test).push_back(std::move(e));
        }
        other_seconds += Seconds(eval_start);
        interval.start = Clock::now();  // the next progress interval measures training only
      }
    }
    const int64_t every_ckpt = cfg.checkpoint().every_steps();
    if ((every_ckpt > 0 && st.step % every_ckpt == 0) || st.step == total_steps) {
      const auto save_start = Clock::now();
      T2D_RETURN_IF_ERROR(st.Save(static_cast<int>(st.step / steps_per_epoch),
                                  cursor_before_prefetch ? *cursor_before_prefetch : t.reader->cursor()));
      other_seconds += Seconds(save_start);
      interval.start = Clock::now();
    }
  }
  result.train_seconds = Seconds(start);
  result.eval_seconds = other_seconds;
  result.step_seconds = step_seconds;
  result.step_cpu_seconds = step_cpu_seconds;
  result.parallel_branches = ctx.parallel_branches;
  result.steps = st.step;
  result.skipped_steps = st.skipped_steps;
  result.samples_per_second = static_cast<double>(trained_steps * batch * ctx.world) / std::max(step_seconds, 1e-9);
  result.validation = st.validation;
  // Select the evaluation on validation; without validation samples, the last evaluation.
  const int main_k = MainK(cfg.eval());
  int best = static_cast<int>(st.test.size()) - 1;
  result.selected_on_validation = !st.validation.empty() && st.validation.front().model.count() > 0;
  if (result.selected_on_validation) {
    for (size_t i = 0; i < st.validation.size(); ++i) {
      if (st.validation[i].model.Recall(main_k) > st.validation[static_cast<size_t>(best)].model.Recall(main_k)) {
        best = static_cast<int>(i);
      }
    }
  }
  result.best_epoch = best;
  if (best >= 0) result.test = st.test[static_cast<size_t>(best)];
  if (cfg.eval().write_ranks()) {
    // Keep the selected evaluation's ranks only (evaluations of a resumed run's earlier part too).
    for (size_t i = 0; i < st.test.size(); ++i) {
      if (static_cast<int>(i) == best) continue;
      std::error_code ignored;
      std::filesystem::remove(RanksFile(cfg, i, ctx.rank), ignored);
    }
  }
  for (int k : EvalKs(cfg.eval())) {
    double m = 0;
    for (const auto& r : st.test) m = std::max(m, r.model.Recall(k));
    result.test_best_over_epochs.push_back(m);
  }
  if (ctx.rank == 0) T2D_RETURN_IF_ERROR(t.report->Finish(result, cfg.eval()));
  return result;
}

namespace {

// One table's stored rows (id order).
struct StoredTable {
  int table = -1;
  std::vector<int64_t> keys;
  std::vector<float> rows;
};

// The stored rows of each of `tables`: the store writes all its tables' shard files to a scratch
// folder beside `dir` (once), and those tables are read back. A table has no other way out of
// the servers; the bundle needs the rows the servers hold, not the ones a data set names.
absl::Status StoredRows(embedding::EmbeddingStore* store, const std::string& dir,
                        const std::vector<StoredTable*>& tables) {
  if (tables.empty()) return absl::OkStatus();
  const std::string scratch = dir + ".stored-rows";
  std::error_code ec;
  std::filesystem::remove_all(scratch, ec);
  std::filesystem::create_directories(scratch, ec);
  if (ec) return absl::InternalError(absl::StrCat("export: cannot create ", scratch, ": ", ec.message()));
  absl::Status status = store->Save(scratch);
  for (StoredTable* t : tables) {
    if (!status.ok()) break;
    const config::TableConfig& spec = store->table_config(t->table);
    absl::StatusOr<std::vector<std::string>> paths = embedding::FindShardFiles(scratch, spec.name());
    absl::StatusOr<std::unique_ptr<embedding::EmbeddingTable>> copy = embedding::EmbeddingTable::Create(spec);
    if (!paths.ok()) {
      status = paths.status();
    } else if (!copy.ok()) {
      status = copy.status();
    } else {
      status = embedding::LoadShardFiles(*paths, 0, 1, copy->get());
      if (status.ok()) {
        const size_t dim = static_cast<size_t>(spec.dim());
        (*copy)->ForEachRow([&](const embedding::EmbeddingTable::RowView& r) {
          t->keys.push_back(r.id);
          t->rows.insert(t->rows.end(), r.values, r.values + dim);
        });
      }
    }
  }
  std::filesystem::remove_all(scratch, ec);
  return status;
}

}  // namespace

absl::Status Trainer::Export(const std::string& dir, const std::string& base_dir, serving::DeltaStats* delta) {
  Impl& t = *impl_;
  const auto start = Clock::now();
  T2D_ASSIGN_OR_RETURN(at::Tensor vectors, t.evaluator->CatalogueVectors());
  if (t.ctx.rank == 0) {
    model::StepInput in;
    t.builder->BuildCatalogue(0, t.catalogue->size(), &in);
    T2D_ASSIGN_OR_RETURN(model::Rows rows, t.fetcher->Fetch(in, false));
    T2D_ASSIGN_OR_RETURN(data::DatasetManifest dataset, data::ReadManifest(t.cfg().data().dataset_dir()));
    serving::BundleContents c;
    c.job = &t.cfg();
    c.dataset = &dataset;
    c.model = t.model.get();
    c.step = t.state->step;
    c.num_workers = t.ctx.world;
    c.item_ids = t.catalogue->ids();
    c.item_vectors = absl::MakeConstSpan(vectors.data_ptr<float>(), static_cast<size_t>(vectors.numel()));
    c.vector_dim = vectors.size(1);
    c.id_keys = in.id_keys;
    c.id_rows = absl::MakeConstSpan(rows.id_rows.data_ptr<float>(), static_cast<size_t>(rows.id_rows.numel()));
    c.id_dim = rows.id_rows.size(1);
    if (t.ctx.tag_table >= 0) {
      c.tag_keys = in.tag_keys;
      c.tag_rows = absl::MakeConstSpan(rows.tag_rows.data_ptr<float>(), static_cast<size_t>(rows.tag_rows.numel()));
      c.tag_dim = rows.tag_rows.size(1);
    }
    // The user tables' rows: every row the servers hold (users and profile values are not
    // enumerable from the catalogue).
    StoredTable users, profiles;
    users.table = t.ctx.user_table;
    profiles.table = t.ctx.user_feature_table;
    std::vector<StoredTable*> stored;
    if (users.table >= 0) stored.push_back(&users);
    if (profiles.table >= 0) stored.push_back(&profiles);
    T2D_RETURN_IF_ERROR(StoredRows(t.ctx.store, dir, stored));
    if (users.table >= 0) {
      c.user_keys = users.keys;
      c.user_rows = users.rows;
      c.user_dim = t.ctx.store->dim(users.table);
    }
    if (profiles.table >= 0) {
      c.user_feature_keys = profiles.keys;
      c.user_feature_rows = profiles.rows;
      c.user_feature_dim = t.ctx.store->dim(profiles.table);
    }
    c.item_tag_offsets.push_back(0);
    for (int64_t i = 0; i < t.catalogue->size(); ++i) {
      const auto& tags = t.catalogue->tags(i);
      c.item_tags.insert(c.item_tags.end(), tags.begin(), tags.end());
      c.item_tag_offsets.push_back(static_cast<int64_t>(c.item_tags.size()));
    }
    if (base_dir.empty()) {
      T2D_RETURN_IF_ERROR(serving::WriteBundle(dir, c));
    } else {
      T2D_ASSIGN_OR_RETURN(serving::DeltaStats stats, serving::WriteBundleDelta(dir, c, base_dir));
      LOG(INFO) << "delta of " << base_dir << ": items changed=" << stats.items_changed << "/" << stats.items_total
                << " id rows=" << stats.id_rows_changed << " tag rows=" << stats.tag_rows_changed
                << " user rows=" << stats.user_rows_changed << " profile rows=" << stats.user_feature_rows_changed;
      if (delta != nullptr) *delta = stats;
    }
    LOG(INFO) << "export written: dir=" << dir << " items=" << t.catalogue->size() << " dim=" << c.vector_dim
              << " ms=" << static_cast<int64_t>(1000 * Seconds(start));
  }
  return t.ctx.workers->Barrier(t.ctx.Deadline());
}

}  // namespace t2d::trainer
