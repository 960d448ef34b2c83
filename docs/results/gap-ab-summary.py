#!/usr/bin/env python3
"""Summarise a gap-ab.sh run: per workload the p50s of each build and the
after/before ratio of the p50s with a 95% bootstrap interval (rounds
resampled), then the geometric mean of the ratios over the workloads (its
interval from the same resampling). Usage: gap-ab-summary.py OUT.jsonl"""
import json, math, random, statistics, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
bad = [r for r in rows if r["mismatches"]]
if bad:
    sys.exit(f"{len(bad)} restores had mismatching pages")
metrics = [("e2e_ns", "e2e"), ("resume_wait_ns", "resume wait"), ("preinstall_ns", "pre-install"), ("stall_ns", "stalls >5µs")]
by = {}
for r in rows:
    by.setdefault(r["workload"], {}).setdefault(r["round"], {})[r["build"]] = r
rng = random.Random(1)
B = 2000

def ratio(pairs, k):
    a = statistics.median(p["after"][k] for p in pairs)
    b = statistics.median(p["before"][k] for p in pairs)
    return a / b if b else float("nan")

print("| workload | n | " + " | ".join(f"{n} p50 ms before → after | {n} after/before [95%]" for _, n in metrics) + " |")
print("|---|---|" + "---|---|" * len(metrics))
boots = {k: [[] for _ in range(B)] for k, _ in metrics}
point = {k: [] for k, _ in metrics}
for w in sorted(by):
    pairs = [v for v in by[w].values() if "before" in v and "after" in v]
    cells = []
    for k, _ in metrics:
        r = ratio(pairs, k)
        point[k].append(r)
        bs = []
        for i in range(B):
            s = [rng.choice(pairs) for _ in pairs]
            x = ratio(s, k)
            bs.append(x)
            boots[k][i].append(x)
        bs.sort()
        lo, hi = bs[int(0.025 * B)], bs[int(0.975 * B) - 1]
        mb = statistics.median(p["before"][k] for p in pairs) / 1e6
        ma = statistics.median(p["after"][k] for p in pairs) / 1e6
        cells.append(f"{mb:.2f} → {ma:.2f} | {r:.2f}x [{lo:.2f}, {hi:.2f}]")
    print(f"| {w} | {len(pairs)} | " + " | ".join(cells) + " |")

def gm(xs):
    xs = [x for x in xs if x > 0 and not math.isnan(x)]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")

for k, n in metrics:
    g = sorted(gm(b) for b in boots[k])
    print(f"geomean {n} after/before: {gm(point[k]):.3f}x [{g[int(0.025 * B)]:.3f}, {g[int(0.975 * B) - 1]:.3f}]")
