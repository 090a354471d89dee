#!/usr/bin/env python3
"""Tests of bench/quality/run_study.py's bookkeeping: metric parsing, mean +- std, the authors'
best-over-epochs reading, the 2-sd rule, target verdicts and the page; and of
bench/quality/paired.py's paired statistics against hand-computed values. Nothing is trained.
Needs numpy (Debian python3-numpy, as the study does)."""

import argparse
import datetime
import importlib.util
import json
import math
import os
import sys
import tempfile
import unittest
from collections import OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "..", "bench", "quality", "run_study.py")
spec = importlib.util.spec_from_file_location("run_study", SCRIPT)
rs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rs)


def summary(r20, mrr20=0.05, ndcg20=0.07, best_epoch=2):
    s = {"kind": "summary", "best_epoch": best_epoch, "train_seconds": 10.0, "samples_per_s": 1000.0,
         "popularity": {"users": 10, "recall@20": 0.01}}
    for m in rs.METRICS:
        for k in rs.KS:
            s["%s@%d" % (m, k)] = 0.0
    s.update({"recall@20": r20, "mrr@20": mrr20, "ndcg@20": ndcg20})
    return s


def run(r20, test_r20_by_epoch, rc=0, wall=12.0):
    evals = [{"kind": "eval", "split": "test", "epoch": i + 1, "recall@20": v} for i, v in enumerate(test_r20_by_epoch)]
    evals += [{"kind": "eval", "split": "valid", "epoch": i + 1, "recall@20": v} for i, v in enumerate(test_r20_by_epoch)]
    return {"suite": "s", "model": "T2DIFF", "seed": 1, "rc": rc, "wall_s": wall, "log": "/tmp/x/log.txt",
            "metrics": {"train": [{"step": 10, "loss": 7.0, "tower_loss": 6.9}], "eval": evals,
                        "summary": summary(r20)}}


class Parsing(unittest.TestCase):
    def test_eval_json(self):
        # What `t2diff eval --json` prints: both splits, each with the model's and the baseline's metrics.
        out = json.loads('{"step":9,"valid":{"split":"valid","seconds":1.0,"model":{"users":5,"recall@2":0.1},'
                         '"popularity":{"users":5,"recall@2":0.0}},"test":{"split":"test","seconds":1.0,'
                         '"model":{"users":600,"recall@2":0.2167,"mrr@2":0.2033,"ndcg@20":0.5},'
                         '"popularity":{"users":600,"recall@2":0.01}}}')
        self.assertEqual(rs.eval_metrics(out), {"recall@2": 0.2167, "mrr@2": 0.2033, "ndcg@20": 0.5})
        self.assertEqual(rs.eval_metrics(out, "valid"), {"recall@2": 0.1})
        self.assertIsNone(rs.eval_metrics({}))

    def test_shown_arguments_drop_local_flags_only(self):
        argv = ["--parts", "consistency:tokens", "--no-build", "--build-dir", "/tmp/b", "--resume",
                "--widths", "4", "--build-dir=/x"]
        self.assertEqual(rs.shown_arguments(argv), ["--parts", "consistency:tokens", "--widths", "4"])

    def test_prepare_summary(self):
        lines, train = rs.prepare_summary_lines({"users": "400", "items": "200", "interactions": "10752",
                                                 "min_seq_len": "20", "mean_seq_len": 26.88, "max_seq_len": "40",
                                                 "train_samples": "9552", "train_users": "400"})
        self.assertEqual(train, 9552)
        self.assertEqual(lines[0], "kept: 400 users, 200 items, 10752 interactions; length min 20 / mean 26.9 / max 40")
        self.assertTrue(lines[1].startswith("samples: train 9552 (400 users), valid 0 (0 users)"))

    def test_read_metrics(self):
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "metrics.jsonl")
            with open(p, "w") as f:
                f.write(json.dumps({"kind": "train", "step": 1}) + "\n\n")
                f.write(json.dumps({"kind": "eval", "split": "valid"}) + "\n")
                f.write(json.dumps(summary(0.3)) + "\n")
            m = rs.read_metrics(p)
            self.assertEqual(len(m["train"]), 1)
            self.assertEqual(len(m["eval"]), 1)
            self.assertAlmostEqual(m["summary"]["recall@20"], 0.3)
            with open(p, "a") as f:
                f.write("{not json\n")
            self.assertIsNone(rs.read_metrics(p))
            self.assertIsNone(rs.read_metrics(os.path.join(d, "missing.jsonl")))


