#!/usr/bin/env python3
"""The quality study: does T2Diff's diffusion help? Writes docs/RESULTS.md.

The paired study (the default) trains T2Diff and its no-diffusion ablation, each with the paper's
FFN user vector and with a plain concatenation, on ML-1M in time order at D = 4 and D = 16 (part
"2x2"); T2Diff variants that make the generated token consistent between training and inference
(part "consistency": tokens from the reverse process at training, classifier-free guidance, a DDIM
sampler, and the token-at-inference probe x_hat := x_n); and T2Diff against no diffusion on
MovieLens-100k and MovieTweetings (part "datasets"); and on the synthetic set at D = 16, the
options that make T2Diff affordable at a large D (part "industrial": a narrower U-Net, diffusion
over the newest slots only, fewer reverse steps). Every model runs under the distributed
trainer (`t2diff launch`: 1 parameter server + 2 workers under mpirun) for 5 seeds, each seed
redrawing the split (data.seed); two models are compared on the same test targets by the paired
difference of Recall@20 and NDCG@20 with a 95% t-interval over the seeds' mean differences
(beside it, a bootstrap over users within each seed: the test sample's noise alone;
bench/quality/paired.py), and a difference whose interval contains zero is called noise.

    python3 bench/quality/run_study.py            # the paired study (hours on 2 cores)
    python3 bench/quality/run_study.py --parts 2x2 --widths 4   # one part, one width
    python3 bench/quality/run_study.py --render   # the page from docs/results/paired.json alone
    python3 bench/quality/run_study.py --quick    # development: 2 seeds, D = 4 2x2, few epochs
                                                  # (target < 15 minutes)
    python3 bench/quality/run_study.py --classic [--beyond]   # the earlier page: every model on
                                                  # every suite, fixed split, mean +- sd tables

The page is never edited by hand. The paired study keeps each block it measures (one suite at one
width in one part) in docs/results/paired.json, with the command, machine, dates and revision, and
renders the page from every stored block: running a part replaces that part's blocks and keeps the
rest, so the study can be run a part at a time. Every run goes through `nice -n 19`, one at a time
(the development machine is shared). Runs, logs and the prepared data sets go to --work (default
t2diff-run/quality, ignored by git); --resume reuses the runs that finished there with the same
arguments. --quick writes its page and store into --work, never over the study's.

Needs: ../shared/data (the data sets; never copied into the repository), the project's build
tool chain (scripts/setup.sh), numpy (Debian python3-numpy) for the bootstrap, and for --classic
gnuplot (Debian gnuplot-nox, installed here when missing and running as root; without it the page
is written without curves).
"""

import argparse
import datetime
import glob
import gzip
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter, OrderedDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import paired  # noqa: E402  (bench/quality/paired.py)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
KS = (2, 10, 20, 50)
METRICS = ("recall", "mrr", "ndcg")

# (config.kind, label). T2Diff first: the targets compare it with the others.
MODELS = OrderedDict([
    ("T2DIFF", "T2Diff"),
    ("T2DIFF_NO_DIFFUSION", "T2Diff without diffusion (ablation)"),
    ("T2DIFF_NO_DRIFT", "T2Diff without drift (ablation)"),
    ("TWO_TOWER_MEAN", "two-tower, mean-pooled history"),
    ("SASREC", "SASRec-style"),
])


class Suite:
    def __init__(self, name, title, paper, full, quick, eval_every=1, max_seeds=None):
        self.name = name
        self.max_seeds = max_seeds  # None: the study's seeds
        self.title = title
        self.config = os.path.join("configs", "quality", name + ".textproto")
        self.paper = paper  # authors' protocol (the best-over-epochs reading is shown too)
        self.full_epochs = full
        self.quick_epochs = quick  # None: not in the quick mode
        self.eval_every = eval_every  # epochs between validations (small training sets)

    def seeds(self, args):
        return min(args.seeds, self.max_seeds or args.seeds)

    def epochs(self, args):
        e = self.quick_epochs if args.quick and self.quick_epochs else self.full_epochs
        return max(1, int(round(e * args.epochs_scale)))


# Epochs are set from speeds measured on the idle 2-core development machine so that the study
# with --beyond stays near 2 hours and one ML-1M T2Diff run under 3 minutes. The clean protocol
# on ML-1M has 0.5-1 M training samples per epoch, so one or two epochs there take as many
# steps (about 1,900) as the authors' protocol's 30 epochs in time order. The authors'
# protocol on the small sets has only ~4,000 training samples (8 steps) per epoch, hence many
# epochs, validated every 5 (their validation-selected epochs were 8-20 in trial runs). The
# ML-1M clean suites (0.5-1 M samples an epoch, 6,040 validation and test users each) run one
# seed: with three the study would not fit in 2 hours; no target is read from them.
SUITES = [
    Suite("ml1m_file_paper", "ML-1M, file order (users 1-2999), authors' protocol", True, 80, 20),
    Suite("ml1m_time_paper", "ML-1M, time order (all 6,040 users), authors' protocol", True, 30, 12),
    Suite("ml1m_file_clean", "ML-1M, file order (users 1-2999), clean protocol (last item)", False, 2, None,
          max_seeds=1),
    Suite("ml1m_time_clean", "ML-1M, time order (all 6,040 users), clean protocol (last item)", False, 1, None,
          max_seeds=1),
    Suite("ml100k_paper", "MovieLens-100k, time order, authors' protocol", True, 60, 40, 5),
    Suite("ml100k_clean", "MovieLens-100k, time order, clean protocol (last item)", False, 3, 1),
    Suite("movietweetings_paper", "MovieTweetings 100K, time order, authors' protocol", True, 60, 30, 5),
    Suite("movietweetings_clean", "MovieTweetings 100K, time order, clean protocol (last item)", False, 3, 1),
]

# Suites of the paired study only (not in --classic).
PAIRED_ONLY_SUITES = [
    Suite("synthetic_paper", "Synthetic (data/generator.h, ML-1M's size), authors' protocol", True, 10, 3, 2),
    Suite("synthetic_short", "Synthetic, short histories (about 10) with 3 user profile fields, authors' protocol",
          True, 10, 3, 2),
    Suite("synthetic_cold", "Synthetic, very short histories (about 4) with 3 user profile fields, authors' protocol",
          True, 10, 3, 2),
]


def find_suite(name):
    return next(s for s in SUITES + PAIRED_ONLY_SUITES if s.name == name)


# Published and reference figures shown beside ours ({metric@K: value}).
PAPER_ML1M = {"recall@2": 0.07738, "recall@20": 0.27727, "mrr@2": 0.06076, "mrr@20": 0.08730}
REFERENCE = {
    # ../shared/docs/t2diff-model.md section 7, "Order matters": an independent implementation
    # of the same spec at the authors' sizes, test at the validation-selected epoch.
    "ml1m_file_paper": [
        ("T2Diff", {"recall@20": 0.332, "mrr@20": 0.092}),
        ("popularity", {"recall@20": 0.17}),
    ],
    "ml1m_time_paper": [
        ("T2Diff (mean of 3 seeds)", {"recall@20": 0.124, "mrr@20": 0.025}),
        ("no diffusion", {"recall@20": 0.102, "mrr@20": 0.021}),
        ("mean-pooled two-tower", {"recall@20": 0.083, "mrr@20": 0.020}),
        ("popularity", {"recall@20": 0.070, "mrr@20": 0.020}),
    ],
}


def log(msg):
    print("[study %s] %s" % (datetime.datetime.utcnow().strftime("%H:%M:%S"), msg), flush=True)


def die(msg):
    print("run_study: error: " + msg, file=sys.stderr)
    sys.exit(1)


# ------------------------------------------------------------------------------------------
# Set-up check

