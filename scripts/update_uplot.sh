#!/usr/bin/env bash
# Vendors uPlot (MIT, https://github.com/leeoniya/uPlot), the dashboard's charting library,
# into dashboard/assets/vendor/uplot/: the ES module build, its stylesheet and its LICENSE.
# The files are committed and embedded in the binary with include_bytes!, so `cargo build`
# needs neither Node nor the network; only this script does (npm, from the npm registry).
# Usage: scripts/update_uplot.sh [VERSION]   (default: the pinned version below)
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="${1:-1.6.32}"
DEST=dashboard/assets/vendor/uplot
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

( cd "$work" && npm pack --silent "uplot@$VERSION" > /dev/null )
tar -xzf "$work/uplot-$VERSION.tgz" -C "$work"
mkdir -p "$DEST"
cp "$work/package/dist/uPlot.esm.js" "$DEST/uPlot.esm.js"
cp "$work/package/dist/uPlot.min.css" "$DEST/uPlot.min.css"
cp "$work/package/LICENSE" "$DEST/LICENSE"
echo "$VERSION" > "$DEST/VERSION"
sha256sum "$DEST"/uPlot.esm.js "$DEST"/uPlot.min.css "$DEST"/LICENSE
echo "uPlot $VERSION vendored into $DEST"
