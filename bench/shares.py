#!/usr/bin/env python3
"""Inclusive shares of chosen frames in folded stacks (bench/flamegraph.py's `.folded`).

Usage: bench/shares.py FILE[,FILE...] [FILE[,FILE...] ...]
Each argument is one group of profiles (comma-separated, e.g. the runs of one binary),
pooled before the shares are taken. A frame's share is the fraction of samples whose stack
contains the pattern anywhere: what bench/RESULTS.md quotes as "inclusive". The patterns
are the hot path of 1-event `POST /v1/events` (issue 21, item 2).
"""

import collections
import sys

PATTERNS = [
    ("ingest's publish step", "tally_ingest::events::publish::"),
    ("LocalQueue::publish (its future and closures)", "EventQueue>::publish"),
    ("group-commit writer (write_groups)", "write_groups"),
    ("blocking-pool threads (spawn_blocking)", "blocking::pool::Inner::run"),
    ("key authentication and admission", "Admitted as axum_core"),
    ("Event::validate", "Event::validate"),
    ("hyper HTTP/1 dispatcher", "hyper::proto::h1::dispatch"),
    ("aggregator", "tally_aggregator::"),
    ("duplicate_conflicts", "duplicate_conflicts"),
    ("kernel system calls", "entry_SYSCALL_64"),
]


def main():
    for group in sys.argv[1:]:
        total = 0
        hits = collections.Counter()
        for path in group.split(","):
            with open(path) as f:
                for line in f:
                    stack, _, n = line.rstrip("\n").rpartition(" ")
                    n = int(n)
                    total += n
                    for label, pattern in PATTERNS:
                        if pattern in stack:
                            hits[label] += n
        print(f"{group}: {total} samples")
        for label, _ in PATTERNS:
            print(f"  {100 * hits[label] / max(total, 1):5.1f} %  {label}")


if __name__ == "__main__":
    main()
