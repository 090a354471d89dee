// t2diff: the composition root. Parses the command line, loads the config, sets up logging and
// (for train/eval/export) MPI, decides each rank's role, wires the pieces together and maps
// every error to a message and a non-zero exit status. Nothing below launcher/ reads flags or
// environment variables.
#include <CLI/CLI.hpp>
#include <google/protobuf/util/json_util.h>
#include <glog/logging.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/roles.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "configs/config_loader.h"
#include "data/prepare.h"
#include "launcher/launch.h"
#include "launcher/serve_main.h"
#include "launcher/run_job.h"
#include "launcher/supervise.h"
#include "model/malloc_tuning.h"

namespace t2d::launcher {
namespace {

struct Common {
  std::string config_path;
  std::vector<std::string> overrides;
};

void AddConfigOptions(CLI::App* cmd, Common* c, bool required = true) {
  auto* opt = cmd->add_option("--config,-c", c->config_path, "job config (protobuf text format, configs/job_config.proto)");
  if (required) opt->required();
  // One value per --set: a list-taking option would swallow a following "--" (and with it the
  // end of `launch`'s own options).
  cmd->add_option("--set", c->overrides, "override one config field: PATH=VALUE, e.g. training.batch_size=1024")
      ->take_all()
      ->allow_extra_args(false);
}

absl::StatusOr<config::JobConfig> LoadConfig(const Common& c) { return config::LoadJobConfig(c.config_path, c.overrides); }

int Fail(const absl::Status& s) {
  LOG(ERROR) << s.message();
  return 1;
}

std::string SelfPath(const char* argv0) {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return argv0;
  return std::string(buf, static_cast<size_t>(n));
}

}  // namespace

int Main(int argc, char** argv) {
  // OpenMP reads its wait policy when the library loads, before main: with the default
  // (spinning) policy a rank spins on a core that another rank of the job needs, which made
  // 2-thread steps up to 30x slower on a shared machine. Set it and start again once.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    ::execv("/proc/self/exe", argv);  // only returns on failure; then carry on as we are
  }
  model::ConfigureMallocForTensors();
  CLI::App app{"t2diff: distributed parameter-server trainer for T2Diff (diffusion-based two-tower retrieval)"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "help for every subcommand");

  // --json on every subcommand: the result as one JSON object on stdout (for scripts).
  bool json = false;
  Common prep_c;
  bool force = false;
  auto* prepare = app.add_subcommand("prepare", "turn raw interaction logs (or the synthetic generator) into sample shards");
  AddConfigOptions(prepare, &prep_c);
  prepare->add_flag("--force", force, "overwrite an existing data set in data.dataset_dir");
  prepare->add_flag("--json", json, "print the preparation summary as JSON");

  Common gen_c;
  bool gen_force = false;
  auto* generate = app.add_subcommand("generate", "write the synthetic data set of data.generator (prepare with source = SYNTHETIC)");
  AddConfigOptions(generate, &gen_c);
  generate->add_flag("--force", gen_force, "overwrite an existing data set in data.dataset_dir");
  generate->add_flag("--json", json, "print the preparation summary as JSON");

  RunOptions run;
  Common train_c;
  auto* train = app.add_subcommand("train", "train (run under mpirun, or alone for a single-process run)");
  AddConfigOptions(train, &train_c);
  train->add_flag("--resume", run.resume, "continue from the newest complete checkpoint in checkpoint.dir");
  train->add_option("--export", run.export_dir, "after training, write the serving bundle to this folder");
  train->add_flag("--json", run.json, "print the run summary as JSON (worker 0)");
  train->add_option("--heartbeat-dir", run.heartbeat_dir,
                    "every rank touches DIR/rank-<world rank> every second (set by launch --supervise)");

  Common eval_c;
  auto* eval = app.add_subcommand("eval", "evaluate the newest checkpoint on the validation and test splits");
  AddConfigOptions(eval, &eval_c);
  eval->add_option("--dump-ranks", run.dump_ranks, "write per sample its target, rank and serving request (JSON lines) to FILE.<split>");
  eval->add_flag("--json", run.json, "print the metrics of both splits as JSON");

