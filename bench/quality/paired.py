"""Paired comparison of two models on the same evaluation targets (bench/quality/run_study.py).

Two models trained on the same split (the same data.seed) rank the same test targets; for each
target the metric of model A minus that of model B is one paired difference. Over several seeds
(each redrawing, under the authors' protocol, the split, and always the initialisation and the
noise), the effect is the mean over seeds of the per-seed mean difference.

Its 95% interval is a t-interval over the seeds' mean differences (S - 1 degrees of freedom):
each seed's mean already carries both the training noise and the test sample's, so the spread
between seeds measures both, and with 5 seeds a t-interval is honest where a percentile
bootstrap over seeds would be too narrow. Beside it, a bootstrap over users (resampled within
each seed, a user's targets together, every seed kept) gives the interval of the test sample's
noise alone; with a single seed it is the only interval there is. A difference whose interval
contains 0 is reported as noise.

Ranks come from `eval.write_ranks` files (tab-separated user, target, time, rank under a header)
or from `t2diff eval --dump-ranks` files (JSON lines with "user", "target", "time", "rank").
Needs numpy (Debian python3-numpy).
"""

import json
import math

import numpy as np


def read_ranks(paths):
    """{(user, target, time, occurrence): rank} from the files of one evaluation (one file per
    worker). A user can have the same item at the same time twice (two positions of one
    sequence); such samples are told apart by their order in the file (occurrence 0, 1, ...),
    which is the order of the user's samples in the prepared data for every reader."""
    out = {}
    for path in paths:
        with open(path) as f:
            first = f.readline()
            if first.startswith("{"):
                lines, parse, start = [first] + f.readlines(), "json", 1
            elif first.rstrip("\n").split("\t") == ["user", "target", "time", "rank"]:
                lines, parse, start = f.readlines(), "tsv", 2
            else:
                raise ValueError("%s: neither a ranks TSV (header user, target, time, rank) nor JSON lines" % path)
            for n, line in enumerate(lines, start):
                line = line.strip()
                if not line:
                    continue
                try:
                    if parse == "json":
                        r = json.loads(line)
                        key, rank = (int(r["user"]), int(r["target"]), int(r.get("time", 0))), int(r["rank"])
                    else:
                        u, t, tm, rank = (int(x) for x in line.split("\t"))
                        key = (u, t, tm)
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError("%s line %d: %s" % (path, n, e))
                if rank < 1:
                    raise ValueError("%s line %d: rank %d < 1" % (path, n, rank))
                occurrence = 0
                while key + (occurrence,) in out:
                    occurrence += 1
                out[key + (occurrence,)] = rank
    return out


def gain(rank, metric, k):
    """One target's Recall@k (hit) or NDCG@k (1 / log2(1 + rank) within the top k)."""
    if rank > k:
        return 0.0
    if metric == "recall":
        return 1.0
    if metric == "ndcg":
        return 1.0 / math.log2(1.0 + rank)
    raise ValueError("unknown metric %r" % metric)


# Two-sided 95% quantiles of Student's t by degrees of freedom (1..30); 1.96 beyond.
T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
       2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t95(dof):
    return T95[dof - 1] if dof <= len(T95) else 1.96


def compare(seeds_a, seeds_b, metric="recall", k=20, reps=2000, rng_seed=1):
    """seeds_a, seeds_b: per seed, {target key: rank} of model A and model B on the same split.

    Returns a dict: mean_a, mean_b (mean over seeds of the per-seed metric), diff (A - B), rel
    (diff / mean_b), lo, hi (the 95% interval of diff the verdict reads: over seeds with two or
    more, else over users), interval ("seeds" or "users"), user_lo, user_hi (the bootstrap over
    users alone), per_seed (the per-seed differences), ahead (seeds where A's mean is higher),
    targets and users (summed over seeds), verdict ("A better", "B better" or "noise").
    """
    if len(seeds_a) != len(seeds_b) or not seeds_a:
        raise ValueError("need the same, non-zero number of seeds for both models (%d, %d)" % (len(seeds_a), len(seeds_b)))
    per_seed_users = []  # per seed: (sum of differences, number of targets) per user
    means_a, means_b, per_seed = [], [], []
    targets = users = 0
    for s, (a, b) in enumerate(zip(seeds_a, seeds_b)):
        if set(a) != set(b):
            only = len(set(a) ^ set(b))
            raise ValueError("seed %d: the two models were evaluated on different targets (%d differ): not the "
                             "same split" % (s + 1, only))
        if not a:
            raise ValueError("seed %d: no targets" % (s + 1))
        by_user = {}
        sa = sb = 0.0
        for key in a:
            ga, gb = gain(a[key], metric, k), gain(b[key], metric, k)
            sa += ga
            sb += gb
            acc = by_user.setdefault(key[0], [0.0, 0])
            acc[0] += ga - gb
            acc[1] += 1
        n = len(a)
        means_a.append(sa / n)
        means_b.append(sb / n)
        per_seed.append((sa - sb) / n)
        arr = np.array(list(by_user.values()), dtype=np.float64)
        per_seed_users.append((arr[:, 0], arr[:, 1]))
        targets += n
        users += len(by_user)
    # The test sample's noise: users resampled within each seed (chunks bound the memory).
    rng = np.random.default_rng(rng_seed)
    n_seeds = len(per_seed)
    boot = np.zeros(reps)
    for sums, counts in per_seed_users:
        for lo_r in range(0, reps, 250):
            r = min(250, reps - lo_r)
            idx = rng.integers(0, len(sums), size=(r, len(sums)))
            boot[lo_r:lo_r + r] += sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    boot /= n_seeds
    user_lo, user_hi = (float(x) for x in np.percentile(boot, [2.5, 97.5]))
    diff = float(np.mean(per_seed))
    if n_seeds > 1:
        half = t95(n_seeds - 1) * float(np.std(per_seed, ddof=1)) / math.sqrt(n_seeds)
        lo, hi, interval = diff - half, diff + half, "seeds"
    else:
        lo, hi, interval = user_lo, user_hi, "users"
    mean_a, mean_b = float(np.mean(means_a)), float(np.mean(means_b))
    if lo > 0:
        verdict = "A better"
    elif hi < 0:
        verdict = "B better"
    else:
        verdict = "noise"
    return {"mean_a": mean_a, "mean_b": mean_b, "diff": diff, "rel": diff / mean_b if mean_b > 0 else float("nan"),
            "lo": lo, "hi": hi, "interval": interval, "user_lo": user_lo, "user_hi": user_hi, "per_seed": per_seed,
            "ahead": sum(1 for d in per_seed if d > 0), "seeds": n_seeds, "targets": targets, "users": users,
            "verdict": verdict}
