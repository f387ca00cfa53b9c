//! Write-cost benchmark: DynamoDB capacity per event of workload W, Tally against a naive
//! baseline, measured in one run against the emulator.
//!
//! Capacity is measured on the wire by [`CapacityMeter`] (an SDK interceptor that prices each
//! request by DynamoDB's published unit rules; see `bench/src/capacity.rs`), so the figures
//! do not depend on how the store builds its requests. The run:
//!
//! 1. **Naive baseline** on its own table: one `UpdateItem ADD` per event for each of the six
//!    counters (org and project × month, day, hour), no ledger, no dedupe. The emulator does a
//!    few hundred writes a second, so it runs on a random sample of the events
//!    (`--baseline-sample`, default 5 %); its cost per event does not depend on which events
//!    (six small items, 1 WCU each), which the run checks.
//! 2. **Tally**: a fresh table made by `create_table`; workload W (resends included) handed
//!    to the aggregator library ([`apply_records`]) in batches of 1,000 records of one event
//!    each, as a queue consumer receives them. Records the store leaves for a retry are
//!    resubmitted with the next batch, as redelivery would. Its figures are printed at once;
//!    then the stored counters of `--check-orgs` orgs (half the busiest, half at random) are
//!    compared with the pure fold of the distinct events, through an unmetered client, so
//!    the figures belong to an exact run. (moto's `Query` scans the whole table, seconds per
//!    call on a big one, which is why not every org is checked.)
//! 3. **Dashboard reads** on that table through [`UsageStore::counter_series`]: the busiest
//!    org's month total (org-wide) and 30-day daily series (org-wide and its busiest project),
//!    for its busiest meter.
//! 4. Cost per million events at DynamoDB on-demand prices (us-east-1, since 1 Nov 2024:
//!    $0.625 per million write request units, $0.125 per million read request units).
//!
//! Only a loopback endpoint is accepted (`TALLY_TEST_AWS_ENDPOINT` or `--endpoint`); run it
//! through `bench/write_cost.sh`, which starts the emulator.
//!
//! `cargo run -p tally-bench --bin write_cost -- [--events N] [--seed S]
//!  [--baseline-sample F] [--batch N] [--check-orgs N] [--aggregators N] [--conflicts F]
//!  [--meters 6|4] [--writer-slots K] [--endpoint URL]`
//!
//! `--writer-slots K` (0–64; default 32, the store's default; 0 is the chunked format of
//! releases before it) runs the Tally path's stores in the slotted
//! counter format (`DynamoStore::with_writer_slots`, `docs/dynamodb-writer-slots.md`): each
//! day-cell and unique-counter `ADD` a plain conditional `UpdateItem`. An update is priced
//! here from the request (key plus written attributes), not from the stored item, which
//! also holds the other hours and the slots' high-water marks; so the run ends by scanning
//! the counter items and printing the largest one's size by DynamoDB's rules: while it is
//! under 1 KB, every counter update is billed 1 unit either way.
//!
//! Workload W has six meters since issue 16, one of each aggregation and three sums
//! (`--meters 4` drops the `latest` and `unique_count` ones, as the runs before it had).
//!
//! `--conflicts F` puts the fault proxy of `tally-tests` ([`FaultProxy`]) between the
//! Tally path's client and the emulator: each write is answered, with probability `F`, the
//! way DynamoDB answers a write that meets another writer — `TransactionCanceledException`
//! (reason `TransactionConflict`) to a `TransactWriteItems`, `TransactionConflictException`
//! to a plain write — without reaching the emulator, so the store retries it. Records still
//! not applied after [`MAX_REDELIVERIES`] deliveries count as dead-lettered (SQS's
//! `maxReceiveCount` in the template is 5). The baseline never goes through the proxy.
//!
//! The last line printed, `CELL ...`, holds the run's figures in `key=value` form, for
//! `bench/write_cost.sh --matrix` to tabulate.
//!
//! `--aggregators N` hands the batches in turn to N stores of their own, as N aggregator
//! processes would share a queue: each keeps its own caches and counter-guard allowances,
//! which is what their number changes in the units (moto serializes requests, so running
//! them at once would change only the time).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use chrono::{DateTime, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use tally_aggregator::{RecordInput, RecordOutcome, apply_records};
use tally_bench::capacity::{CapacityMeter, Totals};
use tally_bench::workload::{WorkloadSpec, generate, tenants, truth};
use tally_core::counter::OwnedCounterKey;
use tally_core::fold::dedupe_in_batch;
use tally_core::ports::{CounterQuery, UsageStore};
use tally_core::{Event, Granularity, Month, OrgId};
use tally_store::dynamodb::{DynamoStore, create_table};
use tally_tests::fault_proxy::{Fault, FaultConfig, FaultProxy};

