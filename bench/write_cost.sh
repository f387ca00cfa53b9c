#!/usr/bin/env bash
# Runs the write-cost benchmark (bench/src/bin/write_cost.rs) against the pinned DynamoDB
# emulator: starts scripts/moto_serial.py from .cache/venv (made by scripts/test.sh) on a free
# loopback port between 20000 and 29999, runs the benchmark with the arguments given, and
# stops the emulator by PID when it ends, pass or fail.
#
#   bash bench/write_cost.sh                      # workload W, 200,000 events (hours on moto, see RESULTS.md)
#   bash bench/write_cost.sh --events 20000       # a quicker run
#   bash bench/write_cost.sh --events 20000 --baseline-sample 0.1 --seed 7
#   bash bench/write_cost.sh --events 10000 --conflicts 0.01 --aggregators 4
#   bash bench/write_cost.sh --matrix --events 10000   # issue 16's grid, one run per cell
#
# --matrix runs the benchmark once per cell of issue 16's grid, each on a fresh table of the
# same emulator: batch sizes "100 1000" (the template's default before and after issue 16),
# 1, 4 and 8 aggregators, 1 % and 5 % injected conflicts (the fault proxy); WRITE_COST_BATCHES,
# WRITE_COST_AGGREGATORS and WRITE_COST_CONFLICTS override the lists. Other arguments go to
# every run. It prints each run's CELL line as it ends, then a table of them all.
# WRITE_COST_PORT picks the emulator's port instead of a random free one.
set -euo pipefail
cd "$(dirname "$0")/.."

matrix=0
args=()
for a in "$@"; do
  if [ "$a" = "--matrix" ]; then matrix=1; else args+=("$a"); fi
done

VENV=.cache/venv
[ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import moto' 2>/dev/null ||
  { echo "the emulator is not installed in $VENV: run bash scripts/test.sh once (it installs it)" >&2; exit 1; }

port=${WRITE_COST_PORT:-}
[ -n "$port" ] || port=$(python3 -c '
import random, socket
for _ in range(200):
    p = random.randint(20000, 29999)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
')
[ -n "$port" ] || { echo "no free port in 20000-29999" >&2; exit 1; }

log=$(mktemp -t tally-write-cost-moto.XXXXXX.log)
"$VENV/bin/python" scripts/moto_serial.py -H 127.0.0.1 -p "$port" > "$log" 2>&1 &
moto_pid=$!
stop_moto() {
  kill "$moto_pid" 2>/dev/null || true
  # A busy emulator may not stop on SIGTERM at once; give it 5 s, then SIGKILL (by PID).
  for _ in $(seq 1 50); do kill -0 "$moto_pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$moto_pid" 2>/dev/null || true
  wait "$moto_pid" 2>/dev/null || true
  rm -f "$log"
}
trap stop_moto EXIT
for _ in $(seq 1 200); do
  if ! kill -0 "$moto_pid" 2>/dev/null; then
    echo "moto exited before answering:" >&2
    cat "$log" >&2
    exit 1
  fi
  if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/', timeout=1)" 2>/dev/null; then
    break
  fi
  sleep 0.1
done

export TALLY_TEST_AWS_ENDPOINT="http://127.0.0.1:$port"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
if [ "$matrix" = 0 ]; then
  cargo run -q -p tally-bench --bin write_cost -- "${args[@]}"
  exit 0
fi

cargo build -q -p tally-bench --bin write_cost
cells=$(mktemp -t tally-write-cost-cells.XXXXXX)
for batch in ${WRITE_COST_BATCHES:-100 1000}; do
  for conflicts in ${WRITE_COST_CONFLICTS:-0.01 0.05}; do
    for aggregators in ${WRITE_COST_AGGREGATORS:-1 4 8}; do
      echo "== batch $batch, $aggregators aggregator(s), conflicts $conflicts ($(date -u +%H:%M:%S) UTC)" >&2
      out=$(target/debug/write_cost --baseline-sample 0.01 "${args[@]}" --batch "$batch" \
        --aggregators "$aggregators" --conflicts "$conflicts" | tee /dev/stderr | grep '^CELL ' || true)
      if [ -n "$out" ]; then echo "$out" | tee -a "$cells"; else echo "CELL batch=$batch aggregators=$aggregators conflicts=$conflicts FAILED" | tee -a "$cells"; fi
    done
  done
done
echo
python3 - "$cells" <<'PY'
import sys
rows = [dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv) for line in open(sys.argv[1])]
cols = [("meters", "meters"), ("batch", "batch"), ("aggregators", "aggregators"), ("conflicts", "conflicts"),
        ("wcu_per_event", "WCU/event"), ("wcu_per_event_if_cancelled_free", "WCU/event if cancelled tx are free"),
        ("guard_wcu_per_event", "guard WCU/event"), ("rcu_per_event", "RCU/event"),
        ("cancelled_tx", "cancelled tx"), ("retries_per_event", "retries/event"),
        ("dead_lettered", "dead-lettered"), ("baseline_wcu_per_event", "naive baseline WCU/event"),
        ("exact", "counters exact")]
print("| " + " | ".join(c[1] for c in cols) + " |")
print("|" + "---|" * len(cols))
for r in rows:
    print("| " + " | ".join(r.get(k, "FAILED") for k, _ in cols) + " |")
PY
rm -f "$cells"
