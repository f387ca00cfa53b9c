#!/usr/bin/env bash
# Builds every Lambda function of template.yaml and leaves each where `sam build` picks it
# up (lambda/Makefile copies target/lambda/<binary>/bootstrap into the function's artifact).
#
#   scripts/package-lambdas.sh [--arm64 | --x86-64] [--zip]
#
# --arm64 (the template's default Architecture) needs the aarch64-unknown-linux-gnu target
# (`rustup target add aarch64-unknown-linux-gnu`; cargo lambda cross-links with zig);
# --x86-64 builds for x86_64 (deploy with --parameter-overrides Architecture=x86_64).
# --zip also writes target/lambda/<binary>.zip for deploying without SAM.
# cargo-lambda comes from PyPI (pinned below) and is installed into .cache/tools-venv
# unless a `cargo lambda` is already on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_LAMBDA_VERSION=1.9.2
TOOLS=.cache/tools-venv
BINARIES=(tally-ingest-lambda tally-api-lambda tally-aggregator-lambda tally-billing-lambda tally-stripe-webhook-lambda)

arch=--arm64
zip=false
for arg in "$@"; do
  case "$arg" in
    --arm64 | --x86-64) arch=$arg ;;
    --zip) zip=true ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument $arg (want --arm64, --x86-64 or --zip)" >&2; exit 2 ;;
  esac
done

if ! cargo lambda --version >/dev/null 2>&1; then
  if [ ! -x "$TOOLS/bin/cargo-lambda" ]; then
    echo "installing cargo-lambda==$CARGO_LAMBDA_VERSION into $TOOLS" >&2
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/pip" install --quiet --disable-pip-version-check "cargo-lambda==$CARGO_LAMBDA_VERSION"
  fi
  export PATH="$PWD/$TOOLS/bin:$PATH"
fi

start=$(date +%s)
cargo lambda build --release --locked -p tally-lambda "$arch"
echo "cargo lambda build: $(( $(date +%s) - start ))s" >&2

for bin in "${BINARIES[@]}"; do
  out="target/lambda/$bin/bootstrap"
  [ -f "$out" ] || { echo "$out was not built" >&2; exit 1; }
  if $zip; then
    rm -f "target/lambda/$bin.zip"
    (cd "target/lambda/$bin" && python3 -m zipfile -c "../$bin.zip" bootstrap)
  fi
  printf '%s\t%s bytes\n' "$out" "$(wc -c < "$out")"
done
