#!/usr/bin/env bash
# The one command that runs Tally's whole test suite on a fresh clone: formatting, lints,
# then every unit, property, conformance and end-to-end test. It starts whatever the tests
# need itself and leaves nothing running behind it.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE=1

step() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

step "done"
