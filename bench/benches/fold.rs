//! The pure batch fold, in events per second per core, on workload W in batches of 1,000,
//! beside a naive fold measured in the same run: one owned key per counter, six counters per
//! event, no per-hour pre-aggregation (what a first implementation would write).
//! `tally_fold_cells` is what the DynamoDB store folds when it applies a batch (hour cells;
//! day, month and org-wide counters are derived when read); `tally_fold_days` what the
//! SQLite store folds (hour cells, then day cells beside them); `tally_fold` goes on to the
//! six counters, as `reconcile` derives them (and as the SQLite store wrote them before
//! schema 7).
//!
//! Run: `cargo bench -p tally-bench --bench fold`, or `bash bench/fold.sh`, which also prints
//! the fastest and median sample of each fold (on a shared VM the mean carries other tenants'
//! load).

use std::collections::HashMap;
use std::hint::black_box;

use chrono::{DateTime, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rust_decimal::Decimal;
use tally_bench::workload::{WorkloadSpec, generate, tenants};
use tally_core::counter::OwnedCounterKey;
use tally_core::fold::{day_cells, dedupe_in_batch, fold, fold_cells};
use tally_core::{Event, Granularity};

fn naive(events: &[Event]) -> usize {
    let mut counters: HashMap<OwnedCounterKey, Decimal> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for e in events {
        if !seen.insert((e.org_id.clone(), e.id.clone())) {
            continue;
        }
        for g in Granularity::ALL {
            for project in [None, Some(e.project_id.clone())] {
                let key = OwnedCounterKey {
                    org: e.org_id.clone(),
                    project,
                    meter: e.meter.clone(),
                    granularity: g,
                    start: g.truncate(e.timestamp),
                };
                *counters.entry(key).or_default() += e.quantity.value();
            }
        }
    }
    counters.len()
}

fn bench(c: &mut Criterion) {
    let start: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default();
    let spec = WorkloadSpec {
        events: 100_000,
        ..WorkloadSpec::w(start)
    };
    let events = generate(&spec, &tenants(&spec));
    let batches: Vec<&[Event]> = events.chunks(1_000).collect();

    let mut g = c.benchmark_group("fold_workload_w_batches_of_1000");
    g.throughput(Throughput::Elements(events.len() as u64));
    // Each benchmark is one pass over every batch, adding up what `per_batch` returns.
    let mut measure = |name: &str, per_batch: &dyn Fn(&[Event]) -> usize| {
        g.bench_function(name, |b| {
            b.iter(|| black_box(batches.iter().map(|batch| per_batch(batch)).sum::<usize>()))
        });
    };
    measure("tally_fold", &|batch| fold(dedupe_in_batch(batch)).len());
    // What the DynamoDB store folds on apply: cells only; day, month and org-wide are
    // derived when read.
    measure("tally_fold_cells", &|batch| {
        fold_cells(dedupe_in_batch(batch)).len()
    });
    // What the SQLite store folds: hour cells and the day cells it writes beside them.
    measure("tally_fold_days", &|batch| {
        let cells = fold_cells(dedupe_in_batch(batch));
        cells.len() + day_cells(&cells).len()
    });
    measure("naive_baseline", &naive);
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