/// DynamoDB on-demand, us-east-1, from 1 November 2024: dollars per million write request
/// units (<https://aws.amazon.com/dynamodb/pricing/on-demand/>).
const USD_PER_MILLION_WRU: f64 = 0.625;
/// The same for read request units.
const USD_PER_MILLION_RRU: f64 = 0.125;
/// What the baseline costs per event by construction: six `UpdateItem`s of an item far under
/// 1 KB.
const BASELINE_WCU_PER_EVENT: f64 = 6.0;
/// The target: at most half the baseline's write units per event.
const TARGET_WCU_PER_EVENT: f64 = 3.0;
/// Deliveries of a record before it counts as dead-lettered (the template's SQS
/// `maxReceiveCount`).
const MAX_REDELIVERIES: u32 = 5;
/// Baseline requests in flight at once (the emulator serializes them; this hides client
/// latency only).
const BASELINE_CONCURRENCY: usize = 4;

struct Args {
    events: usize,
    seed: u64,
    baseline_sample: f64,
    batch: usize,
    check_orgs: usize,
    endpoint: Option<String>,
    /// Aggregator processes taking the batches in turn, each a store of its own (own
    /// caches and counter-guard allowances).
    aggregators: usize,
    /// Probability that the fault proxy answers a write with a conflict (0: no proxy).
    conflicts: f64,
    /// 6: every aggregation's write path (issue 16's workload W); 4: the four meters of the runs
    /// before it (sum, sum, max, sum), to compare with their figures.
    meters: usize,
    /// Writer slots of the slotted counter format (0: off, the chunked format).
    writer_slots: u32,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        events: 200_000,
        seed: 42,
        baseline_sample: 0.05,
        batch: 1_000,
        check_orgs: 20,
        endpoint: None,
        aggregators: 1,
        conflicts: 0.0,
        meters: 6,
        writer_slots: tally_store::dynamodb::DEFAULT_WRITER_SLOTS,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!(
                "write_cost [--events N (200000)] [--seed S (42)] [--baseline-sample F (0.05)] \
                 [--batch N (1000)] [--check-orgs N (20)] [--aggregators N (1)] [--conflicts F (0)] [--meters 6|4 (6)] \
                 [--endpoint URL (TALLY_TEST_AWS_ENDPOINT)]"
            );
            std::process::exit(0);
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--events" => a.events = value.parse().context("--events")?,
            "--seed" => a.seed = value.parse().context("--seed")?,
            "--baseline-sample" => {
                a.baseline_sample = value.parse().context("--baseline-sample")?
            }
            "--batch" => a.batch = value.parse().context("--batch")?,
            "--check-orgs" => a.check_orgs = value.parse().context("--check-orgs")?,
            "--endpoint" => a.endpoint = Some(value),
            "--aggregators" => a.aggregators = value.parse().context("--aggregators")?,
            "--conflicts" => a.conflicts = value.parse().context("--conflicts")?,
            "--meters" => a.meters = value.parse().context("--meters")?,
            "--writer-slots" => a.writer_slots = value.parse().context("--writer-slots")?,
            _ => bail!("unknown flag {flag} (try --help)"),
        }
    }
    if !(1_000..=2_000_000).contains(&a.events) {
        bail!("--events must be in 1000..=2000000");
    }
    if !(a.baseline_sample > 0.0 && a.baseline_sample <= 1.0) {
        bail!("--baseline-sample must be in (0, 1]");
    }
    if !(1..=10_000).contains(&a.batch) {
        bail!("--batch must be in 1..=10000");
    }
    if !(1..=64).contains(&a.aggregators) {
        bail!("--aggregators must be in 1..=64");
    }
    if a.meters != 4 && a.meters != 6 {
        bail!("--meters must be 6 (with latest and unique_count) or 4 (the runs before issue 16)");
    }
    if !(0.0..=0.5).contains(&a.conflicts) {
        bail!("--conflicts must be in 0..=0.5");
    }
    if a.writer_slots > tally_store::dynamodb::MAX_WRITER_SLOTS {
        bail!("--writer-slots must be in 0..=64 (0: the chunked format)");
    }
    if a.check_orgs > 100_000 {
        bail!("--check-orgs must be at most 100000");
    }
    Ok(a)
}

/// The endpoint, refused unless it is on this machine: the benchmark creates tables and
/// writes hundreds of thousands of items, which must never reach a real account.
fn loopback_endpoint(a: &Args) -> anyhow::Result<String> {
    let url = a
        .endpoint
        .clone()
        .or_else(|| std::env::var("TALLY_TEST_AWS_ENDPOINT").ok())
        .context("no emulator endpoint: run bench/write_cost.sh, or set TALLY_TEST_AWS_ENDPOINT")?;
    let host = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split([':', '/']).next())
        .unwrap_or_default();
    if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
        bail!("endpoint {url:?} is not an http loopback address; refusing to run");
    }
    Ok(url)
}

