#!/usr/bin/env bash
# The billing fan-out at scale: lambda/tests/billing_fanout_aws.rs (the monthly step
# enqueues one item per org on an SQS queue, several concurrent consumers bill them under a
# per-invocation time budget with the Stripe double's faults on, one consumer killed
# mid-item, one item lost and found by the catch-up) with 2,000 orgs, after the test
# command's 200 as the baseline, each on a fresh emulator started here (scripts/moto_serial.py
# from .cache/venv, made by scripts/test.sh) and stopped by PID when it ends.
#
#   bash bench/fanout.sh            # 200 (baseline), then 2,000 orgs
#   bash bench/fanout.sh 500        # 200, then 500
#   BASELINE=0 bash bench/fanout.sh # 2,000 only
#   TALLY_MOTO_WHOLE_TABLE=1 bash bench/fanout.sh 500
#                                   # on the emulator as it was before its keyed transaction
#                                   # rollback and partition queries (see scripts/moto_serial.py)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

VENV=.cache/venv
[ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import moto' 2>/dev/null ||
  { echo "the emulator is not installed in $VENV: run bash scripts/test.sh once (it installs it)" >&2; exit 1; }

cargo test -p tally-lambda --test billing_fanout_aws --no-run

moto_pid=""
trap '[ -n "$moto_pid" ] && kill -9 "$moto_pid" 2>/dev/null || true' EXIT

run() {
  local orgs=$1 port log
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  log=$(mktemp -t tally-fanout-moto.XXXXXX.log)
  "$VENV/bin/python" scripts/moto_serial.py -H 127.0.0.1 -p "$port" > "$log" 2>&1 &
  moto_pid=$!
  for _ in $(seq 1 200); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/', timeout=1)" 2>/dev/null && break
    sleep 0.1
  done
  local start end
  start=$(date +%s)
  TALLY_FANOUT_ORGS=$orgs TALLY_TEST_AWS_ENDPOINT="http://127.0.0.1:$port" \
    AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
    cargo test -q -p tally-lambda --test billing_fanout_aws -- --nocapture 2>&1 | grep -E -A3 '^fanout:|test result|panicked'
  end=$(date +%s)
  echo "orgs=$orgs wall=$((end - start)) s (test process, including seeding and checks)${TALLY_MOTO_WHOLE_TABLE:+, TALLY_MOTO_WHOLE_TABLE=$TALLY_MOTO_WHOLE_TABLE}"
  kill "$moto_pid" 2>/dev/null || true
  # A busy emulator may not stop on SIGTERM at once; give it 5 s, then SIGKILL (by PID).
  for _ in $(seq 1 50); do kill -0 "$moto_pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$moto_pid" 2>/dev/null || true
  wait "$moto_pid" 2>/dev/null || true
  moto_pid=""
}

if [ "${BASELINE:-1}" = 1 ]; then
  echo "== baseline: 200 orgs (the test command's run)"
  run 200
fi
echo "== ${1:-2000} orgs"
run "${1:-2000}"
