#!/usr/bin/env bash
# Runs the ingest benchmark (bench/src/bin/ingest_load.rs) with SQS between ingest and the
# aggregator, on the fast SQS emulator npm `fauxqs@1.9.2` (docs/testing.md; 2.x needs Node 22).
# Installs fauxqs under .cache/fauxqs when it is not there yet, builds the release binaries,
# then runs `ingest_load --queue sqs` with the arguments given. ingest_load itself starts a
# fauxqs per run on a free 127.0.0.1 port and stops it by PID, pass or fail.
#
#   bash bench/ingest_sqs.sh --only zipf-100 --scale 0.5
#   bash bench/ingest_sqs.sh --only zipf-1,zipf-100,zipf-1000
set -euo pipefail
cd "$(dirname "$0")/.."

FAUXQS=.cache/fauxqs
VERSION=1.9.2
installed=$(node -p "require('./$FAUXQS/node_modules/fauxqs/package.json').version" 2>/dev/null || true)
if [ "$installed" != "$VERSION" ]; then
  mkdir -p "$FAUXQS"
  npm install --prefix "$FAUXQS" --no-audit --no-fund "fauxqs@$VERSION" >&2
fi

cargo build --release -q -p tally -p tally-bench
target/release/ingest_load --queue sqs --fauxqs "$FAUXQS/node_modules/fauxqs/dist/cli.js" "$@"
