#!/usr/bin/env bash
# Profiles `tally serve` (embedded) under 1-event `POST /v1/events` requests (issue 21,
# item 2), or another ingest_load case (CASE: zipf-100 profiles the aggregator's drain of
# 100-event requests), and draws the flamegraph.
#
# Runs `ingest_load --only CASE --path raw` (workload W, one event per request by default, 32 connections)
# against the release `tally`, through a wrapper that starts `tally serve` and attaches
# `perf record --call-graph dwarf` to that process only (not to the load generator). The
# release profile keeps symbols (`strip = "debuginfo"`) and .eh_frame, which is all dwarf
# unwinding needs. The SVG and the folded stacks go to bench/flamegraphs/.
#
# Usage: bench/profile_ingest.sh [SCALE] [PROFILE] [TALLY] [SVG] [CASE]
#   (after cargo build --release -p tally -p tally-bench; PROFILE `debug` profiles the dev
#   build instead, whose costs are not release's: say so beside any figure from it; TALLY
#   profiles another `tally` binary, such as a copy of the one before a change, and SVG
#   names the output instead of bench/flamegraphs/ingest_1event[_PROFILE].svg; CASE is the
#   ingest_load case, zipf-1 by default). Samples are the `cpu-clock` software event: the
#   sandbox has no hardware counters. INGEST_LOAD names another ingest_load binary.
set -euo pipefail
cd "$(dirname "$0")/.."
scale="${1:-1.0}"
profile="${2:-release}"
tally="$(realpath "${3:-target/$profile/tally}")"
case="${5:-zipf-1}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
data="$work/perf.data"
wrapper="$work/tally"
cat >"$wrapper" <<EOF
#!/usr/bin/env bash
if [ "\$1" != serve ]; then exec "$tally" "\$@"; fi
"$tally" "\$@" &
pid=\$!
perf record -q -e cpu-clock -F 199 --call-graph dwarf,8192 -o "$data" -p "\$pid" 2>"$work/perf.log" &
perf=\$!
# ingest_load stops the server with SIGTERM: pass it on, let tally drain, then end perf.
trap 'kill -TERM \$pid; wait \$pid; kill -INT \$perf; wait \$perf; exit 0' TERM
wait \$pid
EOF
chmod +x "$wrapper"
"${INGEST_LOAD:-target/$profile/ingest_load}" --tally "$wrapper" --only "$case" --path raw --scale "$scale"
mkdir -p bench/flamegraphs
svg=bench/flamegraphs/ingest_1event.svg
[ "$profile" = release ] || svg="bench/flamegraphs/ingest_1event_$profile.svg"
svg="${4:-$svg}"
# --no-inline: resolving inlined frames runs addr2line per frame and takes minutes.
perf script --no-inline -i "$data" 2>/dev/null |
	python3 bench/flamegraph.py "$svg" \
		"tally serve ($profile build), POST /v1/events (ingest_load $case, scale $scale)"
