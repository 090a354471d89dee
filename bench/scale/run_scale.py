#!/usr/bin/env python3
"""The scale run: every figure of docs/SCALE.md, measured end to end on this machine.

    python3 bench/scale/run_scale.py                  # full size; writes docs/SCALE.md
    python3 bench/scale/run_scale.py --quick          # 1/100 of the size; writes t2diff-run/scale-quick/SCALE-quick.md
    python3 bench/scale/run_scale.py --parts tables   # one part (tables, catalogue, stream, prepare, hosts, model)
    python3 bench/scale/run_scale.py --render         # rewrite the page from the stored parts

Parts (each stores its record in docs/results/scale.json, or t2diff-run/scale-quick/scale-quick.json with --quick, and
the page is re-rendered from all stored records after each part, so parts can run in separate
sittings):
  tables     4 parameter servers + 2 workers holding a user table (dim 16) and an item table
             (dim 64), both row-wise Adagrad: memory per server and table against
             rows x (payload + state) x 1.15 + 32 B/row, pull and push against the in-process
             table, save and load of the shard set (bench_ps_tables, two runs); between them a
             training job against the filled tables, warm-started from the saved shard set
             (t2diff launch, 4 servers + 2 workers, D = 64).
  catalogue  a synthetic catalogue with a user-id table: generate, train with sampled softmax on
             2 servers + 2 workers, then distributed evaluation of a sample of test users against
             the whole catalogue, exact and through an IVF index (t2diff).
  stream     the generator's shards at two sizes: bytes on disk per interaction, the peak RSS of
             generating, and of every rank of a fixed number of training steps from them.
  prepare    `prepare` of a raw CSV at two sizes (10^7 and 10^8 rows), its peak RSS.
  hosts      bench/bench_multihost.sh: pull, push and allreduce between three network-namespace
             hosts against within one.
  model      bench_model: the model kinds at the authors' and the industrial size (D = 64,
             n = 200, batch 1024, 4,096 negatives).
Peak RSS of a command is the kernel's ru_maxrss of it and the processes it waited for (for
mpirun: the largest rank).
"""
import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MPI = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none"]
PARTS = ["tables", "catalogue", "stream", "prepare", "hosts", "model"]

# Sizes: full, and the quick mode's 1/100 (about).
SIZES = {
    "full": {
        "tables": {"user_rows": 100_000_000, "item_rows": 1_000_000, "train_users": 1_000_000, "train_steps": 200},
        "catalogue": {"users": 1_000_000, "items": 1_000_000, "steps": 300, "eval_users": 10_000},
        # 10^8 and 10^9 interactions (about 2 and 21 GB of deflated shards).
        "stream": {"users": [2_500_000, 25_000_000], "seq_len": 40, "train_steps": 200},
        "prepare": {"csv_rows": [10_000_000, 100_000_000]},
        "hosts": {"iterations": 300},
    },
    "quick": {
        "tables": {"user_rows": 1_000_000, "item_rows": 10_000, "train_users": 10_000, "train_steps": 40},
        "catalogue": {"users": 10_000, "items": 10_000, "steps": 60, "eval_users": 1_000},
        "stream": {"users": [25_000, 250_000], "seq_len": 40, "train_steps": 50},
        # The sort buffer and the sample files' chunks are scaled down with the log, so that both
        # sizes sort through runs on disk and fill the writers' chunk buffers.
        "prepare": {"csv_rows": [100_000, 1_000_000], "buffer_mb": 2, "chunk_bytes": 16384},
        "hosts": {"iterations": 50},
    },
}


