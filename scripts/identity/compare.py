#!/usr/bin/env python3
"""Compares two identity-check output folders (scripts/identity/check.sh): model files byte for
byte, metrics by value. Job B (async) is reported but not judged: async runs are not reproducible."""
import filecmp, json, os, sys
a, b = sys.argv[1], sys.argv[2]
bad = 0
def files(root):
    out = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = p
    return out
fa, fb = files(a), files(b)
model_files = [k for k in fa if ("/sparse/" in k or k.endswith("dense.t2dd") or "/bundle/" in k and k.endswith(".npy") or k.startswith("ranks"))]
same = 0
for k in sorted(model_files):
    judged = not k.startswith("ckptB/")
    if k not in fb:
        print("missing in new:", k); bad += judged
    elif not filecmp.cmp(fa[k], fb[k], shallow=False):
        print("DIFFERS:" if judged else "differs (async, not judged):", k); bad += judged
    else:
        same += 1
print("model files identical: %d of %d" % (same, len(model_files)))
def recs(p):
    return [json.loads(l) for l in open(p) if l.strip()]
timing = {"samples_per_s", "train_seconds", "eval_seconds", "step_seconds", "seconds"}
nrec = 0
for k in sorted(x for x in fa if x.endswith("metrics.jsonl") and not x.startswith("outB/")):
    ra, rb = recs(fa[k]), recs(fb[k])
    if len(ra) != len(rb):
        print("record count differs", k, len(ra), len(rb)); bad += 1; continue
    for x, y in zip(ra, rb):
        for key, v in x.items():
            if key in timing: continue
            w = y.get(key)
            if isinstance(v, dict):
                for kk, vv in v.items():
                    if abs(vv - w[kk]) > 5e-6: print("metric differs", k, key, kk, vv, w[kk]); bad += 1
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                if abs(v - w) > 5e-6: print("metric differs", k, key, v, w); bad += 1
            elif v != w:
                print("field differs", k, key, v, w); bad += 1
        nrec += 1
print("metrics records equal (timing fields excluded; values to the old 6 decimals): %d" % nrec)
for log in ("a_eval.log", "a_ret.log"):
    la = [l for l in open(os.path.join(a, log)) if not l.startswith(("I", "W", "latency"))]
    lb = [l for l in open(os.path.join(b, log)) if not l.startswith(("I", "W", "latency"))]
    print(log, "identical" if la == lb else "DIFFERS"); bad += la != lb
sys.exit(1 if bad else 0)