/// The start of the simulated hour: fixed, so runs are comparable (the 30-day series then
/// spans two month partitions, as most do).
fn hour_start() -> anyhow::Result<DateTime<Utc>> {
    Utc.with_ymd_and_hms(2026, 11, 16, 10, 0, 0)
        .single()
        .context("fixed start time")
}

fn per(x: f64, n: usize) -> f64 {
    if n == 0 { f64::NAN } else { x / n as f64 }
}

/// Dollars per million events at `wcu` and `rcu` per event.
fn usd_per_million(wcu: f64, rcu: f64) -> f64 {
    wcu * USD_PER_MILLION_WRU + rcu * USD_PER_MILLION_RRU
}

fn requests_text(t: &Totals) -> String {
    t.requests
        .iter()
        .map(|(op, n)| format!("{op} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the Tally path measured.
struct TallyRun {
    totals: Totals,
    records: usize,
    distinct: usize,
    applied: usize,
    duplicates: usize,
    redelivered: usize,
    /// Records still not applied after [`MAX_REDELIVERIES`] deliveries.
    dead_lettered: Vec<usize>,
    /// Distinct (aggregator, org, adding meter) the batches met: the guard writes of one item
    /// per (org, meter, month) if each pair is reserved once per process (all in one month;
    /// resends included, so slightly above what the store meets).
    guard_pairs_per_meter: usize,
    /// Distinct (aggregator, org) with an adding meter: the same for one item per (org, month).
    guard_pairs_per_org: usize,
    secs: f64,
}

/// Runs the workload through the aggregator library in batches of `batch` one-event records.
async fn tally_path(
    stores: &[DynamoStore],
    meter: &CapacityMeter,
    events: &[Event],
    batch: usize,
) -> anyhow::Result<TallyRun> {
    let distinct = events
        .iter()
        .map(|e| (&e.org_id, &e.id))
        .collect::<HashSet<_>>()
        .len();
    meter.take();
    let began = Instant::now();
    let (mut applied, mut duplicates, mut redelivered) = (0usize, 0usize, 0usize);
    let mut dead_lettered = Vec::new();
    let mut met_meters: HashSet<(usize, &OrgId, &str)> = HashSet::new();
    let mut met_orgs: HashSet<(usize, &OrgId)> = HashSet::new();
    // Records left for a retry, with how often they have come back.
    let mut pending: Vec<(usize, u32)> = Vec::new();
    let mut next = 0usize;
    let batches = events.len().div_ceil(batch);
    let mut done_batches = 0usize;
    while next < events.len() || !pending.is_empty() {
        let mut records: Vec<(usize, u32)> = std::mem::take(&mut pending);
        let take = batch.saturating_sub(records.len()).min(events.len() - next);
        records.extend((next..next + take).map(|i| (i, 0)));
        next += take;
        let inputs: Vec<RecordInput<'_>> = records
            .iter()
            .map(|&(i, _)| RecordInput::Decoded {
                events: std::slice::from_ref(&events[i]),
                unreadable: &[],
                org: None,
            })
            .collect();
        // Batches go to the aggregators in turn: moto serializes every request, so running
        // them at once would change no unit, only the time.
        let who = done_batches % stores.len();
        let store = &stores[who];
        for &(i, _) in &records {
            let e = &events[i];
            if tally_core::headroom::TotalKey::of(e).is_some() {
                met_meters.insert((who, &e.org_id, e.meter.as_str()));
                met_orgs.insert((who, &e.org_id));
            }
        }
        let outcomes = apply_records(store, None, &inputs).await;
        for (&(i, tries), outcome) in records.iter().zip(&outcomes) {
            match outcome {
                RecordOutcome::Applied => applied += 1,
                RecordOutcome::Duplicate => duplicates += 1,
                RecordOutcome::Retry { reason } => {
                    if tries + 1 >= MAX_REDELIVERIES {
                        eprintln!(
                            "  record {i} dead-lettered after {MAX_REDELIVERIES} deliveries: {reason}"
                        );
                        dead_lettered.push(i);
                        continue;
                    }
                    redelivered += 1;
                    pending.push((i, tries + 1));
                }
                RecordOutcome::Poison { reason } => bail!("record {i} is poison: {reason}"),
                RecordOutcome::SetAside(part) => {
                    bail!("record {i} has events set aside: {}", part.reason)
                }
            }
        }
        done_batches += 1;
        if done_batches.is_multiple_of(20) || done_batches == batches {
            eprintln!(
                "  tally: {done_batches}/{batches} batches, {:.0}s, {applied} applied, {duplicates} duplicates",
                began.elapsed().as_secs_f64()
            );
        }
    }
    Ok(TallyRun {
        totals: meter.take(),
        records: events.len(),
        distinct,
        applied,
        duplicates,
        redelivered,
        dead_lettered,
        guard_pairs_per_meter: met_meters.len(),
        guard_pairs_per_org: met_orgs.len(),
        secs: began.elapsed().as_secs_f64(),
    })
}

/// What the exactness check found.
struct Checked {
    checked: usize,
    busiest: usize,
    wrong: Vec<OrgId>,
}

/// Compares the stored counters of `limit` orgs (half the busiest, half drawn at random)
/// with the truth, through an unmetered client.
async fn check_counters(
    store: &DynamoStore,
    expected: &HashMap<OrgId, BTreeMap<OwnedCounterKey, Decimal>>,
    month: Month,
    limit: usize,
    seed: u64,
) -> anyhow::Result<Checked> {
    let mut orgs: Vec<(&OrgId, &BTreeMap<OwnedCounterKey, Decimal>)> = expected.iter().collect();
    // Busiest first: most counters, then by id so the order is stable.
    orgs.sort_by(|a, b| {
        b.1.len()
            .cmp(&a.1.len())
            .then(a.0.as_str().cmp(b.0.as_str()))
    });
    let busiest = (limit / 2).min(orgs.len());
    let mut rest = orgs.split_off(busiest);
    let mut rng = StdRng::seed_from_u64(seed ^ 0xc4ec);
    for _ in 0..limit.saturating_sub(busiest).min(rest.len()) {
        let i = rng.random_range(0..rest.len());
        orgs.push(rest.swap_remove(i));
    }
    let mut wrong = Vec::new();
    for (org, want) in &orgs {
        let got: BTreeMap<OwnedCounterKey, Decimal> = store
            .stored_counters(org, month)
            .await?
            .into_iter()
            .collect();
        if &got != *want {
            wrong.push((*org).clone());
        }
    }
    Ok(Checked {
        checked: orgs.len(),
        busiest,
        wrong,
    })
}

/// One dashboard query's cost.
struct ReadCost {
    label: String,
    buckets: usize,
    rcu: f64,
    requests: u64,
    reported: f64,
}

async fn dashboard_reads(
    store: &DynamoStore,
    meter: &CapacityMeter,
    events: &[Event],
    start: DateTime<Utc>,
) -> anyhow::Result<Vec<ReadCost>> {
    // The busiest org, its busiest meter and project (by distinct events).
    let distinct = dedupe_in_batch(events);
    let busiest = |key: &dyn Fn(&Event) -> String| -> Option<String> {
        let mut n: HashMap<String, usize> = HashMap::new();
        for e in &distinct {
            *n.entry(key(e)).or_default() += 1;
        }
        n.into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(k, _)| k)
    };
    let org_s = busiest(&|e| e.org_id.as_str().to_owned()).context("no events")?;
    let of_org: Vec<&Event> = distinct
        .iter()
        .copied()
        .filter(|e| e.org_id.as_str() == org_s)
        .collect();
    let first = of_org.first().context("busiest org has no events")?;
    // The busiest org's event whose `key` is the busiest among its events (its first event
    // when no key stands out).
    let busiest_of_org = |key: &dyn Fn(&Event) -> &str| {
        let busiest_key = busiest(&|e| {
            if e.org_id.as_str() == org_s {
                key(e).to_owned()
            } else {
                String::new()
            }
        });
        of_org
            .iter()
            .find(|e| Some(key(e)) == busiest_key.as_deref())
            .unwrap_or(first)
    };
    let meter_name = busiest_of_org(&|e| e.meter.as_str()).meter.clone();
    let project = busiest_of_org(&|e| e.project_id.as_str())
        .project_id
        .clone();
    let org = first.org_id.clone();
    let month = Month::of(start);
    let day = Granularity::Day.truncate(start);
    let (from30, to30) = (
        day - chrono::Duration::days(29),
        day + chrono::Duration::days(1),
    );
    println!(
        "dashboard queries: org {org} ({} distinct events), meter {meter_name}, project {project}",
        of_org.len()
    );
    let queries = [
        (
            format!("month total, org-wide ({})", month.start().format("%Y-%m")),
            None,
            Granularity::Month,
            month.start(),
            month.end(),
        ),
        (
            format!(
                "30-day daily series, org-wide ({}..{})",
                from30.format("%m-%d"),
                to30.format("%m-%d")
            ),
            None,
            Granularity::Day,
            from30,
            to30,
        ),
        (
            "30-day daily series, one project".to_owned(),
            Some(project),
            Granularity::Day,
            from30,
            to30,
        ),
    ];
    let mut out = Vec::new();
    meter.take();
    for (label, project, granularity, from, to) in queries {
        let series = store
            .counter_series(&CounterQuery {
                org: org.clone(),
                project,
                meter: meter_name.clone(),
                granularity,
                from,
                to,
            })
            .await?;
        let t = meter.take();
        if series.is_empty() {
            bail!("dashboard query {label:?} returned nothing");
        }
        out.push(ReadCost {
            label,
            buckets: series.len(),
            rcu: t.rcu,
            requests: t.request_count(),
            reported: t.reported_total(),
        });
    }
    Ok(out)
}

/// What the baseline measured.
struct BaselineRun {
    totals: Totals,
    sampled: usize,
    secs: f64,
}

async fn create_baseline_table(client: &Client, table: &str) -> anyhow::Result<()> {
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
    };
    let attr = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
    };
    client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr("pk")?)
        .attribute_definitions(attr("sk")?)
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!(aws_sdk_dynamodb::error::DisplayErrorContext(e)))
        .context("creating the baseline table")?;
    Ok(())
}

