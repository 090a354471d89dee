#!/usr/bin/env python3
"""Tests of bench/scale/run_scale.py's bookkeeping: peak RSS of a child, the json line of
bench_ps_tables, and the page's verdicts (memory bound, pull ratio, bounded or growing RSS) on
hand-made records. Nothing is trained; standard-library Python only."""

import importlib.util
import os
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "..", "bench", "scale", "run_scale.py")
spec = importlib.util.spec_from_file_location("run_scale", SCRIPT)
rs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rs)


def tables_run(total_rss, pull, local_pull, loaded=False):
    server = {"shard": 0, "rss_bytes": total_rss, "peak_rss_bytes": total_rss,
              "tables": [{"name": "user", "rows": 1000, "bytes": 72_000}, {"name": "item", "rows": 10, "bytes": 2_700}]}
    return {"machine": "m", "servers": 4, "workers": 2, "user_rows": 1000, "user_dim": 16, "item_rows": 10,
            "item_dim": 64, "payload_bytes": [68, 260], "batch": 4096, "zipf": 1.05, "local": True,
            "local_fill_rows_s": 1e6, "local_rss_bytes_per_row": 100.0, "local_table_bytes_per_row": 95.0,
            "local_pull": [local_pull, local_pull], "local_push": [1e6, 1e6], "loaded": loaded, "fill_seconds": 2.0,
            "load_bytes": 4e9 if loaded else 0, "server_stats": [server], "total_rss_bytes": total_rss,
            # 1000 x (68 x 1.15 + 32) + 10 x (260 x 1.15 + 32) = 110,200 + 3,310
            "rss_bound_bytes": 113_510, "rows_ok": True, "pull": [pull, pull], "push": [1e6, 1e6],
            "save_seconds": 4.0, "save_bytes": 2e9}


def stored(result):
    return {"date": "d", "machine": "m", "revision": "r", "minutes": 1.0, "result": result}


class PeakRss(unittest.TestCase):
    def test_a_child_that_touches_200_mib_reports_at_least_that(self):
        with tempfile.TemporaryDirectory() as d:
            rc, _, rss, text = rs.run([sys.executable, "-c", "b = bytearray(200 << 20); print('ok')"],
                                      os.path.join(d, "log"), 60)
        self.assertEqual(rc, 0)
        self.assertEqual(text.strip(), "ok")
        self.assertGreaterEqual(rss, 200 << 20)

    def test_a_grandchild_counts_as_mpirun_ranks_do(self):
        child = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'b = bytearray(200 << 20)'])"
        with tempfile.TemporaryDirectory() as d:
            rc, _, rss, _ = rs.run([sys.executable, "-c", child], os.path.join(d, "log"), 60)
        self.assertEqual(rc, 0)
        self.assertGreaterEqual(rss, 200 << 20)

    def test_a_failing_command_reports_its_exit_code(self):
        with tempfile.TemporaryDirectory() as d:
            rc, _, _, _ = rs.run([sys.executable, "-c", "import sys; sys.exit(3)"], os.path.join(d, "log"), 60)
        self.assertEqual(rc, 3)


class JsonLine(unittest.TestCase):
    def test_the_last_json_line_is_read(self):
        text = "machine: x\njson {\"a\": 1}\nI1203 log line\njson {\"a\": 2}\ndone\n"
        self.assertEqual(rs.json_line(text, "bench"), {"a": 2})


class Page(unittest.TestCase):
    def test_memory_and_pull_verdicts(self):
        ok = {"fill": tables_run(113_000, 6e6, 10e6), "load": tables_run(113_000, 6e6, 10e6, loaded=True),
              "commands": ["c1", "c2"]}
        page = "\n".join(rs.render_tables(ok))
        self.assertIn("| total server RSS after filling | 0.00 GB (111.9 B a row) | <= 0.00 GB: **met** |", page)
        self.assertIn("| user pull through 4 servers / in-process lookup, second job | 6.00 / 10.00 M rows/s = 0.60x | >= 0.5x: **met** |", page)
        self.assertIn("| save the shard set | 4.0 s, 2.00 GB, 0.50 GB/s | |", page)
        self.assertIn("| load it into 4 fresh servers | 2.0 s, 2.00 GB/s | |", page)
        bad = {"fill": tables_run(114_000, 4e6, 10e6), "load": tables_run(114_000, 4e6, 10e6, loaded=True),
               "commands": []}
        page = "\n".join(rs.render_tables(bad))
        self.assertIn("<= 0.00 GB: **missed** |", page)
        self.assertIn("= 0.40x | >= 0.5x: **missed** |", page)

    def test_rss_that_grows_with_the_data_is_called_so(self):
        size = {"interactions": 1000, "disk_bytes": 93_000, "generate_s": 1, "train_s": 1}
        rec = {"sizes": [dict(size, users=10, generate_peak_rss=100, train_peak_rss=100),
                         dict(size, users=100, generate_peak_rss=110, train_peak_rss=300)]}
        page = "\n".join(rs.render_stream(rec))
        self.assertIn("| 93.0 |", page)
        self.assertIn("generate peak rss: 1.10x at 10x the data: bounded", page)
        self.assertIn("train peak rss: 3.00x at 10x the data: **grows with the data**", page)
        csv = {"csv": [{"rows": 10, "csv_bytes": 1, "prepare_s": 1, "prepare_peak_rss": 100, "sort_runs": 2},
                       {"rows": 100, "csv_bytes": 1, "prepare_s": 1, "prepare_peak_rss": 124, "sort_runs": 20}]}
        page = "\n".join(rs.render_prepare(csv))
        self.assertIn("| 100 | 0.00 GB | 1 s | 20 | 0.00 GB |", page)
        self.assertIn("prepare peak RSS: 1.24x at 10x the rows: bounded", page)
        csv["csv"][1]["prepare_peak_rss"] = 126
        rows = rs.summary_rows({"prepare": {"result": csv}})
        self.assertEqual(rows[-1][3], "**missed**")

    def test_parts_not_run_say_so_and_runs_say_where(self):
        page = rs.render({"tables": stored({"fill": tables_run(1, 6e6, 10e6), "load": tables_run(1, 6e6, 10e6, True),
                                            "commands": []})}, quick=True)
        self.assertIn("(quick mode", page)
        self.assertIn("Run d on m at revision r (1 min).", page)
        self.assertIn("Not run yet (`--parts catalogue`).", page)
        self.assertIn("Not run yet (`--parts model`).", page)


if __name__ == "__main__":
    unittest.main()