class Statistics(unittest.TestCase):
    def test_mean_std(self):
        self.assertEqual(rs.mean_std([]), (None, None))
        self.assertEqual(rs.mean_std([0.5]), (0.5, None))
        m, s = rs.mean_std([0.1, 0.2, 0.3])
        self.assertAlmostEqual(m, 0.2)
        self.assertAlmostEqual(s, 0.1)  # sample standard deviation (n - 1)
        self.assertEqual(rs.fmt(0.2, 0.1), "0.2000 ± 0.1000")
        self.assertEqual(rs.fmt(0.2, None), "0.2000")
        self.assertEqual(rs.fmt(None, None), "–")

    def test_aggregate_selected_and_best_over_epochs(self):
        runs = [run(0.30, [0.31, 0.35, 0.30]), run(0.32, [0.33, 0.32, 0.36]), run(0.9, [0.9], rc=1)]
        agg, ok, total = rs.aggregate(runs)
        self.assertEqual((ok, total), (2, 3))  # the failed run is counted, not averaged
        self.assertAlmostEqual(agg["recall@20"][0], 0.31)
        self.assertAlmostEqual(agg["recall@20"][1], math.sqrt(0.0002))
        # The authors' reading: best test value over epochs per run, then the mean.
        self.assertAlmostEqual(agg["best:recall@20"][0], (0.35 + 0.36) / 2)

    def test_gap_check(self):
        a = {"recall@20": (0.14, 0.003)}
        b = {"recall@20": (0.12, 0.004)}
        ok, text = rs.gap_check(a, b, "recall@20")
        self.assertTrue(ok)  # gap 0.02 > 2 * 0.005
        ok, _ = rs.gap_check(a, {"recall@20": (0.131, 0.004)}, "recall@20")
        self.assertFalse(ok)  # gap 0.009 <= 0.01
        ok, text = rs.gap_check({"recall@20": (0.14, None)}, b, "recall@20")
        self.assertIsNone(ok)
        self.assertIn("1 seed", text)


def agg(r20, sd, ndcg=0.06, mrr=0.1):
    a = {k: (0.0, 0.0) for k in ("recall@2", "mrr@2")}
    a.update({"recall@20": (r20, sd), "ndcg@20": (ndcg, sd), "mrr@20": (mrr, sd)})
    return a


class Targets(unittest.TestCase):
    def test_verdicts(self):
        all_aggs = {
            "ml1m_file_paper": {"T2DIFF": agg(0.34, 0.01, mrr=0.091)},
            "ml1m_time_paper": {"T2DIFF": agg(0.15, 0.002), "T2DIFF_NO_DIFFUSION": agg(0.12, 0.002),
                                "TWO_TOWER_MEAN": agg(0.148, 0.002)},
            "ml100k_paper": {"T2DIFF": agg(0.1, None), "T2DIFF_NO_DIFFUSION": agg(0.2, None)},
        }
        text = rs.targets(all_aggs)
        lines = text.splitlines()
        file_line = next(l for l in lines if l.startswith("| ML-1M file order"))
        self.assertIn("**missed**", file_line)  # MRR@20 0.091 < 0.092
        time_line = next(l for l in lines if "Recall@20 >= 0.14" in l)
        self.assertIn("**met**", time_line)
        nodiff = next(l for l in lines if "without diffusion" in l and "recall@20" in l)
        self.assertIn("**met**", nodiff)
        twotower = next(l for l in lines if "two-tower" in l and "recall@20" in l)
        self.assertIn("**missed**", twotower)
        small = next(l for l in lines if l.startswith("| ml100k_paper"))
        self.assertIn("**missed**", small)