def setup(args):
    data = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))
    if not os.path.isdir(data):
        die("%s is absent: the study needs the real data sets there (see ../shared/data/README.md)" % data)
    for tool in ("cmake", "ninja", "mpirun"):
        if shutil.which(tool) is None:
            die("%s not found: run `bash scripts/setup.sh` first" % tool)
    if not args.no_build:
        build = args.build_dir
        lock = ["flock", "/tmp/t2d-build.lock"] if shutil.which("flock") else []
        if not os.path.isfile(os.path.join(build, "build.ninja")):
            log("configuring %s" % build)
            run_checked(lock + ["cmake", "-S", ROOT, "-B", build, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release"])
        log("building t2diff in %s" % build)
        run_checked(lock + ["nice", "-n", "19", "ninja", "-C", build, "t2diff"])
    binary = os.path.join(args.build_dir, "launcher", "t2diff")
    if not os.access(binary, os.X_OK):
        die("%s is missing (build it, or drop --no-build)" % binary)
    gnuplot = shutil.which("gnuplot")
    if gnuplot is None and not args.no_plots:
        if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
            log("installing gnuplot-nox (for the training curves)")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            ok = subprocess.call(["apt-get", "install", "-y", "-q", "--no-install-recommends", "gnuplot-nox"], env=env) == 0
            if not ok:
                ok = (subprocess.call(["apt-get", "update", "-q"], env=env) == 0 and
                      subprocess.call(["apt-get", "install", "-y", "-q", "--no-install-recommends", "gnuplot-nox"],
                                      env=env) == 0)
            gnuplot = shutil.which("gnuplot")
        if gnuplot is None:
            log("WARNING: gnuplot unavailable (install Debian gnuplot-nox); the page will have no curves")
    # Single machine: no ssh to start the ranks.
    os.environ.setdefault("OMPI_MCA_plm", "isolated")
    os.environ.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    return os.path.abspath(binary), gnuplot


def run_checked(cmd):
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc != 0:
        die("command failed (exit %d): %s" % (rc, " ".join(cmd)))


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = ", %.0f GiB memory" % (kb / 2 ** 20)
    except (OSError, ValueError, IndexError):
        pass
    return "%s, %d cores%s, %s" % (cpu, os.cpu_count() or 0, mem, platform.platform())


def git_revision():
    try:
        rev = subprocess.check_output(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, text=True).strip()
        dirty = subprocess.call(["git", "diff", "--quiet", "HEAD", "--", ".", ":!docs/RESULTS.md", ":!docs/results"],
                                cwd=ROOT) != 0
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ------------------------------------------------------------------------------------------
# Running

def seed_overrides(seed, config=None):
    # A seed changes the dense and embedding initialisation, the diffusion noise and the
    # evaluation noise; the data split and the shuffling stay fixed (data.seed).
    sets = ["training.seed=%d" % seed, "model.init_seed=%d" % seed, "eval.seed=%d" % seed,
            "tables[item_id].initializer.seed=%d" % seed, "tables[item_tag].initializer.seed=%d" % seed]
    if config and os.path.isfile(config) and 'name: "user_profile"' in open(config).read():
        sets.append("tables[user_profile].initializer.seed=%d" % seed)
    return sets


def prepare_summary_lines(summary):
    """The "kept:" and "samples:" lines of a `t2diff prepare --json` summary (PrepareSummary)."""
    n = lambda key: int(summary.get(key, 0))  # proto3 JSON prints int64 fields as strings
    kept = "kept: %d users, %d items, %d interactions; length min %d / mean %.1f / max %d" % (
        n("users"), n("items"), n("interactions"), n("min_seq_len"), float(summary.get("mean_seq_len", 0)),
        n("max_seq_len"))
    samples = "samples: train %d (%d users), valid %d (%d users), test %d (%d users)" % (
        n("train_samples"), n("train_users"), n("valid_samples"), n("valid_users"), n("test_samples"),
        n("test_users"))
    return [kept, samples], n("train_samples")


def prepare(binary, suite, work, data_seed=None):
    """Prepares `suite`'s data set (with data.seed = data_seed when given: another split)."""
    name = suite.name + ("" if data_seed is None else "-seed%d" % data_seed)
    dataset = os.path.join(work, "data", name)
    cmd = ["nice", "-n", "19", binary, "prepare", "-c", suite.config, "--set", "data.dataset_dir=" + dataset, "--force",
           "--json"]
    if data_seed is not None:
        cmd += ["--set", "data.seed=%d" % data_seed]
    logpath = os.path.join(work, "data", name + ".prepare.log")
    os.makedirs(os.path.dirname(logpath), exist_ok=True)
    with open(logpath, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=f, text=True)
    if proc.returncode != 0:
        die("prepare of %s failed (exit %d), see %s" % (suite.name, proc.returncode, logpath))
    try:
        summary, train_samples = prepare_summary_lines(json.loads(proc.stdout))
    except ValueError:
        die("prepare of %s printed no JSON summary, see %s" % (suite.name, logpath))
    return dataset, summary, train_samples


def read_metrics(path):
    out = {"train": [], "eval": [], "summary": None}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                rec = json.loads(line)
                kind = rec.get("kind")
                if kind == "summary":
                    out["summary"] = rec
                elif kind in out:
                    out[kind].append(rec)
    except (OSError, ValueError):
        return None
    return out


def run_one(binary, suite, dataset, train_samples, model, seed, epochs, work, resume, timeout_s, extra=(), tag="",
            rundir=None, eval_every=None):
    rundir = rundir or os.path.join(work, "runs", suite.name, model + ("-" + tag if tag else ""), "seed%d" % seed)
    # About 40 points on the loss curve.
    steps = max(1, -(-train_samples // 512)) * epochs
    sets = ["data.dataset_dir=" + dataset, "model.kind=" + model, "training.epochs=%d" % epochs,
            "training.log_every_steps=%d" % max(1, steps // 40), "eval.every_epochs=%d" % (eval_every or suite.eval_every),
            "training.output_dir=" + rundir, "eval.paper_protocol=%s" % ("true" if suite.paper else "false"),
            "checkpoint.dir="] + seed_overrides(seed, suite.config) + list(extra)
    cmd = ["nice", "-n", "19", binary, "launch", "-c", suite.config]
    for s in sets:
        cmd += ["--set", s]
    record = os.path.join(rundir, "run.json")
    if resume and os.path.isfile(record):
        with open(record) as f:
            old = json.load(f)
        metrics = read_metrics(os.path.join(rundir, "metrics.jsonl"))
        if old.get("command") == cmd and old.get("rc") == 0 and metrics and metrics["summary"]:
            log("%s %s seed %d: reused" % (suite.name, model, seed))
            old.setdefault("finished_at", os.path.getmtime(record))  # records written before it was kept
            return dict(old, metrics=metrics)
    shutil.rmtree(rundir, ignore_errors=True)
    os.makedirs(rundir)
    start = time.time()
    with open(os.path.join(rundir, "log.txt"), "w") as f:
        # Own process group: a run past its time is ended with mpirun and every rank.
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            f.write("\nrun_study: abandoned after %.0f s\n" % timeout_s)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    pass
            rc = -1
    wall = time.time() - start
    metrics = read_metrics(os.path.join(rundir, "metrics.jsonl"))
    if rc == 0 and not (metrics and metrics["summary"]):
        rc = -2
    res = {"suite": suite.name, "model": model, "seed": seed, "epochs": epochs, "command": cmd, "rc": rc,
           "wall_s": wall, "finished_at": time.time(), "log": os.path.join(rundir, "log.txt"), "dir": rundir,
           "sets": sets}
    with open(record, "w") as f:
        json.dump(res, f, indent=1)
    s = metrics["summary"] if metrics and metrics["summary"] else {}
    log("%s %s%s seed %d: rc %d, %.0f s, Recall@20 %s" % (suite.name, model, " " + tag if tag else "", seed, rc, wall,
                                                        "%.4f" % s["recall@20"] if "recall@20" in s else "-"))
    return dict(res, metrics=metrics)


# ------------------------------------------------------------------------------------------
# Beyond the paper (--beyond): embedding width, what the generated token carries, reverse cost

BEYOND_SUITE = "ml1m_time_paper"
# (D, epochs, seeds; None: the study's). D = 4 is the main study. Epochs from trial runs on this
# machine: validation Recall@20 levels off by epoch 10-12 at D = 16 and reaches 90% of its best
# by epoch 3 at D = 64. T2Diff at D = 64 costs about 60 s an epoch here (the U-Net's widest level
# has 8D channels and every validation runs the 50-step reverse process), hence one seed.
WIDTHS = ((16, 15, None), (64, 3, 1))
# Widths whose trained T2Diff models are evaluated with the inference variants below.
INFERENCE_WIDTHS = (4, 16)
# Diffusion steps T of the reverse-process cost table (T2Diff, D = 4) besides T = 50 (the
# inference study's models, every seed); each trains one seed to keep the study near 2 hours.
TRAINED_STEPS = (10, 25, 100)
# (label, overrides) of the evaluations of one trained T2Diff model.
INFERENCE_VARIANTS = [
    ("as trained: x_hat from the reverse process (1 sample, 50 steps)", []),
    ("x_hat replaced by the last behaviour x_n", ["model.inference_token=LAST_BEHAVIOUR"]),
    ("x_hat = average of 8 reverse-process samples", ["model.inference_samples=8"]),
    ("x_hat from 25 reverse steps (of T = 50)", ["model.inference_reverse_steps=25"]),
    ("x_hat from 10 reverse steps (of T = 50)", ["model.inference_reverse_steps=10"]),
]


def eval_metrics(result, split="test"):
    """The model's metrics of `split` from a `t2diff eval --json` result, or None."""
    try:
        model = result[split]["model"]
    except (KeyError, TypeError):
        return None
    return {k: v for k, v in model.items() if "@" in k}


def run_eval(binary, config, sets, logpath, dump_ranks=None):
    cmd = ["nice", "-n", "19", binary, "eval", "-c", config, "--json"]
    if dump_ranks:
        cmd += ["--dump-ranks", dump_ranks]
    for s in sets:
        cmd += ["--set", s]
    start = time.time()
    with open(logpath, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=f, text=True)
    wall = time.time() - start
    try:
        test = eval_metrics(json.loads(proc.stdout))
    except ValueError:
        test = None
    return proc.returncode, wall, test


def user_tower_latency(binary, config, sets, rundir, steps, history):
    """Median user-tower latency (ms) of single requests to an exported bundle."""
    bundle = os.path.join(rundir, "bundle-%d" % steps)
    cmd = ["nice", "-n", "19", binary, "export", "-c", config]
    for s in sets + ["model.inference_reverse_steps=%d" % steps]:
        cmd += ["--set", s]
    with open(os.path.join(rundir, "export-%d.log" % steps), "w") as f:
        if subprocess.call(cmd + ["--out", bundle], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT) != 0:
            return None
    times = []
    for i in range(7):
        out = subprocess.run(["nice", "-n", "19", binary, "retrieve", "--bundle", bundle, "--history", history,
                              "--k", "20", "--seed", str(i + 1), "--json"], cwd=ROOT, capture_output=True,
                             text=True).stdout
        try:
            times.append(float(json.loads(out)["user_tower_ms"]))
        except (ValueError, KeyError):
            pass
    return statistics.median(times) if times else None


def width_sets(width):
    half = width // 2
    return ["tables[item_id].dim=%d" % half, "tables[item_tag].dim=%d" % half]


def run_beyond(args, binary, models):
    suite = next(s for s in SUITES if s.name == BEYOND_SUITE)
    dataset, _, train_samples = prepare(binary, suite, args.work)
    epochs = suite.epochs(args)
    out = {"widths": OrderedDict(), "inference": OrderedDict(), "steps": OrderedDict(), "epochs": epochs,
           "width_epochs": {}}
    parts = args.beyond_parts.split(",")

    done = {}  # rundir -> result: a run two tables share is trained once

    def ckpt_run(tag, seed, run_epochs, extra):
        """A T2Diff run that keeps its checkpoint (the model after its last epoch): its "sets" carry
        checkpoint.dir, so `t2diff eval` and `export` with them restore that model."""
        rundir = os.path.join(args.work, "runs", suite.name, "T2DIFF-" + tag, "seed%d" % seed)
        if rundir not in done:
            done[rundir] = run_one(binary, suite, dataset, train_samples, "T2DIFF", seed, run_epochs, args.work,
                                   args.resume, args.run_timeout,
                                   list(extra) + ["checkpoint.dir=" + os.path.join(rundir, "ckpt")], tag)
        return done[rundir]

    def scaled(e):  # --epochs-scale, and the quick mode's share of the study's epochs, apply here too
        return max(1, int(round(e * args.epochs_scale * (suite.quick_epochs / suite.full_epochs if args.quick else 1))))

    for width, width_epochs, width_seeds in (WIDTHS if "widths" in parts else ()):
        width_epochs = scaled(width_epochs)
        out["width_epochs"][width] = (width_epochs, width_seeds or args.seeds)
        by_model = OrderedDict()
        for model in models:
            runs = []
            for seed in range(1, (width_seeds or args.seeds) + 1):
                if model == "T2DIFF":  # kept: the inference variants below evaluate it
                    runs.append(ckpt_run("D%d" % width, seed, width_epochs, width_sets(width)))
                else:
                    runs.append(run_one(binary, suite, dataset, train_samples, model, seed, width_epochs, args.work,
                                        args.resume, args.run_timeout, width_sets(width), "D%d" % width))
            by_model[model] = runs
        out["widths"][width] = by_model
    history = None
    if "steps" in parts:
        with gzip.open(os.path.join(ROOT, "..", "shared", "data", "ml-1m", "ml-1m_sequences.txt.gz"), "rt") as f:
            history = " ".join(f.readline().split()[1:][-50:])
    for width in (INFERENCE_WIDTHS if "inference" in parts else ()):
        width_epochs = scaled(dict((w, e) for w, e, _ in WIDTHS)[width]) if width != 4 else epochs
        per_width = OrderedDict()
        for seed in range(1, args.seeds + 1):
            tag = "ckpt" if width == 4 else "D%d" % width
            run = ckpt_run(tag, seed, width_epochs, width_sets(width) if width != 4 else [])
            if run["rc"] != 0:
                continue
            for i, (label, over) in enumerate(INFERENCE_VARIANTS):
                logpath = os.path.join(run["dir"], "eval-%d.log" % i)
                rc, wall, test = run_eval(binary, suite.config, run["sets"] + over, logpath)
                per_width.setdefault(label, []).append({"rc": rc, "wall_s": wall, "test": test})
                log("beyond: D %d seed %d, %s: Recall@20 %s" % (width, seed, label, test.get("recall@20") if test else "-"))
        out["inference"][width] = per_width
    if "steps" in parts:
        for steps in sorted(TRAINED_STEPS + (50,)):
            runs, latency = [], None
            for seed in range(1, (args.seeds if steps == 50 else 1) + 1):
                extra = [] if steps == 50 else ["model.diffusion_steps=%d" % steps]
                run = ckpt_run("ckpt" if steps == 50 else "T%d" % steps, seed, epochs, extra)
                runs.append(run)
                if seed == 1 and run["rc"] == 0:
                    latency = user_tower_latency(binary, suite.config, run["sets"], run["dir"], steps, history)
                    log("beyond: T = %d, user tower latency %s ms" % (steps, latency))
            out["steps"][steps] = {"runs": runs, "latency": latency}
    return out


def beyond_runs(beyond):
    """Every training run of the beyond part (for the page's time total)."""
    if not beyond:
        return []
    runs = [r for by_model in beyond["widths"].values() for rs_ in by_model.values() for r in rs_]
    runs += [r for rec in beyond["steps"].values() for r in rec["runs"]]
    seen, out = set(), []
    for r in runs:  # T = 50 and D = 16 T2Diff runs are shared between tables
        if r["dir"] not in seen:
            seen.add(r["dir"])
            out.append(r)
    return out


def beyond_section(beyond, suite_title):
    L = ["## Beyond the paper (%s)" % suite_title, ""]
    if beyond["widths"]:
        L.append("### Embedding width D (every model; D = 4 is the table above)")
        L.append("")
        L.append("Epochs and seeds per width: " + "; ".join(
            "D = %d: %d epochs, %d seed(s)" % (w, e, n) for w, (e, n) in beyond["width_epochs"].items()) +
                 " (validation Recall@20 levels off sooner at larger D). Same data, split and protocol; the epoch "
                 "is selected on validation.")
        L.append("")
        L.append("| model | D | Recall@2 | Recall@20 | MRR@20 | NDCG@20 | Recall@50 | sel. epoch | wall s | samples/s |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
    for width, by_model in beyond["widths"].items():
        for model, runs in by_model.items():
            agg, ok, total = aggregate(runs)
            L.append("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                MODELS[model], width, fmt(*agg["recall@2"]), fmt(*agg["recall@20"]), fmt(*agg["mrr@20"]),
                fmt(*agg["ndcg@20"]), fmt(*agg["recall@50"]), fmt(*agg["best_epoch"], digits=1),
                fmt(*agg["wall_s"], digits=0), fmt(*agg["samples_per_s"], digits=0)))
    L.append("")
    if beyond["inference"]:
        L.append("### What the generated token contributes at inference")
        L.append("")
        L.append("The same trained T2Diff models (the checkpoint after the last epoch, so the first row can differ "
                 "from the validation-selected tables), evaluated on the test split with x_hat_{n+1} made in "
                 "different ways. Mean ± sd over seeds.")
        L.append("")
        L.append("| D | inference | Recall@2 | Recall@20 | MRR@20 | NDCG@20 | eval wall s (valid + test, 1 process) |")
        L.append("|---|---|---|---|---|---|---|")
    for width, per_width in beyond["inference"].items():
        for label, evals in per_width.items():
            ok = [e for e in evals if e["rc"] == 0 and e["test"]]
            cells = [fmt(*mean_std([e["test"].get(m) for e in ok])) for m in ("recall@2", "recall@20", "mrr@20", "ndcg@20")]
            L.append("| %d | %s | %s | %s |" % (width, label, " | ".join(cells),
                                                fmt(*mean_std([e["wall_s"] for e in ok]), digits=1)))
    L.append("")
    if beyond["steps"]:
        L.append("### Reverse-process cost: diffusion steps T (T2Diff, D = 4, trained and served with T steps)")
        L.append("")
        L.append("Test metrics at the validation-selected epoch, mean ± sd over seeds (T = 50: every seed; the "
                 "others: one seed). Latency: one request's user "
                 "tower (`t2diff retrieve` on an exported bundle, history of 50, 1 thread, median of 7, first seed).")
        L.append("")
        L.append("| T | Recall@2 | Recall@20 | MRR@20 | NDCG@20 | user-tower latency ms | wall s |")
        L.append("|---|---|---|---|---|---|---|")
    for steps, rec in beyond["steps"].items():
        agg, ok, total = aggregate(rec["runs"])
        L.append("| %d | %s | %s | %s | %s | %s | %s |" % (
            steps, fmt(*agg["recall@2"]), fmt(*agg["recall@20"]), fmt(*agg["mrr@20"]), fmt(*agg["ndcg@20"]),
            "%.2f" % rec["latency"] if rec["latency"] is not None else "–", fmt(*agg["wall_s"], digits=0)))
    L.append("")
    return "\n".join(L)


# ------------------------------------------------------------------------------------------
# The paired study (the default): does the diffusion help, by paired differences on the same
# targets over seeds that each redraw the split (bench/quality/paired.py has the statistics).

class Arm:
    """One model of the paired study: trained (kind + overrides), or evaluated from a trained
    arm's final checkpoint with inference overrides (parent set)."""

    def __init__(self, name, label, kind=None, sets=(), parent=None, eval_sets=(), keep=False):
        self.name, self.label, self.kind, self.sets = name, label, kind, list(sets)
        self.parent, self.eval_sets, self.keep = parent, list(eval_sets), keep


class Block:
    """Arms trained on one suite at one width with one epoch rule, and the comparisons between them."""

    def __init__(self, part, suite, width, epochs, quick_epochs, every, arms, comparisons, name=""):
        # name tells apart blocks of one part on one suite at one width (each is stored and shown
        # on its own, so a long part keeps its finished blocks when it is interrupted).
        self.part, self.suite, self.width, self.name = part, suite, width, name
        self.epochs, self.quick_epochs, self.every = epochs, quick_epochs, every
        self.arms = OrderedDict((a.name, a) for a in arms)
        self.comparisons = comparisons  # (arm A, arm B, the question)


DDIM10 = ["model.reverse_update=DDIM", "model.inference_reverse_steps=10"]
PROBE = ["model.inference_token=LAST_BEHAVIOUR"]


def probed(name, label, kind, sets=(), short=None):
    """A trained arm that keeps its checkpoint, its final checkpoint evaluated as trained, and
    the same with the generated token replaced by the last behaviour (the probe). `short`
    names the model in the two evaluation rows (default: label)."""
    short = short or label
    return [Arm(name, label, kind, sets, keep=True),
            Arm(name + ".final", short + ", final checkpoint", parent=name),
            Arm(name + ".probe", short + ", final checkpoint, x_hat := x_n at inference", parent=name,
                eval_sets=PROBE)]


def core_arms():
    t2diff, final, probe = probed("t2diff", "T2Diff (FFN user vector)", "T2DIFF", short="T2Diff")
    return [t2diff,
            Arm("nodiff", "no diffusion (FFN)", "T2DIFF_NO_DIFFUSION"),
            Arm("t2diff_concat", "T2Diff (CONCAT user vector)", "T2DIFF", ["model.user_vector=CONCAT"]),
            Arm("nodiff_concat", "no diffusion (CONCAT)", "T2DIFF_NO_DIFFUSION", ["model.user_vector=CONCAT"]),
            final, probe]


CORE_COMPARISONS = [
    ("t2diff", "nodiff", "diffusion, FFN user vector"),
    ("t2diff_concat", "nodiff_concat", "diffusion, CONCAT user vector"),
    ("t2diff_concat", "t2diff", "CONCAT against FFN, with diffusion"),
    ("nodiff_concat", "nodiff", "CONCAT against FFN, without diffusion"),
]
PROBE_COMPARISONS = [("t2diff.final", "t2diff.probe", "the generated token at inference (T2Diff)")]


# The consistency part, in three blocks (name, arms, comparisons), each beside the 2x2's T2Diff
# and no-diffusion models (trained once for all three).
CONSISTENCY = [
    ("tokens",
     probed("tok50", "T2Diff, half the training tokens generated (DDIM 10 steps)", "T2DIFF",
            ["model.train_generated_token_fraction=0.5"] + DDIM10) +
     probed("tok100", "T2Diff, every training token generated (DDIM 10 steps)", "T2DIFF",
            ["model.train_generated_token_fraction=1"] + DDIM10),
     [("tok50", "nodiff", "half the training tokens generated, against no diffusion"),
      ("tok100", "nodiff", "every training token generated, against no diffusion"),
      ("tok50.final", "tok50.probe", "the generated token at inference (half generated at training)"),
      ("tok100.final", "tok100.probe", "the generated token at inference (all generated at training)")]),
    ("sampler",
     probed("cfg", "T2Diff, guidance (condition dropped 10%, w = 1)", "T2DIFF",
            ["model.guidance_drop_fraction=0.1", "model.guidance_weight=1"]) +
     [Arm("t2diff.ddim10", "T2Diff, final checkpoint, DDIM 10 steps at inference", parent="t2diff",
          eval_sets=DDIM10)],
     [("cfg", "nodiff", "classifier-free guidance, against no diffusion"),
      ("cfg.final", "cfg.probe", "the generated token at inference (guidance)"),
      ("t2diff.ddim10", "t2diff.final", "DDIM 10 steps against the 50-step DDPM sampler (T2Diff)")]),
    # Predicting x_{n+1} itself instead of the drift.
    ("items",
     probed("nodrift", "T2Diff diffusing the items, not the drift", "T2DIFF_NO_DRIFT"),
     [("nodrift", "nodiff", "diffusing the items instead of the drift, against no diffusion"),
      ("nodrift.final", "nodrift.probe", "the generated token at inference (items diffused)")]),
]

# The industrial part: what the options that make T2Diff affordable at a large D cost in quality
# (docs/model.md): a U-Net narrower than D and diffusion over the newest k slots only, each alone
# and together, and fewer reverse steps at inference, against the paper's layout and against no
# diffusion.
LEAN = ["model.unet_channels=4", "model.diffusion_window=10"]
INDUSTRIAL_ARMS = [
    Arm("t2diff", "T2Diff (U-Net width D, diffusion over all n = 50)", "T2DIFF", keep=True),
    Arm("t2diff.final", "T2Diff, final checkpoint", parent="t2diff"),
    Arm("t2diff.ddim10", "T2Diff, final checkpoint, DDIM 10 steps at inference", parent="t2diff", eval_sets=DDIM10),
    Arm("lean", "T2Diff, U-Net width 4, diffusion over the newest 10 slots", "T2DIFF", LEAN, keep=True),
    Arm("lean.final", "the same, final checkpoint", parent="lean"),
    Arm("lean.ddim10", "the same, final checkpoint, DDIM 10 steps at inference", parent="lean", eval_sets=DDIM10),
    Arm("narrow", "T2Diff, U-Net width 4, diffusion over all n = 50", "T2DIFF", LEAN[:1]),
    Arm("window", "T2Diff, U-Net width D, diffusion over the newest 10 slots", "T2DIFF", LEAN[1:]),
    Arm("nodiff", "no diffusion (FFN)", "T2DIFF_NO_DIFFUSION"),
]
INDUSTRIAL_COMPARISONS = [
    ("lean", "t2diff", "U-Net width 4 and diffusion over the newest 10 slots, against the paper's layout (D = 16)"),
    ("narrow", "t2diff", "U-Net width 4 alone, against the paper's layout"),
    ("window", "t2diff", "diffusion over the newest 10 slots alone, against the paper's layout"),
    ("t2diff.ddim10", "t2diff.final", "DDIM 10 steps against the 50-step DDPM sampler (paper's layout)"),
    ("lean.ddim10", "t2diff.final", "both options and DDIM 10 steps, against the paper's layout"),
    ("lean", "nodiff", "both options, against no diffusion"),
    ("t2diff", "nodiff", "the paper's layout, against no diffusion"),
]


# The profile part: user profile fields (data/user_profiles.h) on short histories, with and
# without them, for T2Diff and the mean-pooled two-tower. T2Diff samples with DDIM in 10 steps
# (no different from the 50-step sampler in the industrial part, and 5x faster to evaluate).
NO_PROFILE = ["model.user_feature_table="]
PROFILE_ARMS = [
    Arm("t2diff_profile", "T2Diff with the profile fields (DDIM 10 steps)", "T2DIFF", DDIM10),
    Arm("t2diff", "T2Diff without them (DDIM 10 steps)", "T2DIFF", NO_PROFILE + DDIM10),
    Arm("mean_profile", "mean-pooled two-tower with the profile fields", "TWO_TOWER_MEAN"),
    Arm("mean", "mean-pooled two-tower without them", "TWO_TOWER_MEAN", NO_PROFILE),
]
PROFILE_COMPARISONS = [
    ("t2diff_profile", "t2diff", "the profile fields, T2Diff (short histories)"),
    ("mean_profile", "mean", "the profile fields, mean-pooled two-tower (short histories)"),
]


def paired_blocks():
    """The study. Epochs: the suites' own (validation-selected epochs in earlier studies were
    17-26 of 30 at D = 4 and about 12 of 15 at D = 16), validated every 3 epochs (the same rule
    for every model of a block)."""
    main = "ml1m_time_paper"
    return [
        Block("2x2", main, 4, 30, 6, 3, core_arms(), CORE_COMPARISONS + PROBE_COMPARISONS),
    ] + [Block("consistency", main, 4, 30, 6, 3,
               [a for a in core_arms() if a.name in ("t2diff", "nodiff", "t2diff.final")] + arms, comparisons, name)
         for name, arms, comparisons in CONSISTENCY] + [
        Block("2x2", main, 16, 15, 3, 3, core_arms(), CORE_COMPARISONS + PROBE_COMPARISONS),
    ] + [Block("datasets", s, 4, e, q, ev, core_arms()[:2] + core_arms()[4:], [CORE_COMPARISONS[0]] + PROBE_COMPARISONS)
         for s, e, q, ev in (("ml100k_paper", 60, 20, 5), ("ml100k_clean", 3, 1, 1),
                             ("movietweetings_paper", 60, 20, 5), ("movietweetings_clean", 3, 1, 1),
                             ("synthetic_paper", 10, 3, 2))] + [
        Block("industrial", "synthetic_paper", 16, 6, 2, 2, INDUSTRIAL_ARMS, INDUSTRIAL_COMPARISONS),
        Block("profile", "synthetic_short", 4, 20, 3, 4, PROFILE_ARMS, PROFILE_COMPARISONS),
        Block("profile", "synthetic_cold", 4, 20, 3, 4, PROFILE_ARMS, PROFILE_COMPARISONS, "cold"),
    ]


QUICK_BLOCKS = [("2x2", "ml1m_time_paper", 4)]


def read_ranks_or_none(files):
    """A run's per-target ranks, or None (the arm then shows as missing) when they cannot be read."""
    if not files:
        return None
    try:
        return paired.read_ranks(files)
    except (OSError, ValueError) as e:
        log("WARNING: %s" % e)
        return None


def run_dir(args, block, arm_name, seed):
    return os.path.join(args.work, "paired", block.suite, "%s-D%d-e%d" % (arm_name, block.width, block.epochs_used),
                        "seed%d" % seed)


def run_paired(args, binary, on_block=None):
    """Trains and evaluates every arm of the selected blocks for every seed; returns
    [(block, {arm: [per-seed record]})] where a record has rc, wall_s, ranks, summary."""
    blocks = paired_blocks()
    parts = args.parts.split(",")
    if args.quick:
        blocks = [b for b in blocks if (b.part, b.suite, b.width) in QUICK_BLOCKS]
    # A part runs all its blocks; "part:name" one of them.
    blocks = [b for b in blocks if (b.part in parts or "%s:%s" % (b.part, b.name) in parts) and
              (not args.widths or b.width in args.widths)]
    datasets, done, prep = {}, {}, {}
    out = []
    for block in blocks:
        suite = find_suite(block.suite)
        block.epochs_used = max(1, int(round((block.quick_epochs if args.quick else block.epochs) * args.epochs_scale)))
        by_arm = OrderedDict((name, []) for name in block.arms)
        for seed in range(1, args.seeds + 1):
            if (block.suite, seed) not in datasets:
                datasets[(block.suite, seed)] = prepare(binary, suite, args.work, seed)
                log("%s seed %d: prepared (%s)" % (block.suite, seed, "; ".join(datasets[(block.suite, seed)][1])))
            dataset, summary, train_samples = datasets[(block.suite, seed)]
            prep.setdefault(block.suite, summary)
            trained = {}
            for arm in block.arms.values():
                if arm.parent is not None:
                    continue
                rundir = run_dir(args, block, arm.name, seed)
                extra = ["data.seed=%d" % seed, "eval.write_ranks=true", "eval.paper_protocol=false"]
                extra += width_sets(block.width) if block.width != 4 else []
                extra += arm.sets + ["checkpoint.dir=" + (os.path.join(rundir, "ckpt") if arm.keep else "")]
                if rundir in done:  # an arm two blocks share is trained once
                    if done[rundir]["extra"] != extra or done[rundir]["every"] != block.every:
                        die("%s: two blocks train it with different settings; give them different epochs" % rundir)
                    trained[arm.name] = done[rundir]
                    by_arm[arm.name].append(done[rundir])
                    continue
                r = run_one(binary, suite, dataset, train_samples, arm.kind, seed, block.epochs_used, args.work,
                            args.resume, args.run_timeout, extra, rundir=rundir, eval_every=block.every)
                done[rundir] = r
                r["extra"], r["every"] = extra, block.every
                r["ranks"] = None
                s = (r.get("metrics") or {}).get("summary") or {}
                if r["rc"] == 0 and "best_evaluation" in s:
                    files = sorted(glob.glob(os.path.join(rundir, "ranks", "test.%d.w*.tsv" % s["best_evaluation"])))
                    r["ranks"] = read_ranks_or_none(files)
                r["summary"] = s
                trained[arm.name] = r
                by_arm[arm.name].append(r)
            for arm in block.arms.values():
                if arm.parent is None:
                    continue
                parent = trained.get(arm.parent)
                rec = {"rc": -3, "wall_s": 0.0, "ranks": None, "summary": {}, "label": arm.label}
                dump = os.path.join(parent["dir"], "eval-" + arm.name.split(".", 1)[1]) if parent else None
                if dump in done:
                    by_arm[arm.name].append(done[dump])
                    continue
                if parent and parent["rc"] == 0:
                    rc, wall, test = run_eval(binary, suite.config, parent["sets"] + arm.eval_sets,
                                              dump + ".log", dump_ranks=dump)
                    rec.update(rc=rc, wall_s=wall, summary=test or {})
                    if rc == 0 and os.path.isfile(dump + ".test"):
                        rec["ranks"] = read_ranks_or_none([dump + ".test"])
                    log("%s D %d seed %d, %s: rc %d, Recall@20 %s" % (block.suite, block.width, seed, arm.label, rc,
                                                                     (test or {}).get("recall@20", "-")))
                by_arm[arm.name].append(rec)
                if dump:
                    done[dump] = rec
        out.append((block, by_arm))
        if on_block:
            on_block(out, prep)  # an interrupted study still leaves a page
    return out, prep


_COMPARED = {}


def compare_arms(by_arm, a, b, metric):
    """paired.compare of arms a and b over their seeds (computed once per page), or the reason
    there is none (a string)."""
    ra, rb = by_arm.get(a, []), by_arm.get(b, [])
    # Keyed by the records themselves, which the cache keeps alive (so their ids stay theirs).
    key = (metric,) + tuple(id(r) for r in ra + rb)
    if key not in _COMPARED:
        _COMPARED[key + ("records",)] = ra + rb
        pairs = [(x["ranks"], y["ranks"]) for x, y in zip(ra, rb) if x.get("ranks") and y.get("ranks")]
        if len(pairs) < len(ra) or not pairs:
            _COMPARED[key] = "missing runs (%d of %d seeds)" % (len(pairs), len(ra))
        else:
            try:
                _COMPARED[key] = paired.compare([p[0] for p in pairs], [p[1] for p in pairs], metric, 20)
            except ValueError as e:
                _COMPARED[key] = str(e)
    return _COMPARED[key]


# The paired study's results are kept per block (one suite at one width in one part) in a store,
# docs/results/paired.json, that the page is rendered from. Running a part replaces that part's
# blocks and keeps the others, so the study can be run a part at a time (it takes hours) and the
# page still shows each block with the command, machine, date and revision that produced it.

COMPARE_FIELDS = ("mean_a", "mean_b", "diff", "lo", "hi", "interval", "user_lo", "user_hi", "rel", "ahead", "seeds",
                  "verdict")


def _plain(v):
    """A JSON-safe scalar: numpy numbers become Python ones, a non-finite float becomes None."""
    if isinstance(v, str) or v is None:
        return v
    if isinstance(v, (bool, int)) or (hasattr(v, "dtype") and v.dtype.kind in "iub"):
        return int(v)
    v = float(v)
    return v if math.isfinite(v) else None


def block_record(block, by_arm, prep, seeds, provenance):
    """What the page shows of one block, as plain data: each arm's mean and sd over seeds, each
    comparison's paired statistics (or the reason there are none), the failed runs, and where and
    when it was measured (provenance: command, machine, revision, started, finished, quick)."""
    suite = find_suite(block.suite)
    arms = []
    for name, recs in by_arm.items():
        arm = block.arms[name]
        ok = [r for r in recs if r["rc"] == 0]
        stat = lambda m: list(mean_std([r["summary"].get(m) for r in ok]))
        arms.append({"name": name, "label": arm.label, "kind": arm.kind, "parent": arm.parent,
                     "recall@20": stat("recall@20"), "ndcg@20": stat("ndcg@20"), "mrr@20": stat("mrr@20"),
                     "sel_epoch": stat("best_epoch") if arm.parent is None else None,
                     "wall_s": list(mean_std([r["wall_s"] for r in ok])), "ok": len(ok), "runs": len(recs)})
    comparisons = []
    for a, b, question in block.comparisons:
        row = {"a": a, "b": b, "question": question}
        for metric in ("recall", "ndcg"):
            c = compare_arms(by_arm, a, b, metric)
            row[metric] = c if isinstance(c, str) else {k: _plain(c[k]) for k in COMPARE_FIELDS}
        comparisons.append(row)
    failed = []
    for recs in by_arm.values():
        for r in recs:
            if r.get("rc") not in (0, None) and not any(r is s for s in failed):
                failed.append(r)
    failed = ["%s: exit %s%s" % (r.get("dir", r.get("label", "?")), r.get("rc"),
                                 ", log `%s`" % os.path.relpath(r["log"], ROOT) if r.get("log") else "")
              for r in failed]
    return dict(provenance, part=block.part, name=block.name, suite=block.suite, config=suite.config, title=suite.title,
                paper=suite.paper, width=block.width, epochs=block.epochs_used, every=block.every, seeds=seeds,
                data=prep.get(block.suite) or [], wall_minutes=sum(r.get("wall_s", 0.0) for recs in by_arm.values()
                                                                    for r in recs) / 60,
                arms=arms, comparisons=comparisons, failed=failed)


def record_key(rec):
    return (rec["part"], rec["suite"], rec["width"], rec.get("name", ""))


def load_store(path):
    """The stored blocks ({key: record}); empty when the file does not exist. A store that cannot
    be read is an error naming the file (the page would silently lose blocks otherwise)."""
    if not os.path.exists(path):
        return OrderedDict()
    try:
        with open(path) as f:
            data = json.load(f)
        return OrderedDict((record_key(r), r) for r in data["blocks"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        die("%s: cannot read the stored results (%s); move it away to start a new store" % (path, e))


def save_store(path, store):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"blocks": ordered_records(store)}, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def ordered_records(store):
    """The stored blocks in the study's order (paired_blocks()), then any others as stored."""
    order = {(b.part, b.suite, b.width, b.name): i for i, b in enumerate(paired_blocks())}
    return sorted(store.values(), key=lambda r: order.get(record_key(r), len(order)))


def _span(started, finished):
    """'2026-01-02 03:04 to 05:06' (the date once when both ends share it)."""
    return "%s to %s" % (started, finished[11:] if finished[:10] == started[:10] else finished)


def _cell(ms, digits=4):
    return fmt(ms[0], ms[1], digits=digits) if ms else "–"


def paired_section(rec):
    """One block's tables: each arm's mean ± sd over seeds, then the comparisons."""
    labels = {a["name"]: a["label"] for a in rec["arms"]}
    L = ["### %s, D = %d (%s)" % (rec["title"], rec["width"],
                                  rec["part"] + (": " + rec["name"] if rec.get("name") else "")), ""]
    L.append("`%s`, D = %d, %d epochs for every model, validated every %d (the test split read at the "
             "validation-selected evaluation; \"final checkpoint\" rows: the model after the last epoch), "
             "%d seeds%s%s. Measured %s UTC, revision %s, %s." % (
                 rec["config"], rec["width"], rec["epochs"], rec["every"], rec["seeds"],
                 ", each with its own split (`data.seed`)" if rec["paper"] else " (one split: the last items)",
                 "; seed 1's data: " + "; ".join(rec["data"]) if rec["data"] else "",
                 _span(rec["started"], rec["finished"]), rec["revision"], rec["machine"].split(",")[0]))
    L += ["", "| model | Recall@20 | NDCG@20 | MRR@20 | sel. epoch | wall s | runs |", "|---|---|---|---|---|---|---|"]
    for a in rec["arms"]:
        L.append("| %s | %s | %s | %s | %s | %s | %d/%d |" % (
            a["label"], _cell(a["recall@20"]), _cell(a["ndcg@20"]), _cell(a["mrr@20"]),
            _cell(a["sel_epoch"], 1) if a["parent"] is None else "final", _cell(a["wall_s"], 0), a["ok"], a["runs"]))
    L += ["", "| A against B | metric | A | B | A - B (95% CI over seeds) | users only | relative | seeds A ahead | "
          "verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rec["comparisons"]:
        for metric in ("recall", "ndcg"):
            c = row[metric]
            name = {"recall": "Recall", "ndcg": "NDCG"}[metric]
            head = "%s: %s against %s" % (row["question"], labels[row["a"]], labels[row["b"]])
            if isinstance(c, str):
                L.append("| %s | %s@20 | | | %s | | | | n/a |" % (head, name, c))
                continue
            verdict = {"A better": "**A better**", "B better": "**B better**", "noise": "noise"}[c["verdict"]]
            rel = "%+.1f%%" % (100 * c["rel"]) if c["rel"] is not None else "–"
            L.append("| %s | %s@20 | %.4f | %.4f | %+.4f (%+.4f, %+.4f)%s | (%+.4f, %+.4f) | %s | %d/%d | %s |" % (
                head, name, c["mean_a"], c["mean_b"], c["diff"], c["lo"], c["hi"],
                "" if c["interval"] == "seeds" else " users", c["user_lo"], c["user_hi"], rel, c["ahead"], c["seeds"],
                verdict))
    L.append("")
    return "\n".join(L)


def decision(records):
    """The verdicts that decide the default (issue: a variant becomes T2Diff's default only if it
    beats no diffusion on ML-1M time order at both widths by an interval that excludes zero):
    [(width, label, comparison)] for each T2Diff variant against the no-diffusion model with the
    same user vector."""
    rows = []
    for rec in records:
        if rec["suite"] != "ml1m_time_paper":
            continue
        arms = {a["name"]: a for a in rec["arms"]}
        for row in rec["comparisons"]:
            if not row["b"].startswith("nodiff") or arms[row["a"]]["kind"] not in ("T2DIFF", "T2DIFF_NO_DRIFT"):
                continue
            if not isinstance(row["recall"], str):
                rows.append((rec["width"], arms[row["a"]]["label"], row["recall"]))
    return rows


def write_paired_page(path, records, store="docs/results/paired.json"):
    """Renders the page from the stored blocks (records: in the study's order, read from `store`)."""
    quick = any(r.get("quick") for r in records)
    seeds = sorted({r["seeds"] for r in records})
    L = ["# Results: does the diffusion help?", "",
         "<!-- Generated by bench/quality/run_study.py from %s; do not edit by hand, rerun the commands below. -->" %
         (os.path.relpath(store, ROOT) if os.path.isabs(store) else store), ""]
    if quick:
        L += ["> **QUICK MODE** (development figures, not the study): %s seeds, few epochs, ML-1M time order at "
              "D = 4 only. The study is `python3 bench/quality/run_study.py`." % "/".join(map(str, seeds)), ""]
    runs = OrderedDict()
    for r in records:
        runs.setdefault((r["command"], r["machine"], r["revision"]), []).append(r)
    L.append("- Measured by (from the repository root, with `../shared/data` present; each command ran the blocks "
             "named after it, and running a part again replaces its blocks):")
    for (cmd, mach, rev), recs in runs.items():
        L.append("  - `%s`: %s UTC, revision %s, on %s; %.0f minutes of runs; %s." % (
            cmd, _span(min(r["started"] for r in recs), max(r["finished"] for r in recs)), rev, mach,
            sum(r["wall_minutes"] for r in recs),
            "; ".join("%s D = %d (%s)" % (r["suite"], r["width"], r["part"] + (": " + r["name"] if r.get("name") else ""))
                      for r in recs)))
    L += ["- Every training run: `t2diff launch` (1 parameter server + 2 workers under mpirun, SYNC), `nice -n 19`, "
          "one run at a time. Seed s sets `data.seed` (under the authors' protocol a new split: other users in "
          "train, validation and test, other target positions; under the clean protocol the split is fixed, the "
          "last items, and only the shards move; the synthetic generator draws another world), the dense and "
          "embedding initialisation, the diffusion noise and the evaluation noise. "
          "All models of a table get the same epochs and the same rule: validated every few epochs, the test split "
          "read at the evaluation with the best validation Recall@20; nothing is tuned on the test split.",
          "- Set-up (configs/quality/): the authors' hyper-parameters (n = 50, k = 10, Adam 0.002, clipping at 5, "
          "batch 512 over 2 workers, lambda = 0.1, T = 50, full softmax), D = 4 (2 id + 2 genre dims) unless a "
          "table says otherwise. *Authors' protocol*: users split 70/10/20; up to 10 training targets per training "
          "user and up to 15 test (and validation) targets per test user (`data.paper_eval_targets_per_user`), at "
          "random positions with a full window of 50 before each (short users: one, the last item). *Clean*: per "
          "user the last item is the test target.",
          "- Statistics (bench/quality/paired.py): the two models of a comparison rank the same targets; per "
          "target the difference of Recall@20 (hit or not) or NDCG@20; the effect is the mean over seeds of the "
          "per-seed mean difference. Its 95% interval is a t-interval over the seeds' mean differences (each "
          "carries both the training noise and the test sample's). Beside it, *users only*: a bootstrap (2,000 "
          "draws) that resamples the users within each seed (a user's targets together), the test sample's noise "
          "alone. **A better** / **B better**: the seeds' interval excludes 0; *noise*: it does not. \"Seeds A "
          "ahead\": seeds whose mean difference is > 0.",
          "- The popularity floor and the sampled softmax's counts are training targets only.", ""]
    dec = decision(records)
    if dec:
        L += ["## The answer", "",
              "T2Diff variants against no diffusion on ML-1M time order (Recall@20, paired over %s seeds):" %
              "/".join(map(str, seeds)), ""]
        L += ["| D | model | Recall@20 | no diffusion | difference (95% CI over seeds) | seeds ahead | verdict |",
              "|---|---|---|---|---|---|---|"]
        for width, label, c in dec:
            L.append("| %d | %s | %.4f | %.4f | %+.4f (%+.4f, %+.4f) | %d/%d | %s |" % (
                width, label, c["mean_a"], c["mean_b"], c["diff"], c["lo"], c["hi"], c["ahead"], c["seeds"],
                {"A better": "**better**", "B better": "**worse**", "noise": "noise"}[c["verdict"]]))
        labels = sorted({l for _, l, _ in dec})
        widths_of = {label: sorted({w for w, l, _ in dec if l == label}) for label in labels}
        better = {label: [w for w, l, c in dec if l == label and c["verdict"] == "A better"] for label in labels}
        winners = [label for label in labels if widths_of[label] == [4, 16] and better[label] == [4, 16]]
        partial = [label for label in labels if better[label] and label not in winners]
        L.append("")
        if winners:
            L.append("Beats no diffusion at D = 4 and D = 16 by an interval that excludes zero: %s." %
                     "; ".join(winners))
        else:
            L.append("No T2Diff variant measured at both widths (4 and 16) beats no diffusion at both by an interval "
                     "that excludes zero: the default stays the paper's model.")
        if partial:
            L.append("")
            L.append("Better than no diffusion where measured, but not shown at both widths: %s." % "; ".join(
                "%s (better at D = %s; measured at D = %s)" % (l, ", ".join(map(str, better[l])),
                                                              ", ".join(map(str, widths_of[l]))) for l in partial))
        L.append("")
    L += ["## Paired tables", ""] + [paired_section(r) for r in records]
    failed = [f for r in records for f in r["failed"]]
    if failed:
        L += ["## Failed runs", ""] + ["- " + f for f in failed] + [""]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(L))
    log("wrote %s" % path)


# ------------------------------------------------------------------------------------------
# Aggregation

def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    m = statistics.fmean(values)
    s = statistics.stdev(values) if len(values) > 1 else None
    return m, s


def fmt(m, s, digits=4):
    if m is None:
        return "–"
    if s is None:
        return "%.*f" % (digits, m)
    return "%.*f ± %.*f" % (digits, m, digits, s)


def key(metric, k):
    return "%s@%d" % (metric, k)


def aggregate(runs):
    """runs: the finished runs of one (suite, model). Returns {name: (mean, std)} and counts."""
    ok = [r for r in runs if r["rc"] == 0]
    agg = {}
    for metric in METRICS:
        for k in KS:
            agg[key(metric, k)] = mean_std([r["metrics"]["summary"].get(key(metric, k)) for r in ok])
            # The authors' reading: the best test value over epochs, per metric separately.
            agg["best:" + key(metric, k)] = mean_std(
                [max([e.get(key(metric, k), 0.0) for e in r["metrics"]["eval"] if e.get("split") == "test"] or [0.0])
                 for r in ok])
    agg["best_epoch"] = mean_std([r["metrics"]["summary"].get("best_epoch") for r in ok])
    agg["wall_s"] = mean_std([r["wall_s"] for r in ok])
    agg["train_s"] = mean_std([r["metrics"]["summary"].get("train_seconds") for r in ok])
    agg["samples_per_s"] = mean_std([r["metrics"]["summary"].get("samples_per_s") for r in ok])
    return agg, len(ok), len(runs)


# ------------------------------------------------------------------------------------------
# Curves

def plot_suite(gnuplot, suite, by_model, work, outdir):
    """One PNG per suite: validation Recall@20 per epoch (mean over seeds) and the training loss."""
    datdir = os.path.join(work, "plots")
    os.makedirs(datdir, exist_ok=True)
    valid_plots, loss_plots = [], []
    for model, runs in by_model.items():
        ok = [r for r in runs if r["rc"] == 0]
        if not ok:
            continue
        per_epoch = {}
        for r in ok:
            for e in r["metrics"]["eval"]:
                if e.get("split") == "valid":
                    per_epoch.setdefault(e["epoch"], []).append(e.get("recall@20", 0.0))
        vpath = os.path.join(datdir, "%s.%s.valid.dat" % (suite.name, model))
        with open(vpath, "w") as f:
            for ep in sorted(per_epoch):
                f.write("%d %.6f\n" % (ep, statistics.fmean(per_epoch[ep])))
        lpath = os.path.join(datdir, "%s.%s.loss.dat" % (suite.name, model))
        with open(lpath, "w") as f:
            for t in ok[0]["metrics"]["train"]:
                f.write("%d %.6f\n" % (t["step"], t.get("tower_loss", t.get("loss", 0.0))))
        valid_plots.append("'%s' using 1:2 with linespoints title '%s'" % (vpath, MODELS[model]))
        loss_plots.append("'%s' using 1:2 with lines title '%s'" % (lpath, MODELS[model]))
    if not valid_plots:
        return None
    png = os.path.join(outdir, suite.name + ".png")
    script = "\n".join([
        "set terminal pngcairo size 1200,450 font 'sans,9'" if gnuplot_has_cairo(gnuplot) else
        "set terminal png size 1200,450",
        "set output '%s'" % png,
        "set termoption noenhanced",
        "set multiplot layout 1,2 title '%s'" % suite.title.replace("'", "''"),
        "set grid",
        "set key bottom right",
        "set xlabel 'epoch'", "set ylabel 'validation Recall@20'",
        "set title 'validation Recall@20 (mean over seeds)'",
        "plot " + ", ".join(valid_plots),
        "set key top right",
        "set xlabel 'step'", "set ylabel 'tower loss (softmax cross-entropy)'",
        "set title 'training loss (first seed)'",
        "plot " + ", ".join(loss_plots),
        "unset multiplot",
    ])
    gp = os.path.join(datdir, suite.name + ".gp")
    with open(gp, "w") as f:
        f.write(script + "\n")
    if subprocess.call([gnuplot, gp], cwd=ROOT) != 0:
        log("WARNING: gnuplot failed for %s" % suite.name)
        return None
    return png


_CAIRO = {}


def gnuplot_has_cairo(gnuplot):
    if gnuplot not in _CAIRO:
        try:
            out = subprocess.run([gnuplot, "-e", "set terminal"], capture_output=True, text=True).stderr
            out += subprocess.run([gnuplot, "-e", "set terminal"], capture_output=True, text=True).stdout
        except OSError:
            out = ""
        _CAIRO[gnuplot] = "pngcairo" in out
    return _CAIRO[gnuplot]


# ------------------------------------------------------------------------------------------
# Facts about the data that explain the results

def file_order_facts():
    """File order versus time order on ML-1M: the most common last item, and neighbouring ids."""
    facts = []
    data = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "ml-1m"))
    try:
        last = {}
        with gzip.open(os.path.join(data, "ratings_users1-2999.dat.gz"), "rt", encoding="latin-1") as f:
            for line in f:
                p = line.split("::")
                if len(p) >= 2:
                    last[p[0]] = p[1]
        item, n = Counter(last.values()).most_common(1)[0]
        facts.append("In file order (users 1-2999), %d of %d users (%.1f%%) end with the same movie, id %s."
                     % (n, len(last), 100.0 * n / len(last), item))
        tlast = {}
        with gzip.open(os.path.join(data, "ml-1m_sequences.txt.gz"), "rt") as f:
            for line in f:
                p = line.split()
                if len(p) >= 2:
                    tlast[p[0]] = p[-1]
        titem, tn = Counter(tlast.values()).most_common(1)[0]
        # Neighbouring ids: adjacent behaviours whose movie ids differ by at most 5 (same users).
        fseq, tseq = {}, {}
        with gzip.open(os.path.join(data, "ratings_users1-2999.dat.gz"), "rt", encoding="latin-1") as f:
            for line in f:
                p = line.split("::")
                if len(p) >= 2:
                    fseq.setdefault(p[0], []).append(int(p[1]))
        with gzip.open(os.path.join(data, "ml-1m_sequences.txt.gz"), "rt") as f:
            for line in f:
                p = line.split()
                if p and p[0] in fseq:
                    tseq[p[0]] = [int(x) for x in p[1:]]

        def near(seqs):
            pairs = [(a, b) for q in seqs for a, b in zip(q, q[1:])]
            return 100.0 * sum(abs(a - b) <= 5 for a, b in pairs) / max(1, len(pairs))
        facts.append("In file order, %.1f%% of adjacent behaviours of users 1-2999 have movie ids within 5 of each "
                     "other; in time order, the same users, %.1f%%: the next movie is often the previous id plus "
                     "one to five, which an id embedding learns." % (near(fseq.values()), near(tseq.values())))
        facts.insert(1, "In time order (all users) the most common last movie (id %s) ends %d of %d sequences "
                     "(%.1f%%); that matters when the last item is the target (the clean protocol, or "
                     "`paper_eval_target: LAST`)." % (titem, tn, len(tlast), 100.0 * tn / len(tlast)))
    except (OSError, IndexError, ValueError):
        pass
    return facts


# ------------------------------------------------------------------------------------------
# The page

def table(suite, by_model, popularity, quick):
    cols = [key(m, k) for m in METRICS for k in KS]
    head = ["model"] + ["%s@%d" % ({"recall": "Recall", "mrr": "MRR", "ndcg": "NDCG"}[m], k)
                        for m in METRICS for k in KS] + ["sel. epoch", "wall s", "samples/s", "runs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    aggs = {}
    for model, runs in by_model.items():
        agg, ok, total = aggregate(runs)
        aggs[model] = agg
        row = [MODELS[model]] + [fmt(*agg[c]) for c in cols]
        row += [fmt(*agg["best_epoch"], digits=1), fmt(*agg["wall_s"], digits=0), fmt(*agg["samples_per_s"], digits=0),
                "%d/%d" % (ok, total)]
        lines.append("| " + " | ".join(row) + " |")
    if popularity:
        lines.append("| popularity (floor) | " + " | ".join("%.4f" % popularity.get(c, float("nan")) for c in cols)
                     + " | | | | |")
    refs = []
    if suite.name.startswith("ml1m_") and suite.paper:
        refs.append(("*paper: T2Diff, all 6,040 users, file order, 80/20, best test over epochs*", PAPER_ML1M))
    for label, vals in REFERENCE.get(suite.name, []):
        refs.append(("*reference implementation (t2diff-model.md §7): %s*" % label, vals))
    for label, vals in refs:
        lines.append("| " + label + " | " + " | ".join("%.4f" % vals[c] if c in vals else "" for c in cols)
                     + " | | | | |")
    out = "\n".join(lines)
    if suite.paper:
        best = ["", "The authors' reading of the same runs (best test value over epochs, each metric separately; "
                "optimistic, for comparison with the paper only):", "",
                "| model | Recall@2 | Recall@20 | MRR@2 | MRR@20 | NDCG@20 |", "|---|---|---|---|---|---|"]
        for model, agg in aggs.items():
            best.append("| %s | %s |" % (MODELS[model], " | ".join(
                fmt(*agg["best:" + c]) for c in ("recall@2", "recall@20", "mrr@2", "mrr@20", "ndcg@20"))))
        out += "\n" + "\n".join(best)
    return out, aggs


def gap_check(a, b, metric):
    """a beats b on metric by more than two standard deviations of the difference."""
    (ma, sa), (mb, sb) = a[metric], b[metric]
    if ma is None or mb is None:
        return None, "no runs"
    if sa is None or sb is None:
        return None, "%.4f vs %.4f (1 seed: no standard deviation)" % (ma, mb)
    sd = math.sqrt(sa * sa + sb * sb)
    ok = ma - mb > 2 * sd
    return ok, "%.4f vs %.4f, gap %.4f %s 2 sd = %.4f" % (ma, mb, ma - mb, ">" if ok else "<=", 2 * sd)


def verdict(ok):
    return {True: "**met**", False: "**missed**", None: "n/a"}[ok]


def targets(all_aggs, width_aggs=None):
    """width_aggs: {D: {model: aggregate}} of the beyond part's ML-1M time-order widths."""
    rows = []
    f = all_aggs.get("ml1m_file_paper", {}).get("T2DIFF")
    if f:
        r, m = f["recall@20"][0], f["mrr@20"][0]
        ok = None if r is None else (r >= 0.33 and m >= 0.092)
        rows.append(("ML-1M file order, authors' protocol: T2Diff Recall@20 >= 0.33 and MRR@20 >= 0.092",
                     verdict(ok), "Recall@20 %s, MRR@20 %s" % (fmt(*f["recall@20"]), fmt(*f["mrr@20"]))))
    # The time-order targets at the authors' D = 4 (the main table) and at each wider D measured.
    time_tables = [("D = 4", all_aggs.get("ml1m_time_paper", {}))]
    time_tables += [("D = %d" % w, aggs) for w, aggs in sorted((width_aggs or {}).items())]
    for label, t in time_tables:
        if "T2DIFF" not in t:
            continue
        a = t["T2DIFF"]
        r, n = a["recall@20"][0], a["ndcg@20"][0]
        ok = None if r is None else (r >= 0.14 and n >= 0.05)
        rows.append(("ML-1M time order, authors' protocol, %s: T2Diff Recall@20 >= 0.14 and NDCG@20 >= 0.05" % label,
                     verdict(ok), "Recall@20 %s, NDCG@20 %s" % (fmt(*a["recall@20"]), fmt(*a["ndcg@20"]))))
        for other in ("T2DIFF_NO_DIFFUSION", "TWO_TOWER_MEAN"):
            if other in t:
                for metric in ("recall@20", "ndcg@20"):
                    ok, text = gap_check(a, t[other], metric)
                    rows.append(("ML-1M time order, %s: T2Diff above %s on %s by > 2 sd" % (label, MODELS[other], metric),
                                 verdict(ok), text))
    for name in ("ml100k_paper", "ml100k_clean", "movietweetings_paper", "movietweetings_clean"):
        s = all_aggs.get(name, {})
        if "T2DIFF" not in s:
            continue
        for other in ("T2DIFF_NO_DIFFUSION", "TWO_TOWER_MEAN"):
            if other in s and s["T2DIFF"]["recall@20"][0] is not None and s[other]["recall@20"][0] is not None:
                a, b = s["T2DIFF"]["recall@20"][0], s[other]["recall@20"][0]
                rows.append(("%s: T2Diff above %s (Recall@20, mean)" % (name, MODELS[other]), verdict(a > b),
                             "%.4f vs %.4f" % (a, b)))
    lines = ["| target | verdict | figures |", "|---|---|---|"]
    lines += ["| %s | %s | %s |" % r for r in rows]
    return "\n".join(lines)


def shown_arguments(argv):
    """The study's arguments as a page shows them: without the flags that do not change what is
    measured (--no-build, --resume, and --build-dir with its local path)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--no-build", "--resume"):
            pass
        elif a == "--build-dir":
            skip = True
        elif not a.startswith("--build-dir="):
            out.append(a)
    return out


def write_page(args, suites, results, prep, plots, started, finished, mach, rev, beyond=None):
    quick = args.quick
    cmd = "python3 bench/quality/run_study.py" + (" --quick" if quick else "")
    extra = [a for a in shown_arguments(sys.argv[1:]) if a != "--quick"]
    if extra:
        cmd += " " + " ".join(extra)
    L = []
    L.append("# Results: T2Diff on real data")
    L.append("")
    L.append("<!-- Generated by bench/quality/run_study.py; do not edit by hand, rerun the command below. -->")
    L.append("")
    if quick:
        L.append("> **QUICK MODE** (development figures, not the study): 1 seed, few epochs, and the ML-1M "
                 "clean-protocol suites left out. The study is `python3 bench/quality/run_study.py`.")
        L.append("")
    L.append("- Command: `%s` (from the repository root, with `../shared/data` present)" % cmd)
    L.append("- Machine: %s" % mach)
    runs = [r for suite_runs in results.values() for model_runs in suite_runs.values() for r in model_runs]
    runs += beyond_runs(beyond)
    L.append("- Date: %s to %s UTC; %.0f minutes in all; revision %s. The %d runs' own wall times add up to %.0f "
             "minutes (with `--resume`, runs finished earlier with the identical command are reused, not rerun)." % (
        started.strftime("%Y-%m-%d %H:%M"), finished.strftime("%H:%M"), (finished - started).total_seconds() / 60, rev,
        len(runs), sum(r.get("wall_s", 0.0) for r in runs) / 60))
    L.append("- Every run: `t2diff launch` (1 parameter server + 2 workers under mpirun, SYNC), `nice -n 19`, one "
             "run at a time, %d seed(s) per model unless a suite says fewer (seeds change the dense and embedding initialisation, the diffusion "
             "noise and the evaluation noise; the data split is fixed)." % args.seeds)
    L.append("- Set-up (configs/quality/): the authors' hyper-parameters: n = 50, k = 10 (last k), D = 4 (2 id + 2 "
             "genre dims, genres mean-pooled), Adam lr 0.002 (dense and sparse) with gradient clipping at norm 5, "
             "batch 512 (256 per worker), lambda = 0.1, T = 50, exponential schedule, full softmax over the "
             "catalogue. Ranking is against the whole catalogue; rank = 1 + items scored strictly higher.")
    L.append("- Protocols. *Authors'*: users split at random 70/10/20 into train/valid/test, up to 10 training "
             "samples per training user at random positions with a full window, up to 15 per validation/test "
             "user drawn the same way (`data.paper_eval_targets_per_user`; short users: the last item). "
             "*Clean*: per user the last item is the test target, the second last the validation target. Both: "
             "the epoch is selected on validation Recall@20 and the test split is read at that epoch "
             "(the authors' best-test-over-epochs reading is shown separately, labelled).")
    L.append("- Cells: mean ± sample standard deviation over seeds, test split, validation-selected epoch. "
             "*wall s*: the whole run (start, training, per-epoch validation and test, end); *samples/s*: training "
             "throughput over both workers. *popularity*: items ranked by their number of training targets, "
             "a floor.")
    L.append("")
    L.append("## Targets (issue 7)")
    L.append("")
    L.append("At the validation-selected epoch, mean over seeds. \"By > 2 sd\": the gap between the two means "
             "exceeds twice sqrt(sd_a^2 + sd_b^2), the standard deviation of the difference of two runs.")
    L.append("")
    all_aggs = {}
    tables = []
    for suite in suites:
        if suite.name not in results:
            continue
        by_model = results[suite.name]
        pop = None
        for runs in by_model.values():
            for r in runs:
                if r["rc"] == 0 and r["metrics"]["summary"].get("popularity"):
                    pop = r["metrics"]["summary"]["popularity"]
                    break
            if pop:
                break
        text, aggs = table(suite, by_model, pop, quick)
        all_aggs[suite.name] = aggs
        sec = ["## %s" % suite.title, "",
               "`%s`, %d epoch(s), validated every %d, %d seed(s). Data: %s" % (
                   suite.config, suite.epochs(args), suite.eval_every, suite.seeds(args),
                   "; ".join(prep.get(suite.name, []))), "", text]
        if plots.get(suite.name):
            rel = os.path.relpath(plots[suite.name], os.path.join(ROOT, "docs"))
            sec += ["", "![training curves, %s](%s)" % (suite.title, rel)]
        tables.append("\n".join(sec))
    width_aggs = {}
    for width, by_model in (beyond["widths"].items() if beyond else ()):
        width_aggs[width] = {model: aggregate(runs)[0] for model, runs in by_model.items()}
    L.append(targets(all_aggs, width_aggs))
    L.append("")
    facts = file_order_facts()
    if facts:
        L.append("## Why file order is easier")
        L.append("")
        L.append("The authors built ML-1M sequences in `ratings.dat` line order, which within a user is not "
                 "chronological. Counted from the data files by this script: " + " ".join(facts) +
                 " The popularity floor (global counts) sees neither.")
        L.append("")
    L.append("\n\n".join(tables))
    L.append("")
    if beyond:
        L.append(beyond_section(beyond, next(s.title for s in SUITES if s.name == BEYOND_SUITE)))
    failed = [r for s in results.values() for runs in s.values() for r in runs if r["rc"] != 0]
    if failed:
        L.append("## Failed runs")
        L.append("")
        for r in failed:
            L.append("- %s %s seed %d: exit %d, log `%s`" % (r["suite"], r["model"], r["seed"], r["rc"],
                                                           os.path.relpath(r["log"], ROOT)))
        L.append("")
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results, "w") as f:
        f.write("\n".join(L))
    log("wrote %s" % args.results)


# ------------------------------------------------------------------------------------------

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="paired study: 2 seeds, ML-1M time order D = 4 only, few epochs; classic: 1 seed (< 15 min)")
    p.add_argument("--classic", action="store_true",
                   help="instead of the paired study: every model on every suite, fixed split, 3 seeds (the earlier "
                        "page; with --beyond, widths and inference variants)")
    p.add_argument("--parts", default="2x2,consistency,datasets,industrial,profile",
                   help="paired study: which parts (comma-separated of 2x2, consistency, datasets; "
                        "consistency:tokens, consistency:sampler or consistency:items for one block; "
                        "industrial; profile, or profile:cold for its very short histories alone)")
    p.add_argument("--widths", default="", help="paired study: only these D (comma-separated; default all)")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds per model (paired: default 5, 2 with --quick; classic: 3, 1 with --quick)")
    p.add_argument("--suites", default="", help="comma-separated suite names (default: all of the mode)")
    p.add_argument("--models", default="", help="comma-separated model kinds (default: all five)")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every suite's epochs (at least 1)")
    p.add_argument("--work", default=os.path.join(ROOT, "t2diff-run", "quality"), help="runs, logs, data")
    p.add_argument("--results", default=None,
                   help="the page to write (default docs/RESULTS.md; with --quick, RESULTS-quick.md in --work)")
    p.add_argument("--store", default=None,
                   help="paired study: the stored blocks the page is rendered from, updated block by block (default "
                        "docs/results/paired.json; with --quick, paired-quick.json in --work)")
    p.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    p.add_argument("--no-build", action="store_true", help="use the existing build as it is")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--resume", action="store_true", help="reuse finished runs with identical commands")
    p.add_argument("--beyond", action="store_true",
                   help="also: widths D = 16, 64 for every model, the generated token at inference, diffusion steps "
                        "T = 10, 25, 50, 100 (on %s)" % BEYOND_SUITE)
    p.add_argument("--beyond-parts", default="widths,inference,steps",
                   help="with --beyond: which parts to run (comma-separated of widths, inference, steps)")
    p.add_argument("--render", action="store_true",
                   help="paired study: write the page from the stored blocks alone (runs nothing)")
    p.add_argument("--run-timeout", type=float, default=1800, help="seconds before one run is abandoned")
    args = p.parse_args()
    if args.seeds is None:
        args.seeds = (1 if args.quick else 3) if args.classic else (2 if args.quick else 5)
    try:
        args.widths = [int(w) for w in args.widths.split(",") if w]
    except ValueError:
        die("--widths: comma-separated integers, got %r" % args.widths)
    known = ({"2x2", "consistency", "datasets", "industrial", "profile", "profile:cold"} |
             {"consistency:" + name for name, _, _ in CONSISTENCY})
    unknown_parts = set(args.parts.split(",")) - known
    if unknown_parts:
        die("--parts: unknown part(s) %s; known: %s" % (", ".join(sorted(unknown_parts)), ", ".join(sorted(known))))
    os.chdir(ROOT)
    args.work = os.path.abspath(args.work)
    if args.results is None:
        args.results = (os.path.join(args.work, "RESULTS-quick.md") if args.quick and not args.classic
                        else os.path.join(ROOT, "docs", "RESULTS.md"))
    if args.store is None:
        args.store = (os.path.join(args.work, "paired-quick.json") if args.quick
                      else os.path.join(ROOT, "docs", "results", "paired.json"))
    args.results = os.path.abspath(args.results)
    args.store = os.path.abspath(args.store)
    args.build_dir = os.path.abspath(args.build_dir)

    suites = [s for s in SUITES if (s.quick_epochs is not None or not args.quick)]
    if args.suites:
        want = args.suites.split(",")
        unknown = [w for w in want if w not in {s.name for s in SUITES}]
        if unknown:
            die("unknown suite(s): %s; known: %s" % (", ".join(unknown), ", ".join(s.name for s in SUITES)))
        suites = [s for s in SUITES if s.name in want]
    models = list(MODELS)
    if args.models:
        models = args.models.split(",")
        bad = [m for m in models if m not in MODELS]
        if bad:
            die("unknown model kind(s): %s; known: %s" % (", ".join(bad), ", ".join(MODELS)))

    if args.render and not args.classic:
        write_paired_page(args.results, ordered_records(load_store(args.store)), args.store)
        return
    started = datetime.datetime.utcnow()
    binary, gnuplot = setup(args)
    mach = machine()
    rev = git_revision()
    if not args.classic:
        log("machine: %s; revision %s; paired study, parts %s, %d seeds" % (mach, rev, args.parts, args.seeds))
        cmd = "python3 bench/quality/run_study.py" + "".join(" " + a for a in shown_arguments(sys.argv[1:]))
        store = load_store(args.store)
        block_started = [started]

        def on_block(results, prep):
            # Each block is stored (and the page rewritten) as it finishes: an interrupted study
            # keeps what it measured. Its time span is its training runs' own (a resumed study
            # reuses runs made earlier).
            block, by_arm = results[-1]
            trained = [r for recs in by_arm.values() for r in recs if "finished_at" in r]
            utc = lambda t: datetime.datetime.utcfromtimestamp(t).strftime("%Y-%m-%d %H:%M")
            provenance = {"command": cmd, "machine": mach, "revision": rev, "quick": args.quick,
                          "started": utc(min(r["finished_at"] - r["wall_s"] for r in trained)) if trained else
                          block_started[0].strftime("%Y-%m-%d %H:%M"),
                          "finished": utc(max(r["finished_at"] for r in trained)) if trained else
                          datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M")}
            block_started[0] = datetime.datetime.utcnow()
            rec = block_record(block, by_arm, prep, args.seeds, provenance)
            store[record_key(rec)] = rec
            save_store(args.store, store)
            write_paired_page(args.results, ordered_records(store), args.store)

        run_paired(args, binary, on_block)
        log("done in %.1f minutes" % ((datetime.datetime.utcnow() - started).total_seconds() / 60))
        return
    log("machine: %s; revision %s; %d suites x %d models x %d seeds" % (mach, rev, len(suites), len(models), args.seeds))
    results, prep, plots = OrderedDict(), {}, {}
    plot_dir = os.path.join(os.path.dirname(args.results), "results")
    # Curves of an earlier study would outlive this one's page: start clean.
    if os.path.isdir(plot_dir):
        for f in os.listdir(plot_dir):
            if f.endswith(".png") and f[:-4] in {s.name for s in SUITES}:
                os.remove(os.path.join(plot_dir, f))
    for suite in suites:
        epochs = suite.epochs(args)
        dataset, summary, train_samples = prepare(binary, suite, args.work)
        prep[suite.name] = summary
        log("%s: prepared (%s); %d epoch(s)" % (suite.name, "; ".join(summary), epochs))
        by_model = OrderedDict()
        for model in models:
            by_model[model] = [run_one(binary, suite, dataset, train_samples, model, seed, epochs, args.work, args.resume,
                                       args.run_timeout) for seed in range(1, suite.seeds(args) + 1)]
            results[suite.name] = by_model
        if gnuplot and not args.no_plots:
            os.makedirs(plot_dir, exist_ok=True)
            png = plot_suite(gnuplot, suite, by_model, args.work, plot_dir)
            if png:
                plots[suite.name] = png
        # Write the page after every suite, so an interrupted study still leaves one.
        write_page(args, suites, results, prep, plots, started, datetime.datetime.utcnow(), mach, rev)
    if args.beyond:
        beyond = run_beyond(args, binary, models)
        write_page(args, suites, results, prep, plots, started, datetime.datetime.utcnow(), mach, rev, beyond)
    log("done in %.1f minutes" % ((datetime.datetime.utcnow() - started).total_seconds() / 60))


if __name__ == "__main__":
    main()