/// The six counter keys (sort keys) the naive design updates for one event.
fn baseline_keys(e: &Event) -> Vec<(String, String)> {
    let pk = format!("BASE#{}", e.org_id.as_str());
    let mut out = Vec::with_capacity(6);
    for scope in ["ALL", e.project_id.as_str()] {
        for g in Granularity::ALL {
            out.push((
                pk.clone(),
                format!(
                    "{scope}#{}#{}#{:012}",
                    e.meter.as_str(),
                    g.as_str(),
                    g.truncate(e.timestamp).timestamp()
                ),
            ));
        }
    }
    out
}

/// One `UpdateItem ADD` per counter per sampled event, `BASELINE_CONCURRENCY` in flight.
async fn baseline(
    client: &Client,
    meter: &CapacityMeter,
    table: &str,
    events: &[Event],
    share: f64,
    seed: u64,
) -> anyhow::Result<BaselineRun> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_ba5e);
    let mut sample: Vec<&Event> = events
        .iter()
        .filter(|_| rng.random::<f64>() < share)
        .collect();
    if sample.is_empty() {
        sample.push(&events[0]);
    }
    let updates: Arc<Vec<(String, String, String)>> = Arc::new(
        sample
            .iter()
            .flat_map(|e| {
                let q = e.quantity.value().to_string();
                baseline_keys(e)
                    .into_iter()
                    .map(move |(pk, sk)| (pk, sk, q.clone()))
            })
            .collect(),
    );
    meter.take();
    let began = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..BASELINE_CONCURRENCY {
        let (client, updates, next, table) = (
            client.clone(),
            updates.clone(),
            next.clone(),
            table.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((pk, sk, q)) = updates.get(i) else {
                    return anyhow::Ok(());
                };
                client
                    .update_item()
                    .table_name(&table)
                    .key("pk", AttributeValue::S(pk.clone()))
                    .key("sk", AttributeValue::S(sk.clone()))
                    .update_expression("ADD #v :q")
                    .expression_attribute_names("#v", "v")
                    .expression_attribute_values(":q", AttributeValue::N(q.clone()))
                    .send()
                    .await
                    .map_err(|e| anyhow::anyhow!(aws_sdk_dynamodb::error::DisplayErrorContext(e)))
                    .context("baseline UpdateItem")?;
            }
        }));
    }
    for t in tasks {
        t.await.context("baseline worker panicked")??;
    }
    Ok(BaselineRun {
        totals: meter.take(),
        sampled: sample.len(),
        secs: began.elapsed().as_secs_f64(),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let endpoint = loopback_endpoint(&a)?;
    let sdk = tally_store::aws::sdk_config(Some(&endpoint)).await;
    let meter = CapacityMeter::new("pk", vec![vec!["gsi1pk".into(), "gsi1sk".into()]]);
    let metered = Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .interceptor(meter.clone())
            .build(),
    );
    // Table setup and the correctness check go through a client the meter does not see.
    let plain = Client::new(&sdk);
    // The Tally path's client: through the fault proxy when conflicts are injected.
    let proxy = if a.conflicts > 0.0 {
        let config = FaultConfig {
            seed: a.seed,
            rates: vec![
                (Fault::TransactionCanceled, a.conflicts),
                (Fault::TransactionConflict, a.conflicts),
            ],
            latency: std::time::Duration::ZERO,
            reads: false,
        };
        Some(
            FaultProxy::start(&endpoint, config)
                .await
                .context("starting the fault proxy")?,
        )
    } else {
        None
    };
    let tally_client = match &proxy {
        Some(p) => {
            let sdk = tally_store::aws::sdk_config(Some(&p.url())).await;
            Client::from_conf(
                aws_sdk_dynamodb::config::Builder::from(&sdk)
                    .interceptor(meter.clone())
                    .build(),
            )
        }
        None => metered.clone(),
    };

    let start = hour_start()?;
    let spec = WorkloadSpec {
        events: a.events,
        seed: a.seed,
        all_aggregations: a.meters == 6,
        ..WorkloadSpec::w(start)
    };
    let t = tenants(&spec);
    let events = generate(&spec, &t);
    let run_id = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
    println!(
        "write cost: workload W, {} events ({} orgs Zipf s={}, {} projects, {} meters, {:.0}% resends, one hour from {start}), seed {}, batches of {} one-event records, \
         {} aggregator(s) in turn, {:.1}% of writes answered with a conflict; emulator {endpoint}",
        a.events,
        spec.orgs,
        spec.zipf_s,
        spec.projects,
        a.meters,
        spec.resend_share * 100.0,
        a.seed,
        a.batch,
        a.aggregators,
        a.conflicts * 100.0
    );

    // 1. Baseline first: its own small table, so it is quick whatever Tally's table holds.
    let base_table = format!("tally-wc-base-{run_id}");
    create_baseline_table(&plain, &base_table).await?;
    let base = baseline(
        &metered,
        &meter,
        &base_table,
        &events,
        a.baseline_sample,
        a.seed,
    )
    .await?;
    let b_w = per(base.totals.wcu, base.sampled);
    let b_r = per(base.totals.rcu, base.sampled);
    println!(
        "Baseline: {} sampled events ({:.1}% of {}), {} UpdateItems, {:.1}s",
        base.sampled,
        100.0 * base.sampled as f64 / events.len() as f64,
        events.len(),
        base.totals.request_count(),
        base.secs
    );
    if !base.totals.errors.is_empty() {
        println!("  unbilled errors: {:?}", base.totals.errors);
    }
    let agrees = (b_w - BASELINE_WCU_PER_EVENT).abs() < 1e-9;
    println!(
        "  measured {b_w:.3} WCU/event on the sample; full run by construction {BASELINE_WCU_PER_EVENT} WCU/event \
         x {} events = {:.0} WCU ({})",
        events.len(),
        BASELINE_WCU_PER_EVENT * events.len() as f64,
        if agrees {
            "the sample agrees"
        } else {
            "the sample DISAGREES"
        }
    );

    // 2. Tally; its figures are printed before the slower checks and reads.
    let table = format!("tally-wc-{run_id}");
    create_table(&plain, &table)
        .await
        .context("creating Tally's table")?;
    let stores: Vec<DynamoStore> = (0..a.aggregators)
        .map(|_| {
            DynamoStore::new(tally_client.clone(), table.clone()).with_writer_slots(a.writer_slots)
        })
        .collect();
    let tally = tally_path(&stores, &meter, &events, a.batch).await?;
    let tt = &tally.totals;
    let w_rec = per(tt.wcu, tally.records);
    let w_dist = per(tt.wcu, tally.distinct);
    let r_rec = per(tt.rcu, tally.records);
    let r_dist = per(tt.rcu, tally.distinct);
    println!(
        "Tally path: {} records ({} distinct events, {} resends), {} applied, {} duplicate, {} redelivered, {:.1}s",
        tally.records,
        tally.distinct,
        tally.records - tally.distinct,
        tally.applied,
        tally.duplicates,
        tally.redelivered,
        tally.secs
    );
    println!("  requests: {}", requests_text(tt));
    let injected: u64 = proxy
        .as_ref()
        .map(|p| p.injected().values().sum())
        .unwrap_or_default();
    if let Some(p) = &proxy {
        println!("  injected by the fault proxy: {:?}", p.injected());
    }
    println!(
        "  counter guard: one reservation per pair met would be {} writes with an item per (org, meter), \
         {} with an item per org (pairs met per aggregator)",
        tally.guard_pairs_per_meter, tally.guard_pairs_per_org
    );
    // Every injected conflict is answered with an error the store (or the SDK) retries.
    let retries = injected as usize + tally.redelivered;
    println!(
        "  retries: {injected} writes answered with a conflict and sent again, {} records redelivered: \
         {:.4} per record; {} records dead-lettered",
        tally.redelivered,
        per(retries as f64, tally.records),
        tally.dead_lettered.len()
    );
    if !tt.errors.is_empty() {
        println!("  unbilled errors: {:?}", tt.errors);
    }
    println!(
        "  {w_rec:.3} WCU and {r_rec:.3} RCU per record; {w_dist:.3} WCU and {r_dist:.3} RCU per distinct event; {:.0} WCU in all",
        tt.wcu
    );
    println!(
        "  failed conditional writes: {}; cancelled transactions: {} ({:.0} WCU, counted at full price; \
         if DynamoDB billed them nothing: {:.3} WCU per record)",
        tt.failed_conditions,
        tt.cancelled_transactions,
        tt.wcu_cancelled_tx,
        per(tt.wcu - tt.wcu_cancelled_tx, tally.records)
    );
    for (reason, n) in &tt.cancel_reasons {
        println!("    cancelled by {reason}: {n} actions");
    }
    println!(
        "  writes by item kind (computed WCU; per record / per distinct event; of which in failed conditions):"
    );
    for (class, c) in &tt.by_class {
        println!(
            "    {class:<28} {:>9} items {:>11.0} WCU  {:>6.3} / {:>6.3}  (failed {:.0})",
            c.items,
            c.wcu,
            per(c.wcu, tally.records),
            per(c.wcu, tally.distinct),
            c.failed_wcu
        );
    }

    // 3. Exactness, on a sample of orgs (moto's Query scans the whole table, so checking
    // every org of a big run would take longer than the run).
    // Dead-lettered records never reach the counters (unless another copy of their event did).
    let lettered: HashSet<usize> = tally.dead_lettered.iter().copied().collect();
    let delivered: Vec<Event> = events
        .iter()
        .enumerate()
        .filter(|(i, _)| !lettered.contains(i))
        .map(|(_, e)| e.clone())
        .collect();
    let expected = truth(&delivered);
    let checked = check_counters(
        &DynamoStore::new(plain.clone(), table.clone()),
        &expected,
        Month::of(start),
        a.check_orgs,
        a.seed,
    )
    .await?;
    println!(
        "  counters vs ground truth: {}",
        if checked.wrong.is_empty() {
            format!(
                "exact for all {} orgs checked (the {} busiest and a random {} of the {} with events)",
                checked.checked,
                checked.busiest,
                checked.checked - checked.busiest,
                expected.len()
            )
        } else {
            format!(
                "{} of {} orgs checked DIFFER (e.g. {})",
                checked.wrong.len(),
                checked.checked,
                checked.wrong[0]
            )
        }
    );
    let wrong = checked.wrong;

    // 4. Dashboard reads.
    let reads = dashboard_reads(&stores[0], &meter, &events, start).await?;

    println!();
    println!(
        "| path | events | WCU total | WCU/event (per record) | WCU/distinct event | RCU/event | $ per million events | moto-reported units |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| Tally (ledger + counters, exactly once) | {} | {:.0} | **{:.3}** | {:.3} | {:.3} | ${:.3} | {:.0} |",
        tally.records,
        tt.wcu,
        w_rec,
        w_dist,
        r_rec,
        usd_per_million(w_rec, r_rec),
        tt.reported_total()
    );
    let w_low = per(tt.wcu - tt.wcu_cancelled_tx, tally.records);
    println!(
        "| Tally if cancelled transactions bill nothing | {} | {:.0} | {:.3} | {:.3} | {:.3} | ${:.3} | |",
        tally.records,
        tt.wcu - tt.wcu_cancelled_tx,
        w_low,
        per(tt.wcu - tt.wcu_cancelled_tx, tally.distinct),
        r_rec,
        usd_per_million(w_low, r_rec)
    );
    println!(
        "| naive baseline (6 x UpdateItem ADD, sample) | {} | {:.0} | **{:.3}** | n/a (no dedupe) | {:.3} | ${:.3} | {:.0} |",
        base.sampled,
        base.totals.wcu,
        b_w,
        b_r,
        usd_per_million(b_w, b_r),
        base.totals.reported_total()
    );
    println!(
        "| naive baseline, full run (exact) | {} | {:.0} | {:.3} | | 0 | ${:.3} | |",
        events.len(),
        BASELINE_WCU_PER_EVENT * events.len() as f64,
        BASELINE_WCU_PER_EVENT,
        usd_per_million(BASELINE_WCU_PER_EVENT, 0.0)
    );
    println!();
    println!("| dashboard query | buckets | requests | RCU (computed) | moto-reported |");
    println!("|---|---|---|---|---|");
    for r in &reads {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} |",
            r.label, r.buckets, r.requests, r.rcu, r.reported
        );
    }
    println!();
    let ratio = w_rec / BASELINE_WCU_PER_EVENT;
    println!(
        "Tally/baseline WCU per event: {ratio:.3} (Tally {w_rec:.3}, baseline {BASELINE_WCU_PER_EVENT}); \
         per distinct event {w_dist:.3} and Tally's RCU per event {r_dist:.3}"
    );
    println!(
        "target <= {TARGET_WCU_PER_EVENT} WCU/event (half the baseline): {}; stretch < 2: {}",
        if w_rec <= TARGET_WCU_PER_EVENT {
            "met"
        } else {
            "NOT met"
        },
        if w_rec < 2.0 { "met" } else { "not met" }
    );
    println!(
        "prices: DynamoDB on-demand us-east-1 since 1 Nov 2024, ${USD_PER_MILLION_WRU} per million write request units, \
         ${USD_PER_MILLION_RRU} per million read request units (https://aws.amazon.com/dynamodb/pricing/on-demand/)"
    );
    println!(
        "units are computed from the requests and responses by DynamoDB's published rules (bench/src/capacity.rs); \
         moto 5.2.5 reports constants (1 per PutItem/UpdateItem/Query, 0.5 per GetItem, nothing for transactions), \
         so its column is shown only to say it is not a measurement"
    );
    let guard_wcu: f64 = tt
        .by_class
        .iter()
        .filter(|(class, _)| class.contains("GUARD"))
        .map(|(_, c)| c.wcu)
        .sum();
    let (largest, over) = largest_counter_item(&plain, &table).await?;
    println!(
        "  largest counter item (day cell or unique counter, stored, by DynamoDB's size rules): \
         {largest} bytes; {over} counter items over 1 KB (writer slots: {})",
        a.writer_slots
    );
    println!(
        "CELL meters={} batch={} aggregators={} conflicts={} records={} wcu_per_event={:.3} \
         wcu_per_event_if_cancelled_free={:.3} rcu_per_event={:.4} guard_wcu_per_event={:.3} \
         cancelled_tx={} failed_conditions={} retries_per_event={:.4} redelivered={} dead_lettered={} \
         baseline_wcu_per_event={:.3} guard_floor_per_meter={} guard_floor_per_org={} exact={}",
        a.meters,
        a.batch,
        a.aggregators,
        a.conflicts,
        tally.records,
        w_rec,
        w_low,
        r_rec,
        per(guard_wcu, tally.records),
        tt.cancelled_transactions,
        tt.failed_conditions,
        per(retries as f64, tally.records),
        tally.redelivered,
        tally.dead_lettered.len(),
        b_w,
        tally.guard_pairs_per_meter,
        tally.guard_pairs_per_org,
        wrong.is_empty()
    );
    if !wrong.is_empty() {
        bail!("the Tally run's counters are not exact; its figures do not count");
    }
    Ok(())
}

