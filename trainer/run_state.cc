#include "trainer/run_state.h"

#include <glog/logging.h>
#include <google/protobuf/text_format.h>

#include <algorithm>
#include <chrono>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "embedding/local_embedding_store.h"
#include "model/dense_state.h"
#include "trainer/checkpoint.h"

namespace t2d::trainer {
namespace {

namespace fs = std::filesystem;

std::string WorkerFile(const std::string& folder, int rank) { return absl::StrCat(folder, "/worker-", rank, ".textproto"); }
std::string EvalsFile(const std::string& folder) { return folder + "/evals.textproto"; }

// Shard files per table that EmbeddingStore::Save writes: an in-process store its own (one in a
// single-process run, whatever cluster.num_servers says), a remote store one per server.
int ShardsPerTable(const RunContext& ctx) {
  if (const auto* local = dynamic_cast<const embedding::LocalEmbeddingStore*>(ctx.store)) return local->num_shards();
  return ctx.cfg().cluster().num_servers();
}

}  // namespace

absl::Status WriteTextProto(const std::string& path, const google::protobuf::Message& message) {
  std::string text;
  if (!google::protobuf::TextFormat::PrintToString(message, &text)) {
    return absl::InternalError(absl::StrCat(path, ": cannot print ", message.GetTypeName()));
  }
  return WriteFileAtomic(path, text);
}

absl::Status ReadTextProto(const std::string& path, google::protobuf::Message* message) {
  auto text = ReadFileToString(path);
  if (!text.ok()) return absl::DataLossError(absl::StrCat(path, ": missing or unreadable"));
  if (!google::protobuf::TextFormat::ParseFromString(*text, message)) {
    return absl::DataLossError(absl::StrCat(path, ": not a valid ", message->GetTypeName()));
  }
  return absl::OkStatus();
}

RunState::RunState(const RunContext* context, model::Model* model, model::DenseAdam* optimizer)
    : ctx_(*context), model_(model), optimizer_(optimizer) {}

EvalHistory RunState::History() const {
  EvalHistory h;
  for (const auto* list : {&validation, &test}) {
    for (const auto& r : *list) {
      auto* e = h.add_evaluations();
      e->set_split(r.split);
      e->set_epoch(r.epoch);
      for (double v : r.model.Sums()) e->add_model_sums(v);
      for (double v : r.popularity.Sums()) e->add_popularity_sums(v);
    }
  }
  return h;
}

absl::Status RunState::SetHistory(const EvalHistory& history, const std::string& where) {
  std::vector<EvalResult> valid, tests;
  const auto ks = EvalKs(ctx_.cfg().eval());
  for (const auto& e : history.evaluations()) {
    EvalResult r;
    r.split = e.split();
    r.epoch = e.epoch();
    r.model = RankingMetrics(ks);
    r.popularity = RankingMetrics(ks);
    const size_t want = r.model.Sums().size();
    if (static_cast<size_t>(e.model_sums_size()) != want || static_cast<size_t>(e.popularity_sums_size()) != want) {
      return absl::DataLossError(absl::StrCat(where, ": an evaluation of split \"", e.split(), "\" has ",
                                              e.model_sums_size(), " sums where eval.k needs ", want));
    }
    if (r.split != "valid" && r.split != "test") {
      return absl::DataLossError(absl::StrCat(where, ": unknown split \"", r.split, "\""));
    }
    r.model.SetSums(absl::MakeConstSpan(e.model_sums().data(), want));
    r.popularity.SetSums(absl::MakeConstSpan(e.popularity_sums().data(), want));
    (r.split == "test" ? tests : valid).push_back(std::move(r));
  }
  validation = std::move(valid);
  test = std::move(tests);
  return absl::OkStatus();
}

absl::Status RunState::Save(int epoch, const data::ReaderCursor& cursor) {
  const std::string& dir = ctx_.cfg().checkpoint().dir();
  if (dir.empty()) return absl::OkStatus();
  const auto start = std::chrono::steady_clock::now();
  const std::string staging = StagingDir(dir, step);
  if (ctx_.rank == 0) T2D_RETURN_IF_ERROR(PrepareStaging(dir, step));
  T2D_RETURN_IF_ERROR(ctx_.workers->Barrier(ctx_.Deadline()));
  if (ctx_.rank == 0) {
    std::error_code ec;
    fs::create_directories(staging + "/sparse", ec);
    T2D_RETURN_IF_ERROR(ctx_.store->Save(staging + "/sparse"));
    T2D_RETURN_IF_ERROR(model::SaveDenseState(staging + "/dense.t2dd", *model_, optimizer_));
    T2D_RETURN_IF_ERROR(WriteTextProto(EvalsFile(staging), History()));
    // The job itself, so that a refused --resume can name the fields that differ.
    T2D_RETURN_IF_ERROR(WriteTextProto(staging + "/job.textproto", ctx_.cfg()));
  }
  WorkerState ws;
  *ws.mutable_cursor() = cursor;
  ws.set_step(step);
  ws.set_skipped_steps(skipped_steps);
  T2D_RETURN_IF_ERROR(WriteTextProto(WorkerFile(staging, ctx_.rank), ws));
  T2D_RETURN_IF_ERROR(ctx_.workers->Barrier(ctx_.Deadline()));
  if (ctx_.rank == 0) {
    FolderManifest m;
    m.set_epoch(epoch);
    m.set_num_workers(ctx_.world);
    m.set_num_servers(ShardsPerTable(ctx_));
    T2D_ASSIGN_OR_RETURN(std::string path, Commit(dir, step, m, ctx_.cfg()));
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    LOG(INFO) << "checkpoint written: path=" << path << " step=" << step << absl::StrFormat(" ms=%.0f", ms);
  }
  return ctx_.workers->Barrier(ctx_.Deadline());
}

absl::Status RunState::LoadFolder(const std::string& folder) {
  if (ctx_.rank == 0) T2D_RETURN_IF_ERROR(ctx_.store->Load(folder + "/sparse"));
  return model::LoadDenseState(folder + "/dense.t2dd", model_, optimizer_);
}

absl::Status RunState::LoadModel() {
  const std::string& dir = ctx_.cfg().checkpoint().dir();
  if (dir.empty()) return absl::FailedPreconditionError("no checkpoint.dir to load a checkpoint from");
  T2D_ASSIGN_OR_RETURN(VerifiedCheckpoint latest, FindLatestCheckpoint(dir, ctx_.cfg()));
  T2D_RETURN_IF_ERROR(LoadFolder(latest.folder));
  step = latest.manifest.step();
  T2D_RETURN_IF_ERROR(ctx_.workers->Barrier(ctx_.Deadline()));
  if (ctx_.rank == 0) LOG(INFO) << "loaded model of step " << step << " from " << latest.folder;
  return absl::OkStatus();
}

absl::Status RunState::CheckFreshStart() const {
  const std::string& dir = ctx_.cfg().checkpoint().dir();
  return dir.empty() ? absl::OkStatus() : CheckNoCheckpoints(dir);
}

absl::Status RunState::InitTables() {
  const auto& tables = ctx_.cfg().tables();
  // Every rank reads the same config, so all skip the barrier together.
  if (std::none_of(tables.begin(), tables.end(), [](const auto& t) { return !t.init_from().empty(); })) {
    return absl::OkStatus();
  }
  for (int t = 0; t < tables.size(); ++t) {
    const std::string& dir = tables[t].init_from();
    if (dir.empty() || ctx_.rank != 0) continue;
    const auto start = std::chrono::steady_clock::now();
    if (absl::Status s = ctx_.store->LoadTable(t, dir); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("tables[", t, "] (\"", tables[t].name(), "\").init_from: ", s.message()));
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    LOG(INFO) << "table " << tables[t].name() << " warm-started from " << dir << absl::StrFormat(" in %.1f s", seconds);
  }
  return ctx_.workers->Barrier(ctx_.Deadline());
}

absl::StatusOr<bool> RunState::Resume(data::SampleReader* reader) {
  const std::string& dir = ctx_.cfg().checkpoint().dir();
  if (dir.empty()) return absl::FailedPreconditionError("no checkpoint.dir to load a checkpoint from");
  auto latest = FindLatestCheckpoint(dir, ctx_.cfg());
  if (absl::IsNotFound(latest.status())) {
    if (ctx_.rank == 0) LOG(INFO) << "no checkpoint to resume from in " << dir << "; starting fresh";
    return false;
  }
  // Checkpoints that are all damaged, or of another run: never start fresh over them.
  if (!latest.ok()) return latest.status();
  const std::string& folder = latest->folder;
  const FolderManifest& m = latest->manifest;
  if (m.num_workers() != ctx_.world) {
    return absl::FailedPreconditionError(absl::StrCat(folder, ": written by ", m.num_workers(),
                                                      " workers; resume with the same number (this job has ",
                                                      ctx_.world, ")"));
  }
  // Read and check this run's files before the model is touched.
  EvalHistory history;
  T2D_RETURN_IF_ERROR(ReadTextProto(EvalsFile(folder), &history));
  WorkerState ws;
  const std::string worker_file = WorkerFile(folder, ctx_.rank);
  T2D_RETURN_IF_ERROR(ReadTextProto(worker_file, &ws));
  if (!ws.has_cursor() || !ws.has_step() || ws.step() != m.step() || ws.skipped_steps() < 0 ||
      ws.skipped_steps() > ws.step()) {
    return absl::DataLossError(absl::StrCat(worker_file, ": incomplete worker state, or inconsistent with the manifest's step ",
                                            m.step()));
  }
  T2D_RETURN_IF_ERROR(LoadFolder(folder));
  T2D_RETURN_IF_ERROR(SetHistory(history, EvalsFile(folder)));
  T2D_RETURN_IF_ERROR(reader->Restore(ws.cursor()));
  step = ws.step();
  skipped_steps = ws.skipped_steps();
  T2D_RETURN_IF_ERROR(ctx_.workers->Barrier(ctx_.Deadline()));
  if (ctx_.rank == 0) LOG(INFO) << "resumed from " << folder << " at step " << step;
  return true;
}

}  // namespace t2d::trainer