class Beyond(unittest.TestCase):
    def beyond(self):
        def r(v, d):
            return dict(run(v, [v]), dir=d)
        shared = r(0.11, "/w/ckpt1")  # the T = 50 run is also the D = 4 inference model
        return {
            "widths": {16: {"T2DIFF": [r(0.22, "/w/a1"), r(0.21, "/w/a2")],
                            "T2DIFF_NO_DIFFUSION": [r(0.20, "/w/b1"), r(0.20, "/w/b2")]}},
            "width_epochs": {16: (15, 2)},
            "inference": {4: {"as trained": [{"rc": 0, "wall_s": 3.0, "test": {"recall@20": 0.1, "recall@2": 0.01}}],
                              "last behaviour": [{"rc": 2, "wall_s": 1.0, "test": None}]}},
            "steps": {10: {"runs": [r(0.09, "/w/t10")], "latency": 0.5},
                      50: {"runs": [shared], "latency": None}},
            "epochs": 30,
        }

    def test_section_and_time_total(self):
        b = self.beyond()
        text = rs.beyond_section(b, "ML-1M, time order")
        self.assertIn("D = 16: 15 epochs, 2 seed(s)", text)
        self.assertIn("| T2Diff | 16 | 0.0000 ± 0.0000 | 0.2150 ± 0.0071 |", text)
        self.assertIn("| 4 | as trained | 0.0100 | 0.1000 |", text)
        self.assertIn("| 4 | last behaviour | – | – |", text)  # a failed evaluation shows as missing
        self.assertIn("| 10 | 0.0000 | 0.0900 |", text)
        self.assertIn("| 0.50 |", text)
        self.assertIn("| – | 12 |", text)  # no latency for T = 50 here
        runs = rs.beyond_runs(b)
        self.assertEqual(len(runs), 6)
        self.assertEqual(rs.beyond_runs(None), [])
        # The whole page with the beyond part: the time total counts main and beyond runs.
        with tempfile.TemporaryDirectory() as d:
            args = argparse.Namespace(quick=False, seeds=2, results=os.path.join(d, "RESULTS.md"), epochs_scale=1.0)
            suite = rs.SUITES[1]
            now = datetime.datetime(2026, 1, 2, 3, 4)
            rs.write_page(args, [suite], {suite.name: {"T2DIFF": [dict(run(0.1, [0.1]), dir="/w/m")]}},
                          {suite.name: []}, {}, now, now, "m", "abc", b)
            with open(args.results) as f:
                page = f.read()
            self.assertIn("The 7 runs' own wall times add up to 1 minutes", page)  # 7 x 12 s
            self.assertIn("## Beyond the paper", page)
            self.assertIn("D = 16: T2Diff Recall@20 >= 0.14", page)

    def test_width_targets(self):
        width_aggs = {16: {"T2DIFF": agg(0.22, 0.002), "T2DIFF_NO_DIFFUSION": agg(0.20, 0.002),
                           "TWO_TOWER_MEAN": agg(0.219, 0.002)}}
        text = rs.targets({"ml1m_time_paper": {"T2DIFF": agg(0.10, 0.002)}}, width_aggs)
        lines = text.splitlines()
        self.assertIn("**missed**", next(l for l in lines if "D = 4: T2Diff Recall@20 >= 0.14" in l))
        self.assertIn("**met**", next(l for l in lines if "D = 16: T2Diff Recall@20 >= 0.14" in l))
        self.assertIn("**met**", next(l for l in lines if "D = 16: T2Diff above T2Diff without" in l and "recall@20" in l))
        self.assertIn("**missed**", next(l for l in lines if "D = 16: T2Diff above two-tower" in l and "recall@20" in l))