/// The size of the largest stored counter item (`ORG#<org>#CTR#<month>`) and how many are
/// over 1 KB: what bills a counter update beyond what its request shows.
async fn largest_counter_item(client: &Client, table: &str) -> anyhow::Result<(usize, usize)> {
    let (mut largest, mut over) = (0, 0);
    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(table)
            .filter_expression("contains(pk, :ctr)")
            .expression_attribute_values(":ctr", AttributeValue::S("#CTR#".into()))
            .set_exclusive_start_key(start)
            .send()
            .await
            .context("scanning the counter items")?;
        for item in page.items() {
            let size = tally_bench::capacity::item_size(item);
            largest = largest.max(size);
            over += usize::from(size > 1024);
        }
        start = page.last_evaluated_key;
        if start.is_none() {
            return Ok((largest, over));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn baseline_touches_six_distinct_counters_per_event() {
        let start = hour_start().unwrap();
        let spec = WorkloadSpec {
            events: 50,
            ..WorkloadSpec::w(start)
        };
        let events = generate(&spec, &tenants(&spec));
        for e in &events {
            let keys = baseline_keys(e);
            assert_eq!(keys.len(), 6);
            assert_eq!(keys.iter().collect::<HashSet<_>>().len(), 6);
        }
    }

    /// Workload W covers every aggregation's write path (`count` shares `sum`'s, and W has
    /// none), and the truth the run is checked against counts a `unique_count` meter's
    /// distinct values (it counted none before, failing an exact store).
    #[test]
    fn workload_w_has_every_aggregation_and_its_truth_counts_distinct_users() {
        let start = hour_start().unwrap();
        let spec = WorkloadSpec {
            events: 2_000,
            all_aggregations: true,
            ..WorkloadSpec::w(start)
        };
        let events = generate(&spec, &tenants(&spec));
        let kinds: HashSet<String> = events
            .iter()
            .map(|e| format!("{:?}", e.aggregation).chars().take(6).collect())
            .collect();
        let want: HashSet<String> = ["Sum", "Max", "Latest", "Unique"].map(String::from).into();
        assert_eq!(kinds, want);
        let truth = truth(&events);
        let org = &events[0].org_id;
        let users: HashSet<String> = dedupe_in_batch(&events)
            .into_iter()
            .filter(|e| &e.org_id == org && e.meter.as_str() == "active_users")
            .filter_map(|e| e.unique_value().map(|v| v.into_owned()))
            .collect();
        assert!(!users.is_empty(), "the busiest org has active_users events");
        let month = truth[org]
            .iter()
            .find(|(k, _)| {
                k.meter.as_str() == "active_users"
                    && k.project.is_none()
                    && k.granularity == Granularity::Month
            })
            .map(|(_, v)| *v);
        assert_eq!(month, Some(Decimal::from(users.len())));
    }

    #[test]
    fn cost_per_million_uses_the_on_demand_prices() {
        assert!((usd_per_million(6.0, 0.0) - 3.75).abs() < 1e-12);
        assert!((usd_per_million(1.0, 1.0) - 0.75).abs() < 1e-12);
    }
}