def log(msg):
    print("[scale %s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def die(msg):
    print("run_scale: " + msg, file=sys.stderr)
    sys.exit(1)


def machine():
    model = "unknown CPU"
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    ext = [e for e, f in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AMX", "amx_tile")) if f in flags]
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return "%s, %d cores, %s, %.0f GiB" % (model, os.cpu_count(), "/".join(ext) or "no AVX2", mem)


def git_revision():
    try:
        rev = subprocess.check_output(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, text=True).strip()
        dirty = subprocess.call(["git", "diff", "--quiet", "HEAD", "--", ".", ":!docs/SCALE.md", ":!docs/results"],
                                cwd=ROOT) != 0
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(cmd, logpath, timeout_s, env=None):
    """Runs cmd with its output in logpath; returns (exit code, seconds, peak RSS bytes, output)."""
    t0 = time.time()
    with open(logpath, "w") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        deadline = t0 + timeout_s
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                os.killpg(p.pid, 9)
                pid, status, usage = os.wait4(p.pid, 0)
                break
            time.sleep(0.2)
    rc = os.waitstatus_to_exitcode(status)
    p.returncode = rc  # reaped by wait4 above
    with open(logpath) as f:
        text = f.read()
    return rc, time.time() - t0, usage.ru_maxrss * 1024, text


def checked(cmd, logpath, timeout_s, what, env=None):
    rc, secs, rss, text = run(cmd, logpath, timeout_s, env)
    if rc != 0:
        tail = "\n".join(text.splitlines()[-15:])
        die("%s failed (exit %d, %.0f s); log %s:\n%s" % (what, rc, secs, logpath, tail))
    return secs, rss, text


def json_line(text, what):
    for line in reversed(text.splitlines()):
        if line.startswith("json "):
            return json.loads(line[5:])
    die("%s printed no json line" % what)


def grab(pattern, text, cast=float, default=None):
    m = re.search(pattern, text, re.M)
    return cast(m.group(1)) if m else default


# ---------------------------------------------------------------- parts


def pulled_rows_by_shard(text):
    """Each server's pulled rows from the job's log, in shard order (the servers log in any order)."""
    pairs = re.findall(r"server stats: (?:.*?\bshard: (\d+))?.*?pulled_rows: (\d+)", text)
    return [int(rows) for _, rows in sorted(pairs, key=lambda p: int(p[0] or 0))]


def part_tables(args, size, work):
    bench = os.path.join(args.build_dir, "bench", "bench_ps_tables")
    ckpt = os.path.join(work, "tables-ckpt")
    shutil.rmtree(ckpt, ignore_errors=True)
    flags = ["--servers=4", "--user_rows=%d" % size["user_rows"], "--item_rows=%d" % size["item_rows"]]
    cmd = MPI + ["-np", "6", bench] + flags
    log("tables: fill %d user + %d item rows on 4 servers, then save" % (size["user_rows"], size["item_rows"]))
    _, _, text = checked(cmd + ["--checkpoint=" + ckpt], os.path.join(work, "tables-fill.log"), 3 * 3600, "tables (fill)")
    fill = json_line(text, "bench_ps_tables")
    train = part_tables_train(args, size, work, ckpt)
    log("tables: load the shard set into 4 fresh servers")
    # The in-process baseline again: pull rates on this machine vary between runs, so the ratio is
    # measured in both jobs.
    _, _, text = checked(cmd + ["--load=" + ckpt], os.path.join(work, "tables-load.log"), 3 * 3600, "tables (load)")
    load = json_line(text, "bench_ps_tables")
    shutil.rmtree(ckpt, ignore_errors=True)
    return {"fill": fill, "load": load, "train": train,
            "commands": [" ".join(["mpirun", "-np", "6", "build/bench/bench_ps_tables"] + flags + [f]) for f in
                         ("--checkpoint=DIR", "--load=DIR")]}


def tables_train_config(work, ckpt, size):
    return """cluster { num_servers: 4 num_workers: 2 timeout_s: 1800 }
tables { name: "user_id" dim: 16 optimizer { kind: ROWWISE_ADAGRAD learning_rate: 0.05 } init_from: "%(ckpt)s" }
tables { name: "item_id" dim: 64 optimizer { kind: ROWWISE_ADAGRAD learning_rate: 0.05 } init_from: "%(ckpt)s" }
data {
  source: SYNTHETIC dataset_dir: "%(work)s/tables-data" max_seq_len: 50 session_len: 10 split: LAST_ITEM num_shards: 8
  generator { num_users: %(users)d num_items: %(items)d num_interests: 200 mean_seq_len: 20 min_seq_len: 5
              num_threads: 2 }
}
model { loss: SAMPLED_SOFTMAX num_negatives: 1024 user_id_table: "user_id" item_tag_table: "" }
training { batch_size: 256 epochs: 1 max_steps: %(steps)d log_every_steps: 20 output_dir: "%(work)s/tables-out" }
""" % dict(work=work, ckpt=ckpt, users=size["train_users"], items=size["item_rows"], steps=size["train_steps"])


# A training job against the filled tables: both start from the shard set the first job saved
# (`init_from`), on 4 servers + 2 workers; the model's item width is the item table's 64.
def part_tables_train(args, size, work, ckpt):
    binary = os.path.join(args.build_dir, "launcher", "t2diff")
    for d in ("tables-data", "tables-out"):
        shutil.rmtree(os.path.join(work, d), ignore_errors=True)
    config = os.path.join(work, "tables-train.textproto")
    with open(config, "w") as f:
        f.write(tables_train_config(work, ckpt, size))
    log("tables: generate %d users x %d items to train against the tables" % (size["train_users"], size["item_rows"]))
    checked([binary, "generate", "-c", config], os.path.join(work, "tables-gen.log"), 3600, "generate")
    log("tables: train %d steps on 4 servers + 2 workers, both tables warm-started from the shard set" %
        size["train_steps"])
    train_s, train_rss, text = checked([binary, "launch", "-c", config], os.path.join(work, "tables-train.log"), 3 * 3600,
                                       "train against the tables")
    warm = {name: float(sec) for name, sec in re.findall(r"table (\w+) warm-started from \S+ in ([0-9.]+) s", text)}
    servers = []
    for shard, line in sorted(re.findall(r"shard (\d+) memory: (.*)$", text, re.M), key=lambda x: int(x[0])):
        rows = {name: int(n) for name, n in re.findall(r"(\w+) (\d+) rows", line)}
        rss = grab(r"process RSS ([0-9.]+) MB", line)
        peak = grab(r"\(peak ([0-9.]+) MB\)", line)
        servers.append({"shard": int(shard), "rows": rows, "rss_mb": rss, "peak_rss_mb": peak})
    rec = {"users": size["train_users"], "steps": size["train_steps"], "wall_s": train_s, "peak_rss": train_rss,
           "warm_start_s": warm, "servers": servers,
           "samples_s": grab(r"^trained \d+ steps in .*; (\d+) samples/s training\)", text),
           "pulled_rows": pulled_rows_by_shard(text),
           "first_loss": grab(r"first loss ([0-9.]+)", text), "last_loss": grab(r"last loss ([0-9.]+)", text),
           "config": tables_train_config("WORK", "DIR", size),
           "commands": ["t2diff generate -c tables-train.textproto", "t2diff launch -c tables-train.textproto"]}
    for d in ("tables-data", "tables-out"):
        shutil.rmtree(os.path.join(work, d), ignore_errors=True)
    return rec


def catalogue_config(work, size):
    return """cluster { num_servers: 2 num_workers: 2 timeout_s: 600 }
tables { name: "item_id" dim: 8 optimizer { kind: ADAGRAD learning_rate: 0.05 } }
tables { name: "item_tag" dim: 4 optimizer { kind: ADAGRAD learning_rate: 0.05 } }
tables { name: "user_id" dim: 4 optimizer { kind: ROWWISE_ADAGRAD learning_rate: 0.05 } initializer { kind: ZEROS } }
data {
  source: SYNTHETIC dataset_dir: "%(work)s/catalogue-data" max_seq_len: 10 session_len: 3 split: LAST_ITEM num_shards: 8
  generator { num_users: %(users)d num_items: %(items)d num_interests: 200 num_tags: 1000 mean_seq_len: 12
              min_seq_len: 5 num_threads: 2 }
}
model { diffusion_steps: 5 loss: SAMPLED_SOFTMAX num_negatives: 1024 user_id_table: "user_id" }
training { batch_size: 256 epochs: 1 max_steps: %(steps)d log_every_steps: 50 output_dir: "%(work)s/catalogue-out" }
checkpoint { dir: "%(work)s/catalogue-ckpt" every_steps: 0 }
eval { k: [10, 100] main_k: 100 max_samples: %(eval_users)d ann: true }
serving { exact_max_items: %(exact_max)d index_kind: IVF }
""" % dict(work=work, exact_max=min(10000, size["items"] // 10), **size)


def part_catalogue(args, size, work):
    binary = os.path.join(args.build_dir, "launcher", "t2diff")
    for d in ("catalogue-data", "catalogue-out", "catalogue-ckpt"):
        shutil.rmtree(os.path.join(work, d), ignore_errors=True)
    config = os.path.join(work, "catalogue.textproto")
    with open(config, "w") as f:
        f.write(catalogue_config(work, size))
    log("catalogue: generate %d users x %d items" % (size["users"], size["items"]))
    gen_s, gen_rss, _ = checked([binary, "generate", "-c", config], os.path.join(work, "catalogue-gen.log"), 3600,
                                "generate")
    log("catalogue: train %d steps on 2 servers + 2 workers" % size["steps"])
    train_s, train_rss, text = checked([binary, "launch", "-c", config], os.path.join(work, "catalogue-train.log"),
                                       3600, "train")
    servers = re.findall(r"shard (\d+) memory: (.*)$", text, re.M)
    pulled = pulled_rows_by_shard(text)
    # "trained 300 steps in 12.4s (...; 12567 samples/s training)"
    samples_s = grab(r"^trained \d+ steps in .*; (\d+) samples/s training\)", text)
    log("catalogue: evaluate %d test users against the whole catalogue, exact and IVF" % size["eval_users"])
    eval_s, eval_rss, text = checked(MPI + ["-n", "4", binary, "eval", "-c", config],
                                     os.path.join(work, "catalogue-eval.log"), 3600, "eval")
    rec = {
        "users": size["users"], "items": size["items"], "steps": size["steps"], "eval_users": size["eval_users"],
        "generate_s": gen_s, "generate_peak_rss": gen_rss, "train_s": train_s, "train_peak_rss": train_rss,
        "train_samples_s": samples_s, "server_memory": [m for _, m in sorted(servers, key=lambda x: int(x[0]))],
        "server_pulled_rows": pulled,
        "eval_s": eval_s, "eval_peak_rss": eval_rss,
        "recall100": grab(r"^test \(\d+ samples\): .*Recall@100=([0-9.]+)", text),
        "popularity_recall100": grab(r"^test popularity baseline: .*Recall@100=([0-9.]+)", text),
        "ann_line": grab(r"^(test through the ivf index: .*)$", text, str),
        "ann_found": grab(r"^test through the ivf index: .*the index finds ([0-9.]+) of the exact top", text),
        "config": catalogue_config("WORK", size),
    }
    for d in ("catalogue-data", "catalogue-out", "catalogue-ckpt"):
        shutil.rmtree(os.path.join(work, d), ignore_errors=True)
    return rec


def stream_config(work, tag, users, seq_len, steps):
    return """cluster { num_servers: 1 num_workers: 2 timeout_s: 600 }
tables { name: "item_id" dim: 16 optimizer { kind: ADAGRAD learning_rate: 0.05 } }
tables { name: "item_tag" dim: 4 optimizer { kind: ADAGRAD learning_rate: 0.05 } }
data {
  source: SYNTHETIC dataset_dir: "%(work)s/stream-%(tag)s" max_seq_len: 50 session_len: 5 split: LAST_ITEM num_shards: 16
  generator { num_users: %(users)d num_items: 100000 num_interests: 200 num_tags: 1000 mean_seq_len: %(seq)d
              min_seq_len: 5 num_threads: 2 }
}
model { diffusion_steps: 5 loss: SAMPLED_SOFTMAX num_negatives: 1024 }
training { batch_size: 256 epochs: 1 max_steps: %(steps)d log_every_steps: 50 output_dir: "%(work)s/stream-%(tag)s-out" }
checkpoint { dir: "%(work)s/stream-%(tag)s-ckpt" every_steps: 0 }
eval { max_samples: 100 }
""" % dict(work=work, tag=tag, users=users, seq=seq_len, steps=steps)


def csv_config(work, tag, buffer_mb=None, chunk_bytes=None):
    return """tables { name: "item_id" dim: 16 }
tables { name: "item_tag" dim: 4 }
data {
  source: CSV input_paths: "%(work)s/raw-%(tag)s.csv" dataset_dir: "%(work)s/prepared-%(tag)s" max_seq_len: 50
  split: LAST_ITEM num_shards: 16 csv { }%(buffer)s%(chunk)s
}
""" % dict(work=work, tag=tag, buffer=" prepare_buffer_mb: %d" % buffer_mb if buffer_mb else "",
           chunk=" chunk_bytes: %d" % chunk_bytes if chunk_bytes else "")


def write_csv(path, rows, users):
    """A raw interaction log of `rows` lines (user_id,item_id,timestamp), users' lines interleaved
    in time order, written in blocks so the writer's memory stays small."""
    import random
    rng = random.Random(7)
    block = 200_000
    with open(path, "w") as f:
        f.write("user_id,item_id,timestamp\n")
        t = 1_600_000_000
        for start in range(0, rows, block):
            n = min(block, rows - start)
            lines = []
            for i in range(n):
                lines.append("%d,%d,%d\n" % (rng.randrange(users), rng.randrange(1, 100_000), t + start + i))
            f.write("".join(lines))


def part_stream(args, size, work):
    binary = os.path.join(args.build_dir, "launcher", "t2diff")
    rec = {"sizes": [], "csv": []}
    for users in size["users"]:
        tag = "u%d" % users
        config = os.path.join(work, "stream-%s.textproto" % tag)
        with open(config, "w") as f:
            f.write(stream_config(work, tag, users, size["seq_len"], size["train_steps"]))
        data = os.path.join(work, "stream-" + tag)
        shutil.rmtree(data, ignore_errors=True)
        log("stream: generate %d users x %d behaviours (mean)" % (users, size["seq_len"]))
        gen_s, gen_rss, text = checked([binary, "generate", "-c", config], os.path.join(work, "stream-%s-gen.log" % tag),
                                       4 * 3600, "generate")
        interactions = grab(r"^kept: \d+ users, \d+ items, (\d+) interactions", text, int)
        disk = sum(os.path.getsize(os.path.join(data, f)) for f in os.listdir(data))
        log("stream: train %d steps from those shards on 1 server + 2 workers" % size["train_steps"])
        train_s, train_rss, _ = checked([binary, "launch", "-c", config], os.path.join(work, "stream-%s-train.log" % tag),
                                        3600, "train")
        rec["sizes"].append({"users": users, "interactions": interactions, "disk_bytes": disk, "generate_s": gen_s,
                             "generate_peak_rss": gen_rss, "train_s": train_s, "train_peak_rss": train_rss,
                             "generate_log": text[-2000:]})
        for d in (data, data + "-out", data + "-ckpt"):
            shutil.rmtree(d, ignore_errors=True)
    return rec


def part_prepare(args, size, work):
    binary = os.path.join(args.build_dir, "launcher", "t2diff")
    rec = {"csv": []}
    for rows in size["csv_rows"]:
        tag = "r%d" % rows
        raw = os.path.join(work, "raw-%s.csv" % tag)
        log("prepare: write a raw CSV of %d rows, then prepare it" % rows)
        write_csv(raw, rows, max(1000, rows // 40))
        config = os.path.join(work, "prepare-%s.textproto" % tag)
        with open(config, "w") as f:
            f.write(csv_config(work, tag, size.get("buffer_mb"), size.get("chunk_bytes")))
        shutil.rmtree(os.path.join(work, "prepared-" + tag), ignore_errors=True)
        prep_s, prep_rss, text = checked([binary, "prepare", "-c", config, "--force"],
                                         os.path.join(work, "prepare-%s.log" % tag), 4 * 3600, "prepare")
        runs = grab(r"through (\d+) sort runs on disk", text, int) or 0
        rec["csv"].append({"rows": rows, "csv_bytes": os.path.getsize(raw), "prepare_s": prep_s,
                           "prepare_peak_rss": prep_rss, "sort_runs": runs})
        os.remove(raw)
        shutil.rmtree(os.path.join(work, "prepared-" + tag), ignore_errors=True)
    return rec


def part_hosts(args, size, work):
    log("hosts: bench/bench_multihost.sh")
    env = dict(os.environ, BUILD_DIR=args.build_dir)
    rc, secs, _, text = run(["bash", "bench/bench_multihost.sh", str(size["iterations"])],
                            os.path.join(work, "hosts.log"), 1800, env)
    return {"rc": rc, "seconds": secs, "output": text[-6000:]}


def part_model(args, size, work):
    bench = os.path.join(args.build_dir, "bench", "bench_model")
    log("model: bench_model%s" % (" --quick" if args.quick else ""))
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    secs, _, text = checked([bench] + (["--quick"] if args.quick else []), os.path.join(work, "model.log"), 3600,
                               "bench_model", env)
    return {"seconds": secs, "output": text[-8000:]}


RUNNERS = {"tables": part_tables, "catalogue": part_catalogue, "stream": part_stream, "prepare": part_prepare,
           "hosts": part_hosts,
           "model": part_model}


# ---------------------------------------------------------------- page


def gb(b):
    return "%.2f GB" % (b / 1e9)


def met(ok):
    return "**met**" if ok else "**missed**"


def render_tables(rec):
    f, l = rec["fill"], rec["load"]
    out = ["## Many servers, huge tables (item 5)", ""]
    out.append("%d servers + %d workers on one machine; a user table of %s rows x dim %d and an item table of %s rows x "
               "dim %d, both row-wise Adagrad (payload + state: %d and %d bytes a row). The rows were stored by bulk "
               "pushes through the parameter-server client; a second job loaded the shard set the first saved." %
               (f["servers"], f["workers"], "{:,}".format(f["user_rows"]), f["user_dim"], "{:,}".format(f["item_rows"]),
                f["item_dim"], f["payload_bytes"][0], f["payload_bytes"][1]))
    out += ["", "| server | RSS | peak RSS | user rows | user table | B/row | item rows | item table | B/row |",
            "|---|---|---|---|---|---|---|---|---|"]
    for s in f["server_stats"]:
        u, i = s["tables"][0], s["tables"][1]
        out.append("| %d | %s | %s | %s | %s | %.1f | %s | %s | %.1f |" % (
            s["shard"], gb(s["rss_bytes"]), gb(s["peak_rss_bytes"]), "{:,}".format(u["rows"]), gb(u["bytes"]),
            u["bytes"] / max(1, u["rows"]), "{:,}".format(i["rows"]), gb(i["bytes"]), i["bytes"] / max(1, i["rows"])))
    rows = f["user_rows"] + f["item_rows"]
    out += ["", "| figure | value | target |", "|---|---|---|"]
    out.append("| total server RSS after filling | %s (%.1f B a row) | <= %s: %s |" % (
        gb(f["total_rss_bytes"]), f["total_rss_bytes"] / rows, gb(f["rss_bound_bytes"]),
        met(f["total_rss_bytes"] <= f["rss_bound_bytes"])))
    out.append("| total server RSS after loading | %s | <= %s: %s |" % (
        gb(l["total_rss_bytes"]), gb(l["rss_bound_bytes"]), met(l["total_rss_bytes"] <= l["rss_bound_bytes"])))
    table_bytes = sum(t["bytes"] for s in f["server_stats"] for t in s["tables"])
    out.append("| the tables' own accounting (all servers) | %s (%.1f B a row) | |" % (gb(table_bytes), table_bytes / rows))
    out.append("| every row on the servers (fill / load) | %s / %s | |" % (f["rows_ok"], l["rows_ok"]))
    if f["local"]:
        out.append("| in-process table: resident bytes a row (its own account) | %.1f (%.1f) | |" % (
            f["local_rss_bytes_per_row"], f["local_table_bytes_per_row"]))
    out.append("| fill by bulk pushes | %.0f s, %.2f M rows/s | |" % (f["fill_seconds"], rows / f["fill_seconds"] / 1e6))
    for job, r in (("first job", f), ("second job", l)):
        if not r["local"]:
            continue
        for t, name in enumerate(("user", "item")):
            ratio = r["pull"][t] / r["local_pull"][t] if r["local_pull"][t] else None
            out.append("| %s pull through %d servers / in-process lookup, %s | %.2f / %.2f M rows/s = %s | >= 0.5x: %s |" % (
                name, r["servers"], job, r["pull"][t] / 1e6, r["local_pull"][t] / 1e6, "%.2fx" % ratio if ratio else "–",
                met(ratio is not None and ratio >= 0.5)))
            out.append("| %s push through %d servers / in-process apply, %s | %.2f / %.2f M rows/s | |" % (
                name, r["servers"], job, r["push"][t] / 1e6, r["local_push"][t] / 1e6))
    out.append("| save the shard set | %.1f s, %s, %.2f GB/s | |" % (
        f["save_seconds"], gb(f["save_bytes"]), f["save_bytes"] / max(1e-9, f["save_seconds"]) / 1e9))
    out.append("| load it into %d fresh servers | %.1f s, %.2f GB/s | |" % (
        l["servers"], l["fill_seconds"], l["load_bytes"] / max(1e-9, l["fill_seconds"]) / 1e9))
    out += ["", "RSS is each server process's whole resident memory (tables, index, message buffers, libraries), "
            "so at small sizes the fixed part of a process dominates it. Pulls and pushes are batches of %d distinct ids "
            "drawn Zipf(%.2f), one batch prefetched ahead, both workers together; the in-process figures are one thread "
            "on the same batches, measured in the same job before the servers filled (the first job stored its rows by "
            "pushes, the second loaded them)." % (
                f["batch"], f["zipf"]), ""]
    out += ["Commands:", "", "```"] + rec["commands"] + ["```", ""]
    if rec.get("train"):
        out += render_tables_train(rec["train"], f)
    return out


def tables_train_rss(t):
    return sum(s["rss_mb"] or 0 for s in t["servers"]) * 1e6


def render_tables_train(t, f):
    out = ["### Training against the filled tables", "",
           "A third job, between the two above, trained T2Diff against the same tables: `t2diff launch` on %d servers + "
           "%d workers, both tables warm-started (`tables[].init_from`) from the shard set the first job saved. "
           "Synthetic data of %s users (ids inside the user table) over the table's %s items; D = 64 (the item "
           "table's width) with the 16-wide user row projected into the user vector, sequences of 50, batch 256, sampled "
           "softmax with 1,024 negatives, %d steps." % (
               f["servers"], f["workers"], "{:,}".format(t["users"]), "{:,}".format(f["item_rows"]), t["steps"]),
           "", "| server | user rows | item rows | RSS at the end | peak RSS |", "|---|---|---|---|---|"]
    for s in t["servers"]:
        out.append("| %d | %s | %s | %.2f GB | %.2f GB |" % (
            s["shard"], "{:,}".format(s["rows"].get("user_id", 0)), "{:,}".format(s["rows"].get("item_id", 0)),
            (s["rss_mb"] or 0) / 1e3, (s["peak_rss_mb"] or 0) / 1e3))
    rss = tables_train_rss(t)
    out += ["", "| figure | value | target |", "|---|---|---|"]
    out.append("| warm start (user table / item table) | %.1f s / %.1f s | |" % (
        t["warm_start_s"].get("user_id", 0), t["warm_start_s"].get("item_id", 0)))
    out.append("| training steps | %d at %s samples/s (loss %s -> %s) | |" % (
        t["steps"], "{:,.0f}".format(t["samples_s"] or 0), t["first_loss"], t["last_loss"]))
    out.append("| rows pulled per server | %s | |" % ", ".join("{:,}".format(p) for p in t["pulled_rows"]))
    out.append("| total server RSS at the end | %s | <= %s: %s |" % (
        gb(rss), gb(f["rss_bound_bytes"]), met(rss <= f["rss_bound_bytes"])))
    out.append("| the whole job: wall (generation excluded), peak RSS of the largest rank | %.0f s, %s | |" % (
        t["wall_s"], gb(t["peak_rss"])))
    out += ["", "Commands (the config is in docs/results/scale.json, `tables.result.train.config`):", "", "```"] + \
        t["commands"] + ["```", ""]
    return out


def render_catalogue(rec):
    out = ["## Large catalogues and evaluation at scale (items 2 and 3)", ""]
    out.append("Synthetic: %s users, %s items, a user-id table, sampled softmax with logQ (1,024 negatives), "
               "2 servers + 2 workers, %d steps of 256; then %s test users ranked against the whole catalogue, exact "
               "and through an IVF index, by 4 evaluation ranks." % (
                   "{:,}".format(rec["users"]), "{:,}".format(rec["items"]), rec["steps"],
                   "{:,}".format(rec["eval_users"])))
    out += ["", "| figure | value |", "|---|---|"]
    out.append("| generate: wall, peak RSS | %.0f s, %s |" % (rec["generate_s"], gb(rec["generate_peak_rss"])))
    out.append("| train: wall (start-up included), peak RSS of the largest rank | %.0f s, %s |" % (
        rec["train_s"], gb(rec["train_peak_rss"])))
    out.append("| training steps alone (worker 0's report) | %s samples/s |" % (
        "{:,.0f}".format(rec["train_samples_s"]) if rec["train_samples_s"] else "–"))
    for i, m in enumerate(rec["server_memory"]):
        out.append("| server %d at the end | %s |" % (i, m))
    if rec["server_pulled_rows"]:
        out.append("| rows pulled per server | %s |" % ", ".join("{:,}".format(p) for p in rec["server_pulled_rows"]))
    out.append("| evaluate: wall, peak RSS of the largest rank | %.0f s, %s |" % (rec["eval_s"], gb(rec["eval_peak_rss"])))
    out.append("| test Recall@100 (popularity) | %s (%s) |" % (rec["recall100"], rec["popularity_recall100"]))
    if rec["ann_line"]:
        out.append("| IVF against exact | %s |" % rec["ann_line"].replace("|", "/"))
    out += ["", "The job's configuration (WORK: a scratch folder):", "", "```", rec["config"].rstrip(), "```", ""]
    return out


def render_stream(rec):
    out = ["## Streaming (item 4)", "", "| users | interactions | on disk | bytes / interaction | generate | "
           "generate peak RSS | train (fixed steps) | train peak RSS (largest rank) |", "|---|---|---|---|---|---|---|---|"]
    for s in rec["sizes"]:
        n = s["interactions"] or 0
        out.append("| %s | %s | %s | %s | %.0f s | %s | %.0f s | %s |" % (
            "{:,}".format(s["users"]), "{:,}".format(n) if n else "?", gb(s["disk_bytes"]),
            "%.1f" % (s["disk_bytes"] / n) if n else "?", s["generate_s"], gb(s["generate_peak_rss"]), s["train_s"],
            gb(s["train_peak_rss"])))
    if len(rec["sizes"]) == 2:
        a, b = rec["sizes"]
        for what in ("generate_peak_rss", "train_peak_rss"):
            r = b[what] / max(1, a[what])
            out.append("")
            out.append("%s: %.2fx at %.0fx the data: %s" % (
                what.replace("_", " "), r, b["users"] / a["users"],
                "bounded (does not grow with the data)" if r < 1.25 else "**grows with the data**"))
    out.append("")
    return out


def render_prepare(rec):
    out = ["## Preparing a raw log (item 4)", "",
           "`t2diff prepare` of a raw CSV (user_id,item_id,timestamp; users' lines interleaved), grouped by user "
           "through an external sort in `data.prepare_buffer_mb` (256 MiB by default) of memory.", "",
           "| raw CSV rows | CSV size | prepare | sort runs on disk | prepare peak RSS |", "|---|---|---|---|---|"]
    for c in rec["csv"]:
        out.append("| %s | %s | %.0f s | %s | %s |" % ("{:,}".format(c["rows"]), gb(c["csv_bytes"]), c["prepare_s"],
                                                       c.get("sort_runs", "?"), gb(c["prepare_peak_rss"])))
    if len(rec["csv"]) == 2:
        a, b = rec["csv"]
        r = b["prepare_peak_rss"] / max(1, a["prepare_peak_rss"])
        out += ["", "prepare peak RSS: %.2fx at %.0fx the rows: %s" % (
            r, b["rows"] / a["rows"], "bounded" if r < 1.25 else "**grows with the data**")]
    out.append("")
    return out


def render_text(title, rec):
    return [title, "", "```", rec["output"].rstrip(), "```", ""]


def summary_rows(store):
    """(item, target, figure, verdict) for every target the stored parts measured."""
    rows = []
    tables = store.get("tables", {}).get("result")
    if tables:
        for job, r in (("filled by pushes", tables["fill"]), ("loaded", tables["load"])):
            rows.append(("5", "total server RSS <= rows x (payload + state) x 1.15 + 32 B/row (%s)" % job,
                         "%s against %s" % (gb(r["total_rss_bytes"]), gb(r["rss_bound_bytes"])),
                         met(r["total_rss_bytes"] <= r["rss_bound_bytes"])))
        for job, r in (("first job", tables["fill"]), ("second job", tables["load"])):
            if r["local"]:
                for t, name in enumerate(("user", "item")):
                    ratio = r["pull"][t] / r["local_pull"][t]
                    rows.append(("5", "%s pull through %d servers >= 0.5x the in-process table (%s)" % (
                        name, r["servers"], job), "%.2fx" % ratio, met(ratio >= 0.5)))
        t = tables.get("train")
        if t:
            rss = tables_train_rss(t)
            rows.append(("5", "trained against the filled tables (warm start, %d steps): total server RSS within the "
                         "same bound" % t["steps"], "%s against %s; %s samples/s" % (
                             gb(rss), gb(tables["fill"]["rss_bound_bytes"]), "{:,.0f}".format(t["samples_s"] or 0)),
                         met(rss <= tables["fill"]["rss_bound_bytes"])))
    stream = store.get("stream", {}).get("result")
    if stream and len(stream["sizes"]) == 2:
        a, b = stream["sizes"]
        n = b["interactions"] or 1
        rows.append(("4", "%s interactions on disk" % "{:,}".format(b["interactions"] or 0),
                     "%.1f bytes a behaviour" % (b["disk_bytes"] / n), "done"))
        for what, label in (("generate_peak_rss", "generate"), ("train_peak_rss", "training ranks")):
            r = b[what] / max(1, a[what])
            rows.append(("4", "peak RSS of %s does not grow with the data (%.0fx the data)" % (label, b["users"] / a["users"]),
                         "%s -> %s (%.2fx)" % (gb(a[what]), gb(b[what]), r), met(r < 1.25)))
    prepare = store.get("prepare", {}).get("result")
    if prepare and len(prepare["csv"]) == 2:
        a, b = prepare["csv"]
        r = b["prepare_peak_rss"] / max(1, a["prepare_peak_rss"])
        rows.append(("4", "peak RSS of prepare (raw CSV of %s rows) does not grow with the data" % "{:,}".format(b["rows"]),
                     "%s -> %s (%.2fx at %.0fx the rows)" % (gb(a["prepare_peak_rss"]), gb(b["prepare_peak_rss"]), r,
                                                            b["rows"] / a["rows"]), met(r < 1.25)))
    model = store.get("model", {}).get("result")
    if model:
        for m in re.finditer(r"T2Diff, industrial \(([^)]*)\) threads=(\d+)[^\n]*\n[^\n]*-> ([0-9.]+) GFLOP/s = ([0-9.]+)% "
                             r"of the GEMM peak[^\n]*\n\s*target >= 40% of the GEMM peak at the same thread count: (met|missed)",
                             model["output"]):
            rows.append(("7", "T2Diff at the industrial size (%s) >= 40%% of the GEMM peak, %s thread(s)" % (
                m.group(1), m.group(2)), "%s%% (%s GFLOP/s)" % (m.group(4), m.group(3)), met(m.group(5) == "met")))
    return rows


def render(store, quick):
    lines = ["# Scale: measured end to end" + (" (quick mode: 1/100 of the size)" if quick else ""), "",
             "Written by `python3 bench/scale/run_scale.py%s` from the records in `%s`; each part "
             "says when, where and at which revision it ran. Figures from different parts or machines are not "
             "compared with each other." % (" --quick" if quick else "",
                                            "t2diff-run/scale-quick/scale-quick.json" if quick else "docs/results/scale.json"), ""]
    rows = summary_rows(store)
    if rows:
        lines += ["## Targets", "", "| item | target | measured | verdict |", "|---|---|---|---|"]
        lines += ["| %s | %s | %s | %s |" % r for r in rows]
        lines += ["", "The small version of the run (2 servers, 10^5 users and items, a user-id table, sampled "
                  "softmax, evaluation exact and through IVF) is the CTest `e2e_scale_small`; the run across three "
                  "hosts is the CTest `e2e_multihost`. The sections below hold every figure.", ""]
    for part in PARTS:
        rec = store.get(part)
        if rec is None:
            lines += ["## %s" % part, "", "Not run yet (`--parts %s`)." % part, ""]
            continue
        body = {"tables": render_tables, "catalogue": render_catalogue, "stream": render_stream,
                "prepare": render_prepare,
                "hosts": lambda r: render_text("## Several hosts (item 6)", r),
                "model": lambda r: render_text("## Industrial-size model cost (item 7)", r)}[part](rec["result"])
        body.insert(1, "")
        body.insert(2, "Run %s on %s at revision %s (%.0f min)." % (rec["date"], rec["machine"], rec["revision"],
                                                                 rec["minutes"]))
        lines += body
    return "\n".join(lines).rstrip() + "\n"


def store_name(quick):
    return "scale-quick.json" if quick else "scale.json"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1/100 of the size; writes t2diff-run/scale-quick/SCALE-quick.md")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated: " + ",".join(PARTS))
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    ap.add_argument("--work", default=None, help="scratch folder and logs (default t2diff-run/scale, or "
                    "t2diff-run/scale-quick with --quick, so a quick run keeps the full run's logs)")
    ap.add_argument("--render", action="store_true", help="only rewrite the page from the stored records")
    args = ap.parse_args()
    args.build_dir = os.path.abspath(args.build_dir)
    if args.work is None:
        args.work = os.path.join(ROOT, "t2diff-run", "scale-quick" if args.quick else "scale")
    parts = [p for p in args.parts.split(",") if p]
    for p in parts:
        if p not in PARTS:
            die("unknown part %r (known: %s)" % (p, ", ".join(PARTS)))
    os.makedirs(args.work, exist_ok=True)
    store_path = (os.path.join(args.work, store_name(True)) if args.quick else
                  os.path.join(ROOT, "docs", "results", store_name(False)))
    page = os.path.join(args.work, "SCALE-quick.md") if args.quick else os.path.join(ROOT, "docs", "SCALE.md")
    store = {}
    if os.path.exists(store_path):
        with open(store_path) as f:
            store = json.load(f)
    if not args.render:
        for exe in ("launcher/t2diff", "bench/bench_ps_tables", "bench/bench_ps", "bench/bench_model"):
            if not os.access(os.path.join(args.build_dir, exe), os.X_OK):
                die("%s not found in %s (bash scripts/build.sh)" % (exe, args.build_dir))
        size = SIZES["quick" if args.quick else "full"]
        for part in parts:
            started = time.time()
            result = RUNNERS[part](args, size.get(part, {}), args.work)
            store[part] = {"date": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
                           "revision": git_revision(), "minutes": (time.time() - started) / 60, "result": result}
            os.makedirs(os.path.dirname(store_path), exist_ok=True)
            with open(store_path, "w") as f:
                json.dump(store, f, indent=1, sort_keys=True)
            with open(page, "w") as f:
                f.write(render(store, args.quick))
            log("%s done in %.1f min; %s written" % (part, (time.time() - started) / 60, os.path.relpath(page, ROOT)))
    with open(page, "w") as f:
        f.write(render(store, args.quick))
    print(os.path.relpath(page, ROOT))


if __name__ == "__main__":
    main()