class Page(unittest.TestCase):
    def test_page_is_labelled_and_lists_failures(self):
        with tempfile.TemporaryDirectory() as d:
            args = argparse.Namespace(quick=True, seeds=1, results=os.path.join(d, "RESULTS.md"), epochs_scale=1.0)
            suite = rs.SUITES[0]
            results = {suite.name: {"T2DIFF": [run(0.33, [0.33])], "SASREC": [dict(run(0.1, [0.1], rc=3),
                                                                                   model="SASREC")]}}
            now = datetime.datetime(2026, 1, 2, 3, 4)
            rs.write_page(args, [suite], results, {suite.name: ["kept: 1 users"]}, {}, now, now, "a machine", "abc")
            with open(args.results) as f:
                page = f.read()
            self.assertIn("QUICK MODE", page)
            self.assertIn("python3 bench/quality/run_study.py --quick", page)
            self.assertIn("a machine", page)
            self.assertIn("## " + suite.title, page)
            self.assertIn("| T2Diff | ", page)
            self.assertIn("popularity (floor)", page)
            self.assertIn("*paper: T2Diff", page)  # the published figures beside ours
            self.assertIn("SASREC seed 1: exit 3", page)


paired = rs.paired


def ranks(seed_rows):
    """{(user, target, time, 0): rank} from (user, target, rank) triples (time = target)."""
    return {(u, t, t, 0): r for u, t, r in seed_rows}


