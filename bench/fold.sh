#!/usr/bin/env bash
# Runs the fold benchmark (criterion) and prints, beside criterion's mean, the fastest and the
# median of its samples per fold. On a shared two-core VM other tenants only ever add time, so
# the fastest sample is the closest to the code's own cost and the mean the most pessimistic.
#
# Usage: bash bench/fold.sh [criterion filter, e.g. tally_fold]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p tally-bench --bench fold -- "$@" 2>&1 | grep -E '^fold_|time:|thrpt:' | grep -v change || true
python3 - <<'PY'
import glob, json, os
root = "target/criterion/fold_workload_w_batches_of_1000"
events = 100_000
for path in sorted(glob.glob(f"{root}/*/new/sample.json")):
    name = path.split("/")[-3]
    d = json.load(open(path))
    per_iter = sorted(t / i / 1e6 for i, t in zip(d["iters"], d["times"]))
    fastest, median = per_iter[0], per_iter[len(per_iter) // 2]
    mean = sum(per_iter) / len(per_iter)
    print(f"{name:16} fastest {fastest:7.2f} ms ({events / fastest / 1e3:5.2f} M events/s)"
          f"  median {median:7.2f} ms ({events / median / 1e3:5.2f} M/s)"
          f"  mean {mean:7.2f} ms ({events / mean / 1e3:5.2f} M/s)")
PY
