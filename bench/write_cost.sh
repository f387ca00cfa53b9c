#!/usr/bin/env bash
# Runs the write-cost benchmark (bench/src/bin/write_cost.rs) against the pinned DynamoDB
# emulator: starts scripts/moto_serial.py from .cache/venv (made by scripts/test.sh) on a free
# loopback port between 20000 and 29999, runs the benchmark with the arguments given, and
# stops the emulator by PID when it ends, pass or fail.
#
#   bash bench/write_cost.sh                      # workload W, 200,000 events (hours on moto, see RESULTS.md)
#   bash bench/write_cost.sh --events 20000       # a quicker run
#   bash bench/write_cost.sh --events 20000 --baseline-sample 0.1 --seed 7
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.cache/venv
[ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import moto' 2>/dev/null ||
  { echo "the emulator is not installed in $VENV: run bash scripts/test.sh once (it installs it)" >&2; exit 1; }

port=$(python3 -c '
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
cargo run -q -p tally-bench --bin write_cost -- "$@"
