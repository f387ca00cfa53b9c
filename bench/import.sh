#!/usr/bin/env bash
# Measures `tally import` on the embedded SQLite store: a fresh data directory, one org on the
# pro plan with ten projects, an NDJSON file of N compute-minute events (default 100,000,
# spread over the projects and over the current month, unique ids), then the import, timed
# from the shell (the whole process: start, validation, ledger, counters, exit). A second run
# of the same file measures the all-duplicate rerun. Compare with `ingest_load`'s
# "Zipf, 1,000 events/request" row, which is POST /v1/events with 1,000-event requests.
#
# Usage: cargo build --release -p tally && bash bench/import.sh [EVENTS]
# (TALLY_BIN=path picks another binary.)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100000}
bin=${TALLY_BIN:-target/release/tally}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export TALLY_LOG=warn
t() { "$bin" --data "$dir" --json "$@"; }
id() { python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'; }
org=$(t org create --name Bench --slug bench --owner-email bench@example.com --plan pro | id)
projects=()
for i in $(seq 0 9); do
  projects+=("$(t project create --org "$org" --name "P$i" --slug "p$i" | id)")
done
python3 - "$n" "$dir/events.ndjson" "${projects[@]}" <<'PY'
import datetime, json, sys
n, path, projects = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
now = datetime.datetime.now(datetime.timezone.utc)
start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
span = max(1, int((now - start).total_seconds()) - 600)
with open(path, "w") as f:
    for i in range(n):
        ts = start + datetime.timedelta(seconds=i * span // n)
        f.write(json.dumps({"id": f"bench-{i}", "project_id": projects[i % len(projects)],
                            "meter": "compute_minutes", "quantity": "1.5",
                            "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ")}) + "\n")
PY
for run in first rerun; do
  s=$(date +%s.%N)
  out=$(t import --org "$org" "$dir/events.ndjson")
  e=$(date +%s.%N)
  python3 - "$run" "$s" "$e" "$n" "$out" <<'PY'
import json, sys
run, s, e, n, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
secs = e - s
print(f"{run:6} {n} events in {secs:.2f} s: {n / secs:,.0f} events/s "
      f"(accepted {out['accepted']}, duplicate {out['duplicate']}, rejected {out['rejected']})")
PY
done
# The usage read back must be exactly 1.5 minutes per event, counted once.
t usage --org "$org" --meter compute_minutes --granularity month | python3 -c '
import json, sys
from decimal import Decimal
n = int(sys.argv[1])
total = sum(Decimal(p["value"]) for p in json.load(sys.stdin)["series"])
want = Decimal("1.5") * n
verdict = "ok" if total == want else "WRONG"
print(f"usage read back: {total} minutes (want {want}): {verdict}")
sys.exit(0 if total == want else 1)
' "$n"
