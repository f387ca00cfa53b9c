#!/usr/bin/env bash
# The one command that runs Tally's whole test suite on a fresh clone: formatting, lints,
# then every unit, property, conformance and end-to-end test, on SQLite and on the AWS
# emulator. It installs the pinned emulator (moto[server] 5.2.5, cached in .cache/venv),
# starts it (through scripts/moto_serial.py) on a free loopback port, and stops it by PID when the tests end, pass or fail.
# It also checks the OpenAPI document of a running `tally serve` with openapi-spec-validator
# and schemathesis (scripts/openapi_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE=1
# The suite builds once from a clean clone: incremental caches would add ~1.7 GB to a ~5 GB
# target directory and save nothing. CI once ran out of disk; keep its footprint small.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

MOTO_VERSION=5.2.5
VENV=.cache/venv
mkdir -p .cache

step() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

# venv_ready VENV PIN...: VENV holds each pinned distribution (`moto[server]==5.2.5`) at
# exactly its version.
venv_ready() {
  local venv=$1
  shift
  [ -x "$venv/bin/python" ] &&
    "$venv/bin/python" - "$@" 2>/dev/null <<'PY'
import importlib.metadata as m, sys
pins = [p.split("==") for p in sys.argv[1:]]
sys.exit(not all(m.version(name.split("[")[0]) == version for name, version in pins))
PY
}

moto_ready() {
  [ -x "$VENV/bin/moto_server" ] && venv_ready "$VENV" "moto[server]==$MOTO_VERSION"
}

# Background installs still running when the script stops early (a failed fmt, clippy or
# build) are stopped, children first, so a rerun never races an old pip in the same venv.
bg_pids=()
stop_background() {
  for p in "${bg_pids[@]}"; do
    pkill -P "$p" 2>/dev/null || true
    kill "$p" 2>/dev/null || true
  done
}
trap stop_background EXIT

