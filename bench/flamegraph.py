#!/usr/bin/env python3
"""A flamegraph SVG from `perf script` output, with nothing to install.

Reads `perf script` text (from `perf record --call-graph dwarf`) on stdin, folds every
sample's stack (root first, Rust hashes trimmed), and writes a static SVG flamegraph
(Brendan Gregg's layout: width = share of samples, root at the bottom) to argv[1], and the
folded stacks to argv[1] + ".folded". argv[2] (optional) is the title. Prints the 25 leaf
functions with the most self samples, which is what bench/RESULTS.md summarises.

Used by bench/profile_ingest.sh; the standard tools (inferno, FlameGraph's perl scripts)
are not on this machine, and this is a few dozen lines.
"""

import collections
import html
import re
import sys

HASH = re.compile(r"::h[0-9a-f]{16}$")


def frames_of(lines):
    """The stacks of `perf script`'s samples, leaf first."""
    stack = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if stack:
                yield stack
            stack = []
            continue
        if line.startswith(("\t", " ")):
            parts = line.strip().split(" ", 1)
            if len(parts) < 2:
                continue
            sym = parts[1]
            sym = re.sub(r" \(.*\)$", "", sym)
            sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
            sym = HASH.sub("", sym)
            stack.append(sym or "[unknown]")
    if stack:
        yield stack


def main():
    out = sys.argv[1]
    title = sys.argv[2] if len(sys.argv) > 2 else "flamegraph"
    folded = collections.Counter()
    selfs = collections.Counter()
    for stack in frames_of(sys.stdin):
        folded[";".join(reversed(stack))] += 1
        selfs[stack[0]] += 1
    total = sum(folded.values())
    if total == 0:
        sys.exit("no samples in the input")
    with open(out + ".folded", "w") as f:
        for k, v in folded.most_common():
            f.write(f"{k} {v}\n")

    # A tree of frames: name -> [count, children].
    root = [0, {}]
    for k, v in folded.items():
        node = root
        node[0] += v
        for name in k.split(";"):
            node = node[1].setdefault(name, [0, {}])
            node[0] += v

    width, row, pad = 1800.0, 16, 30
    rects = []
    depth_max = [0]

    def walk(node, x, depth):
        depth_max[0] = max(depth_max[0], depth)
        for name, child in sorted(node[1].items()):
            w = child[0] / total * width
            if w >= 0.3:
                rects.append((x, depth, w, name, child[0]))
                walk(child, x, depth + 1)
            x += w

    walk(root, 0.0, 0)
    height = (depth_max[0] + 1) * row + pad * 2
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}" '
        f'font-family="monospace" font-size="11">',
        f'<text x="4" y="18" font-size="14">{html.escape(title)} ({total} samples)</text>',
    ]
    for x, depth, w, name, count in rects:
        y = height - pad - (depth + 1) * row
        hue = 20 + (hash(name) % 40)
        label = html.escape(name)
        pct = 100.0 * count / total
        svg.append(
            f'<g><title>{label} ({count} samples, {pct:.2f}%)</title>'
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 1}" '
            f'fill="hsl({hue},85%,60%)"/>'
        )
        chars = int(w / 6.6)
        if chars >= 4:
            text = name if len(name) <= chars else name[: chars - 2] + ".."
            svg.append(f'<text x="{x + 2:.1f}" y="{y + 11}">{html.escape(text)}</text>')
        svg.append("</g>")
    svg.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(svg))

    print(f"{total} samples; top self time:")
    for name, n in selfs.most_common(25):
        print(f"  {100.0 * n / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