  Common export_c;
  auto* exp = app.add_subcommand("export", "write a serving bundle from the newest checkpoint");
  AddConfigOptions(exp, &export_c);
  exp->add_option("--out", run.export_dir, "bundle (or, with --base, delta) folder")->required();
  exp->add_option("--base", run.export_base, "write only what changed since this full bundle (a delta for `serve`)");
  exp->add_flag("--json", run.json, "print what was exported as JSON");

  RetrieveOptions ret;
  auto* retrieve = app.add_subcommand("retrieve", "top-k items for a behaviour history, from a serving bundle (one request of `serve`)");
  retrieve->add_option("--bundle", ret.bundle, "bundle folder written by export")->required();
  retrieve->add_option("--history", ret.history, "item ids, oldest first, separated by spaces or commas");
  retrieve->add_option("--times", ret.times, "their timestamps (required when the data set has timestamps)");
  retrieve->add_option("--time", ret.time, "request time (default: the newest behaviour's); time lags are taken from it");
  retrieve->add_option("--user", ret.user, "user id: seeds the reverse diffusion as evaluation does for this user");
  retrieve->add_option("--seed", ret.seed, "seed of the reverse diffusion process instead");
  retrieve->add_option("--k", ret.k, "items to return")->capture_default_str();
  retrieve->add_option("--request", ret.request, "the whole request as a JSON line (docs/serving.md) instead of the flags");
  retrieve->add_flag("--json", ret.json, "print the reply line (JSON)");

  ServeOptions srv;
  auto* serve = app.add_subcommand("serve", "answer retrieval requests (JSON lines on stdin and TCP) until stopped");
  serve->add_option("--bundle", srv.bundle, "bundle folder written by export")->required();
  serve->add_option("--port", srv.port, "also listen on this TCP port (0: any free one, printed on stderr)");
  serve->add_option("--host", srv.host, "address to listen on")->capture_default_str();
  bool no_stdin = false, no_updates = false;
  serve->add_flag("--no-stdin", no_stdin, "do not read requests from stdin (TCP only)");
  serve->add_flag("--no-updates", no_updates, "refuse \"update\" requests");
  serve->add_option("--max-request-bytes", srv.max_request_bytes, "longest request line")->capture_default_str();
  serve->add_option("--max-batch", srv.max_batch, "queries per pass of the user tower")->capture_default_str();
  serve->add_option("--max-connections", srv.max_connections, "TCP clients at once")->capture_default_str();
  serve->add_option("--threads", srv.threads, "torch threads of the user tower")->capture_default_str();

  Common launch_c;
  bool dry_run = false;
  std::vector<std::string> launch_args;
  auto* launch = app.add_subcommand("launch", "print and run the mpirun command of a job: t2diff launch -c job.textproto [-- train options]");
  AddConfigOptions(launch, &launch_c);
  launch->add_flag("--dry-run", dry_run, "only print the command");
  bool launch_json = false;
  launch->add_flag("--json", launch_json, "run `t2diff train --json`: the run summary as JSON on stdout");
  bool supervise = false;
  launch->add_flag("--supervise", supervise,
                   "restart the job with --resume when a rank dies or stalls (cluster.supervise; docs/cluster.md)");
  bool many_ranks = false;
  launch->add_flag("--many-ranks", many_ranks,
                   absl::StrCat("start the job even with more than ", kMaxRanksPerSlot, " ranks per core or hostfile slot"));
  launch->add_option("args", launch_args, "arguments after --, passed to `t2diff train`");

  CLI11_PARSE(app, argc, argv);

  LoggingOptions log;
  log.role = "main";
  InitLogging(argv[0], log);