# venv_install VENV LOG PIN...: builds VENV afresh with the pins in the background, logging
# to LOG; the installer's PID is left in last_pid (and in bg_pids, to stop on an early exit).
venv_install() {
  local venv=$1 log=$2
  shift 2
  step "installing $* into $venv (background)"
  ( rm -rf "$venv" && python3 -m venv "$venv" &&
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$@" ) > "$log" 2>&1 &
  last_pid=$!
  bg_pids+=("$last_pid")
}

# venv_await PID LOG WHAT READY: waits for an install venv_install started (none if PID is
# empty), then checks it with the function READY; on a failure shows LOG and stops.
venv_await() {
  local pid=$1 log=$2 what=$3 ready=$4
  if [ -n "$pid" ]; then
    step "waiting for the $what install"
    wait "$pid" || { echo "installing $what failed:" >&2; cat "$log" >&2; exit 1; }
  fi
  "$ready" || { echo "$what is not usable:" >&2; cat "$log" >&2 || true; exit 1; }
}

# Install the emulator in the background while cargo compiles; pip needs no CPU to speak of.
install_pid=""
if ! moto_ready; then
  venv_install "$VENV" .cache/pip.log "moto[server]==$MOTO_VERSION"
  install_pid=$last_pid
fi

# The template checkers (cfn-lint, sam validate --lint) in their own cached venv, also in the
# background; about a minute on a fresh machine.
CFN_LINT_VERSION=1.58.0
SAM_CLI_VERSION=1.170.0
TOOLS=.cache/tools-venv
TOOLS_PINS=("cfn-lint==$CFN_LINT_VERSION" "aws-sam-cli==$SAM_CLI_VERSION")
tools_ready() {
  [ -x "$TOOLS/bin/cfn-lint" ] && [ -x "$TOOLS/bin/sam" ] && venv_ready "$TOOLS" "${TOOLS_PINS[@]}"
}
tools_pid=""
if ! tools_ready; then
  venv_install "$TOOLS" .cache/tools-pip.log "${TOOLS_PINS[@]}"
  tools_pid=$last_pid
fi

# The OpenAPI checkers (openapi-spec-validator, schemathesis) in their own cached venv, also
# in the background; about 30 s on a fresh machine.
OAS_VALIDATOR_VERSION=0.9.0
SCHEMATHESIS_VERSION=4.32.5
OAS=.cache/oas-venv
OAS_PINS=("openapi-spec-validator==$OAS_VALIDATOR_VERSION" "schemathesis==$SCHEMATHESIS_VERSION")
oas_ready() {
  [ -x "$OAS/bin/openapi-spec-validator" ] && [ -x "$OAS/bin/schemathesis" ] &&
    venv_ready "$OAS" "${OAS_PINS[@]}"
}
oas_pid=""
if ! oas_ready; then
  venv_install "$OAS" .cache/oas-pip.log "${OAS_PINS[@]}"
  oas_pid=$last_pid
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test --no-run"
cargo test --workspace --locked --no-run

venv_await "$install_pid" .cache/pip.log "emulator (moto $MOTO_VERSION in $VENV)" moto_ready

venv_await "$tools_pid" .cache/tools-pip.log "template tools (cfn-lint, sam in $TOOLS)" tools_ready

step "cfn-lint template.yaml"
AWS_REGION=us-east-1 "$TOOLS/bin/cfn-lint" template.yaml

step "sam validate --lint"
AWS_REGION=us-east-1 SAM_CLI_TELEMETRY=0 "$TOOLS/bin/sam" validate --lint --template template.yaml

venv_await "$oas_pid" .cache/oas-pip.log "OpenAPI tools (openapi-spec-validator, schemathesis in $OAS)" oas_ready

# `cargo test --no-run` built the binary the tally crate's end-to-end tests run.
step "OpenAPI: openapi-spec-validator and schemathesis against tally serve"
python3 scripts/openapi_check.py "${CARGO_TARGET_DIR:-target}/debug/tally" "$OAS"

step "docker-compose.yml (syntax, built or pinned images)"
"$TOOLS/bin/python" scripts/check_compose.py docker-compose.yml

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
step "starting moto on 127.0.0.1:$port"
# scripts/moto_serial.py is moto_server with fixes (see its header): DynamoDB requests run
# one at a time, as DynamoDB's own isolation promises; a transaction saves only the items it
# names for its rollback, and a Query reads its partition, instead of the whole table. It
# runs its own self-test (a cancelled transaction restores every item) before it serves.
"$VENV/bin/python" scripts/moto_serial.py -H 127.0.0.1 -p "$port" > .cache/moto.log 2>&1 &
moto_pid=$!
stop_moto() { kill "$moto_pid" 2>/dev/null || true; wait "$moto_pid" 2>/dev/null || true; }
trap 'stop_moto; stop_background' EXIT
for _ in $(seq 1 200); do
  if ! kill -0 "$moto_pid" 2>/dev/null; then
    echo "moto exited before answering:" >&2
    cat .cache/moto.log >&2
    exit 1
  fi
  if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/', timeout=1)" 2>/dev/null; then
    break
  fi
  sleep 0.1
done
python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/', timeout=2)" ||
  { echo "moto did not answer on port $port" >&2; cat .cache/moto.log >&2; exit 1; }

# The dashboard's real-browser test (tally/tests/e2e_dashboard.rs) drives Debian's Chromium
# through chromedriver; install both when missing (about 20 s with a warm apt mirror).
if ! command -v chromedriver > /dev/null || ! command -v chromium > /dev/null; then
  step "installing chromium and chromium-driver"
  as_root=()
  [ "$(id -u)" -eq 0 ] || as_root=(sudo)
  browser_start=$(date +%s)
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver > .cache/apt-chromium.log
  echo "chromium installed in $(( $(date +%s) - browser_start )) s"
fi
export TALLY_TEST_BROWSER=1

export TALLY_TEST_AWS_ENDPOINT="http://127.0.0.1:$port"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1

step "cargo test"
cargo test --workspace --locked

step "done"