class Paired(unittest.TestCase):
    def test_read_ranks_both_formats_and_errors(self):
        with tempfile.TemporaryDirectory() as d:
            tsv = os.path.join(d, "test.3.w0.tsv")
            with open(tsv, "w") as f:
                f.write("user\ttarget\ttime\trank\n7\t11\t100\t4\n8\t12\t101\t1\n")
            js = os.path.join(d, "eval.test")
            with open(js, "w") as f:
                f.write('{"target":13,"rank":9,"user":9,"items":[1,2],"times":[5,6],"time":102}\n')
            self.assertEqual(paired.read_ranks([tsv, js]), {(7, 11, 100, 0): 4, (8, 12, 101, 0): 1, (9, 13, 102, 0): 9})
            # The same item at the same time twice: told apart by order.
            with open(tsv, "a") as f:
                f.write("7\t11\t100\t5\n")
            self.assertEqual(paired.read_ranks([tsv]), {(7, 11, 100, 0): 4, (7, 11, 100, 1): 5, (8, 12, 101, 0): 1})
            bad = os.path.join(d, "bad.tsv")
            with open(bad, "w") as f:
                f.write("user\ttarget\ttime\trank\n1\t2\tx\t3\n")
            with self.assertRaisesRegex(ValueError, "bad.tsv line 2"):
                paired.read_ranks([bad])
            with open(bad, "w") as f:
                f.write("a,b\n")
            with self.assertRaisesRegex(ValueError, "bad.tsv: neither"):
                paired.read_ranks([bad])

    def test_gain_by_hand(self):
        self.assertEqual(paired.gain(20, "recall", 20), 1.0)
        self.assertEqual(paired.gain(21, "recall", 20), 0.0)
        self.assertAlmostEqual(paired.gain(3, "ndcg", 20), 0.5)  # 1 / log2(4)
        self.assertAlmostEqual(paired.gain(1, "ndcg", 20), 1.0)
        self.assertEqual(paired.gain(21, "ndcg", 20), 0.0)

    def test_means_and_per_seed_differences_by_hand(self):
        # Seed 1: A hits (1, 3) of three targets, B hits (3) only: diff 1/3. Seed 2: equal: 0.
        a = [ranks([(1, 10, 1), (1, 11, 3), (2, 12, 50)]), ranks([(1, 10, 5), (2, 11, 40)])]
        b = [ranks([(1, 10, 30), (1, 11, 3), (2, 12, 60)]), ranks([(1, 10, 6), (2, 11, 41)])]
        c = paired.compare(a, b, "recall", 20)
        self.assertAlmostEqual(c["mean_a"], (2 / 3 + 1 / 2) / 2)
        self.assertAlmostEqual(c["mean_b"], (1 / 3 + 1 / 2) / 2)
        self.assertAlmostEqual(c["diff"], 1 / 6)
        self.assertEqual([round(x, 6) for x in c["per_seed"]], [round(1 / 3, 6), 0.0])
        self.assertEqual((c["ahead"], c["seeds"], c["targets"], c["users"]), (1, 2, 5, 4))
        self.assertAlmostEqual(c["rel"], (1 / 6) / ((1 / 3 + 1 / 2) / 2))
        self.assertLessEqual(c["lo"], c["diff"])
        self.assertGreaterEqual(c["hi"], c["diff"])
        n = paired.compare(a, b, "ndcg", 20)  # ranks 1 and 3 against 3: 1 + 0.5 - 0.5 over 3 targets
        self.assertAlmostEqual(n["per_seed"][0], 1 / 3)
        self.assertAlmostEqual(n["per_seed"][1], (1 / math.log2(6) - 1 / math.log2(7)) / 2)

    def test_verdicts(self):
        better = [ranks([(u, 1, 1) for u in range(50)])] * 3
        worse = [ranks([(u, 1, 99) for u in range(50)])] * 3
        c = paired.compare(better, worse)
        self.assertEqual((c["lo"], c["hi"], c["verdict"]), (1.0, 1.0, "A better"))
        self.assertEqual(paired.compare(worse, better)["verdict"], "B better")
        # Seeds that disagree: A gains 10 of 50 hits in one seed, loses 10 in another, ties in a third.
        def seed(gain):
            return (ranks([(u, 1, 1 if u < 25 + gain // 2 else 99) for u in range(50)]),
                    ranks([(u, 1, 1 if u < 25 - gain // 2 else 99) for u in range(50)]))
        pairs = [seed(10), seed(-10), seed(0)]
        m = paired.compare([p[0] for p in pairs], [p[1] for p in pairs])
        self.assertEqual(m["verdict"], "noise")
        self.assertAlmostEqual(m["diff"], 0.0)
        # t-interval by hand: differences 0.2, -0.2, 0: sd 0.2, half width 4.303 * 0.2 / sqrt(3).
        self.assertEqual(m["interval"], "seeds")
        self.assertAlmostEqual(m["hi"], 4.303 * 0.2 / math.sqrt(3))
        self.assertAlmostEqual(m["lo"], -4.303 * 0.2 / math.sqrt(3))
        # Each seed's test sample alone would look clear: the seeds' spread is what makes it noise.
        self.assertLess(m["user_hi"] - m["user_lo"], m["hi"] - m["lo"])

    def test_t_interval_two_seeds_by_hand(self):
        # Seed differences 0.1 and 0.3 (10 users, one target each): mean 0.2, sd 0.1414,
        # half width 12.706 * 0.1414 / sqrt(2) = 1.2706.
        def seed(hits_a, hits_b):
            return (ranks([(u, 1, 1 if u < hits_a else 99) for u in range(10)]),
                    ranks([(u, 1, 1 if u < hits_b else 99) for u in range(10)]))
        pairs = [seed(3, 2), seed(5, 2)]
        c = paired.compare([p[0] for p in pairs], [p[1] for p in pairs])
        self.assertAlmostEqual(c["diff"], 0.2)
        self.assertAlmostEqual(c["lo"], 0.2 - 1.2706, places=4)
        self.assertAlmostEqual(c["hi"], 0.2 + 1.2706, places=4)
        self.assertEqual(c["verdict"], "noise")
        self.assertEqual(paired.t95(4), 2.776)
        self.assertEqual(paired.t95(100), 1.96)

    def test_users_are_resampled_not_targets(self):
        # One user with 10 winning targets, 9 users with one tie each: 10 of 19 targets differ, all
        # in A's favour, but they are one user's: without that user (a third of the draws) the
        # difference is 0, so the interval reaches 0 and the verdict is noise.
        a = ranks([(0, t, 1) for t in range(10)] + [(u, 100, 5) for u in range(1, 10)])
        b = ranks([(0, t, 99) for t in range(10)] + [(u, 100, 5) for u in range(1, 10)])
        c = paired.compare([a], [b])
        self.assertAlmostEqual(c["diff"], 10 / 19)
        self.assertEqual(c["interval"], "users")  # one seed: the users' bootstrap is the interval
        self.assertEqual(c["lo"], 0.0)
        self.assertEqual(c["verdict"], "noise")

    def test_different_targets_are_refused(self):
        with self.assertRaisesRegex(ValueError, "seed 1: .*different targets .* not the same split"):
            paired.compare([ranks([(1, 1, 1)])], [ranks([(1, 2, 1)])])
        with self.assertRaisesRegex(ValueError, "same, non-zero number of seeds"):
            paired.compare([ranks([(1, 1, 1)])], [])

    def test_paired_page(self):
        block = rs.paired_blocks()[0]
        block.epochs_used = 30
        better = {"rc": 0, "wall_s": 60.0, "ranks": ranks([(u, 1, 1) for u in range(40)]),
                  "summary": {"recall@20": 1.0, "ndcg@20": 1.0, "mrr@20": 1.0, "best_epoch": 27}}
        worse = dict(better, ranks=ranks([(u, 1, 30) for u in range(40)]), summary={"recall@20": 0.0})
        failed = {"rc": 3, "wall_s": 1.0, "ranks": None, "summary": {}, "dir": "/w/failed"}
        by_arm = OrderedDict((name, [worse, worse]) for name in block.arms)
        by_arm["t2diff"] = [better, better]
        by_arm["t2diff_concat"] = [better, failed]
        provenance = {"command": "python3 bench/quality/run_study.py --parts 2x2", "machine": "CPU X, 2 cores",
                      "revision": "abc", "quick": False, "started": "2026-01-02 03:04", "finished": "2026-01-02 05:06"}
        rec = rs.block_record(block, by_arm, {block.suite: ["kept: 9 users"]}, 2, provenance)
        with tempfile.TemporaryDirectory() as d:
            # The page is rendered from the stored record, read back from its file.
            store_path = os.path.join(d, "results", "paired.json")
            rs.save_store(store_path, {rs.record_key(rec): rec})
            store = rs.load_store(store_path)
            self.assertEqual(list(store), [("2x2", "ml1m_time_paper", 4, "")])
            rs.write_paired_page(os.path.join(d, "RESULTS.md"), rs.ordered_records(store))
            with open(os.path.join(d, "RESULTS.md")) as f:
                page = f.read()
        self.assertIn("  - `python3 bench/quality/run_study.py --parts 2x2`: 2026-01-02 03:04 to 05:06 UTC, "
                      "revision abc, on CPU X, 2 cores;", page)
        self.assertIn("Measured 2026-01-02 03:04 to 05:06 UTC, revision abc, CPU X.", page)
        self.assertIn("## The answer", page)
        self.assertIn("| 4 | T2Diff (FFN user vector) | 1.0000 | 0.0000 | +1.0000 (+1.0000, +1.0000) | 2/2 | **better** |",
                      page)
        self.assertIn("default stays the paper's model", page)
        self.assertIn("not shown at both widths: T2Diff (FFN user vector) (better at D = 4; measured at D = 4)", page)
        self.assertNotIn("| 4 | no diffusion (CONCAT) |", page)  # only T2Diff variants decide
        self.assertIn("| diffusion, FFN user vector: T2Diff (FFN user vector) against no diffusion (FFN) | Recall@20 | "
                      "1.0000 | 0.0000 | +1.0000 (+1.0000, +1.0000) | (+1.0000, +1.0000) | – | 2/2 | **A better** |", page)
        self.assertIn("missing runs (1 of 2 seeds)", page)
        self.assertIn("| T2Diff (FFN user vector) | 1.0000 ± 0.0000 | 1.0000 ± 0.0000 | 1.0000 ± 0.0000 | "
                      "27.0 ± 0.0 | 60 ± 0 | 2/2 |", page)
        self.assertIn("- /w/failed: exit 3", page)
        self.assertEqual(page.count("/w/failed: exit 3"), 1)  # listed once, though two arms could share a run

    def test_consistency_blocks_share_the_2x2_models(self):
        # The three consistency blocks and the D = 4 2x2 train T2Diff and no diffusion alike, so
        # one invocation trains them once (run_paired refuses two settings for one run folder).
        blocks = [b for b in rs.paired_blocks() if b.suite == "ml1m_time_paper" and b.width == 4]
        self.assertEqual([b.name for b in blocks], ["", "tokens", "sampler", "items"])
        for b in blocks:
            self.assertEqual((b.epochs, b.every), (30, 3))
            for name in ("t2diff", "nodiff"):
                self.assertEqual((b.arms[name].kind, b.arms[name].sets, b.arms[name].keep),
                                 (blocks[0].arms[name].kind, blocks[0].arms[name].sets, blocks[0].arms[name].keep))
            for a, b_, _ in b.comparisons:
                self.assertIn(a, b.arms)
                self.assertIn(b_, b.arms)

    def test_industrial_block_compares_its_own_arms(self):
        # The industrial part: the lean layout sets both options, evaluation arms read kept
        # checkpoints, and every comparison names arms of the block.
        [block] = [b for b in rs.paired_blocks() if b.part == "industrial"]
        self.assertEqual((block.suite, block.width), ("synthetic_paper", 16))
        self.assertEqual(block.arms["lean"].sets, ["model.unet_channels=4", "model.diffusion_window=10"])
        for arm in block.arms.values():
            if arm.parent:
                self.assertTrue(block.arms[arm.parent].keep, arm.name)
        self.assertEqual(block.arms["lean.ddim10"].eval_sets, rs.DDIM10)
        for a, b, _ in block.comparisons:
            self.assertIn(a, block.arms)
            self.assertIn(b, block.arms)

    def test_store_keeps_other_blocks_and_orders_them(self):
        def rec(part, suite, width, name=""):
            return {"part": part, "suite": suite, "width": width, "name": name, "x": 1}
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "paired.json")
            self.assertEqual(rs.load_store(path), {})  # none yet: empty
            store = OrderedDict()
            for r in (rec("datasets", "ml100k_paper", 4), rec("2x2", "ml1m_time_paper", 16),
                      rec("consistency", "ml1m_time_paper", 4, "items"), rec("consistency", "ml1m_time_paper", 4, "tokens"),
                      rec("2x2", "ml1m_time_paper", 4)):
                store[rs.record_key(r)] = r
            rs.save_store(path, store)
            again = rs.load_store(path)
            again[("2x2", "ml1m_time_paper", 16, "")] = dict(rec("2x2", "ml1m_time_paper", 16), x=2)  # a part rerun
            rs.save_store(path, again)
            order = [rs.record_key(r) for r in rs.ordered_records(rs.load_store(path))]
            self.assertEqual(order, [("2x2", "ml1m_time_paper", 4, ""), ("consistency", "ml1m_time_paper", 4, "tokens"),
                                     ("consistency", "ml1m_time_paper", 4, "items"), ("2x2", "ml1m_time_paper", 16, ""),
                                     ("datasets", "ml100k_paper", 4, "")])
            self.assertEqual(rs.load_store(path)[("2x2", "ml1m_time_paper", 16, "")]["x"], 2)
            with open(path, "w") as f:
                f.write('{"blocks": [{"part": "2x2"')  # truncated
            with self.assertRaises(SystemExit):
                rs.load_store(path)


if __name__ == "__main__":
    unittest.main()