  if (prepare->parsed() || generate->parsed()) {
    Common& c = prepare->parsed() ? prep_c : gen_c;
    if (generate->parsed()) c.overrides.push_back("data.source=SYNTHETIC");
    auto cfg = LoadConfig(c);
    if (!cfg.ok()) return Fail(cfg.status());
    auto summary = data::Prepare(cfg->data(), prepare->parsed() ? force : gen_force);
    if (!summary.ok()) return Fail(summary.status());
    if (json) {
      std::string out;
      google::protobuf::util::JsonPrintOptions jo;
      jo.preserve_proto_field_names = true;
      if (!google::protobuf::util::MessageToJsonString(*summary, &out, jo).ok()) {
        return Fail(absl::InternalError("cannot print the summary as JSON"));
      }
      std::cout << out << std::endl;
    } else {
      std::cout << data::FormatSummary(*summary) << std::flush;
    }
    return 0;
  }
  if (launch->parsed()) {
    auto cfg = LoadConfig(launch_c);
    if (!cfg.ok()) return Fail(cfg.status());
    const auto& cluster = cfg->cluster();
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    int slots = cores;
    if (!cluster.hostfile().empty()) {
      auto hosts = ReadFileToString(cluster.hostfile());
      if (!hosts.ok()) return Fail(hosts.status());
      slots = HostfileSlots(*hosts, cores);
    }
    if (auto s = CheckRankCount(*cfg, slots, many_ranks); !s.ok()) return Fail(s);
    LaunchOptions o;
    o.binary = SelfPath(argv[0]);
    o.args = {"train", "--config", launch_c.config_path};
    for (const auto& s : launch_c.overrides) o.args.insert(o.args.end(), {"--set", s});
    if (launch_json) o.args.push_back("--json");
    SuperviseOptions so;
    if (supervise) {
      if (cfg->training().output_dir().empty()) {
        return Fail(absl::FailedPreconditionError(
            "--supervise needs training.output_dir: the ranks' heartbeats go to <training.output_dir>/heartbeat"));
      }
      so.heartbeat_dir = cfg->training().output_dir() + "/heartbeat";
      o.args.insert(o.args.end(), {"--heartbeat-dir", so.heartbeat_dir});
    }
    o.args.insert(o.args.end(), launch_args.begin(), launch_args.end());
    o.as_root = ::geteuid() == 0;
    const auto cmd = BuildMpirunCommand(*cfg, o);
    // With --json, stdout carries only the job's JSON: the command goes to the log.
    if (launch_json) {
      LOG(INFO) << "running: " << ShellJoin(cmd);
    } else {
      std::cout << ShellJoin(cmd) << std::endl;
    }
    if (dry_run) return 0;
    // A bad checkpoint folder is found now, not at the first checkpoint.
    if (auto s = CheckCheckpointFolder(*cfg); !s.ok()) return Fail(s);
    if (supervise) {
      auto roles = comm::AssignRoles(cluster.num_servers() + cluster.num_workers(), cluster.num_servers());
      if (!roles.ok()) return Fail(roles.status());
      so.command = cmd;
      so.roles = *roles;
      so.checkpoint_dir = cfg->checkpoint().dir();
      so.max_restarts = cluster.supervise().max_restarts();
      so.heartbeat_timeout = absl::Seconds(cluster.supervise().heartbeat_s());
      so.startup_timeout = absl::Seconds(cluster.timeout_s());
      return Supervise(so);
    }
    std::vector<char*> cargv;
    for (const auto& a : cmd) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);
    ::execvp(cargv[0], cargv.data());
    return Fail(absl::InternalError(absl::StrCat("cannot run ", cmd[0], ": ", std::strerror(errno))));
  }
  if (retrieve->parsed()) {
    if (ret.request.empty() && ret.history.empty()) return Fail(absl::InvalidArgumentError("retrieve: give --history or --request"));
    return RunRetrieve(ret);
  }
  if (serve->parsed()) {
    srv.read_stdin = !no_stdin;
    srv.allow_updates = !no_updates;
    return RunServe(srv);
  }

  Common& c = train->parsed() ? train_c : eval->parsed() ? eval_c : export_c;
  auto cfg = LoadConfig(c);
  if (!cfg.ok()) return Fail(cfg.status());
  run.mode = train->parsed() ? RunOptions::kTrain : eval->parsed() ? RunOptions::kEval : RunOptions::kExport;
  return RunJob(*cfg, run, &argc, &argv);
}

}  // namespace t2d::launcher

int main(int argc, char** argv) { return t2d::launcher::Main(argc, argv); }
