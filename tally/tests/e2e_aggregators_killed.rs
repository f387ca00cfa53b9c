//! Exactly once across aggregator *processes* that die: four `tally aggregate` processes
//! drain one SQS queue (or, in the second scenario, one Kinesis stream) into one DynamoDB
//! table on the emulator, every DynamoDB call going
//! through the fault proxy (`tally_tests::fault_proxy`, seeded: throttles, conflicts,
//! cancelled transactions, 500s and answers lost after the write was applied), while the
//! test SIGKILLs a random one every so often and starts it again. At the end every counter
//! must equal an oracle computed from the distinct events, and `tally reconcile` must find
//! no drift.
//!
//! Why processes: the fault harness (`tests/src/faults.rs`) runs its concurrent aggregators
//! as tasks sharing one store object, so one cache of done batches and known hours; here
//! each aggregator has its own caches and its own SDK clients, and a kill loses whatever it
//! held in memory: messages received and not acknowledged (they come back after the SQS
//! visibility timeout), ledger records claimed without an intent (taken over once the
//! claim lease is over), intents half applied (finished by whoever meets them).
//!
//! The events go straight onto the queue with the queue's publisher (the aggregator needs no
//! catalogue: an event carries its aggregation), so all five aggregations are covered with
//! meters of this test's own (sum, count, max, latest, unique_count), and resends of
//! earlier events are mixed into later publishes. The oracle is a plain map over the
//! distinct events, not `tally_core::fold`; it is shown to catch a planted fault: one
//! extra event applied straight to the store makes the comparison fail.
//!
//! Settings that keep it quick: `TALLY_DYNAMODB_CLAIM_LEASE_SECONDS=3` and
//! `TALLY_QUEUE_VISIBILITY_SECONDS=10`, so a killed process's work comes back within seconds.
//! `TALLY_KILL_SEED` replays a run's choices (the seed is printed); arrival order at the
//! proxy still follows timing, so a replay is close, not identical.
//!
//! Needs `TALLY_TEST_AWS_ENDPOINT` (see `scripts/test.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rust_decimal::Decimal;
use tally_core::counter::OwnedCounterKey;
use tally_core::event::{Event, Quantity};
use tally_core::ids::{EventId, MeterName, OrgId, ProjectId};
use tally_core::meter::Aggregation;
use tally_core::period::{Granularity, Month};
use tally_core::ports::{EventQueue, UsageStore};
use tally_store::dynamodb::DynamoStore;
use tally_store::kinesis::KinesisQueue;
use tally_store::sqs::SqsQueue;
use tally_tests::fault_proxy::{Fault, FaultConfig, FaultProxy};
use tally_tests::oracle::plain_counters;

/// Aggregator processes running at once.
const PROCESSES: usize = 4;
/// Distinct events, and resends of earlier ones mixed in, on SQS; Kinesis takes half as
/// many (each of its processes reads every record, so it does four times the work).
const DISTINCT: usize = 400;
const RESENDS: usize = 60;
/// The processes' claim lease and queue visibility timeout, in seconds: what a killed one
/// held comes back this soon. A visibility much shorter than a slow batch sends messages
/// round the consumers until SQS dead-letters them (after 5 receives).
const CLAIM_LEASE: &str = "3";
const VISIBILITY: &str = "10";
/// The two scenarios share the one emulator, which serves one DynamoDB request at a time:
/// run side by side, each slows the other past its visibility timeout.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Events per publish.
const PUBLISH_CHUNK: usize = 20;
/// SIGKILLs while publishing, and after the last publish while the backlog drains.
const KILLS_DURING: usize = 6;
const KILLS_AFTER: usize = 2;
/// Longest wait for the queue to drain after the last kill.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

/// The test's meters, one per aggregation.
fn meters() -> [(&'static str, Aggregation); 5] {
    [
        ("calls", Aggregation::Sum),
        ("requests", Aggregation::Count),
        ("peak_bytes", Aggregation::Max),
        ("temperature", Aggregation::Latest),
        (
            "active_users",
            Aggregation::UniqueCount {
                property: "user".into(),
            },
        ),
    ]
}

/// `distinct` events of `org` over its `projects`, the meters in turn, timestamps over the
/// first three days of `month` (few hour cells, so few items to contend on).
fn workload(
    rng: &mut StdRng,
    org: &OrgId,
    projects: &[ProjectId],
    month: Month,
    distinct: usize,
) -> Vec<Event> {
    let meters = meters();
    (0..distinct)
        .map(|i| {
            let (meter, aggregation) = meters[i % meters.len()].clone();
            let mut properties = serde_json::Map::new();
            if matches!(aggregation, Aggregation::UniqueCount { .. }) {
                properties.insert(
                    "user".into(),
                    format!("u{}", rng.random_range(0..15)).into(),
                );
            }
            Event {
                org_id: org.clone(),
                id: EventId::parse(&format!("k-{i}")).unwrap(),
                project_id: projects[rng.random_range(0..projects.len())].clone(),
                meter: MeterName::parse(meter).unwrap(),
                aggregation,
                quantity: Quantity::new(Decimal::new(rng.random_range(1..100_000), 2)).unwrap(),
                timestamp: month.start()
                    + chrono::Duration::seconds(rng.random_range(0..3 * 86_400)),
                properties,
            }
        })
        .collect()
}

/// The published stream: every event once, each resend after its original.
fn with_resends(rng: &mut StdRng, events: &[Event], resends: usize) -> Vec<Event> {
    let mut stream = events.to_vec();
    for _ in 0..resends {
        let i = rng.random_range(0..events.len());
        let at = rng.random_range(i + 1..=stream.len());
        stream.insert(at, events[i].clone());
    }
    stream
}

/// `None` if the org's stored counters of `month` are exactly `want` (no counter missing,
/// none extra but zeros), else the first differences.
async fn compare(
    store: &dyn UsageStore,
    org: &OrgId,
    month: Month,
    want: &BTreeMap<OwnedCounterKey, Decimal>,
) -> Option<String> {
    let mut stored: BTreeMap<OwnedCounterKey, Decimal> = store
        .stored_counters(org, month)
        .await
        .expect("stored_counters")
        .into_iter()
        .collect();
    let mut diffs = Vec::new();
    for (k, w) in want {
        let have = stored.remove(k).map(|v| v.normalize());
        if have != Some(w.normalize()) {
            diffs.push(format!(
                "{} {:?} {} {}: want {w}, have {have:?}",
                k.meter,
                k.project.as_ref().map(|p| p.as_str()),
                k.granularity.as_str(),
                k.start
            ));
        }
    }
    diffs.extend(
        stored
            .into_iter()
            .filter(|(_, v)| !v.is_zero())
            .map(|(k, v)| format!("{} {:?}: want nothing, have {v}", k.meter, k.granularity)),
    );
    let n = diffs.len();
    (n > 0).then(|| {
        diffs.truncate(6);
        format!("{n} counter(s) differ: {}", diffs.join("; "))
    })
}

/// The four aggregator slots: each a running `tally aggregate` or none, with its log files.
struct Fleet {
    env: Env,
    logs: PathBuf,
    slots: Vec<Option<Child>>,
    started: usize,
}

impl Fleet {
    fn new(env: Env, logs: PathBuf) -> Fleet {
        std::fs::create_dir_all(&logs).unwrap();
        let mut fleet = Fleet {
            env,
            logs,
            slots: (0..PROCESSES).map(|_| None).collect(),
            started: 0,
        };
        for slot in 0..PROCESSES {
            fleet.start(slot);
        }
        fleet
    }

    /// Starts `tally aggregate` in `slot`, its log in a file of its own.
    fn start(&mut self, slot: usize) {
        let log = File::create(self.logs.join(format!("agg-{slot}-{}.log", self.started))).unwrap();
        let child = Command::new(bin())
            .args(["aggregate", "--max-events", "20", "--max-wait-ms", "50"])
            .args(self.env.flags())
            .arg("--data")
            .arg(self.env.data())
            // Warnings, plus the store's line when it finishes another batch's intent.
            .env("TALLY_LOG", "warn,tally_store::dynamodb::apply=info")
            .env("TALLY_DYNAMODB_CLAIM_LEASE_SECONDS", CLAIM_LEASE)
            .env("TALLY_QUEUE_VISIBILITY_SECONDS", VISIBILITY)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tally aggregate");
        self.started += 1;
        assert!(self.slots[slot].replace(child).is_none());
    }

    /// SIGKILLs the process in `slot`, after checking it had not died on its own.
    fn kill(&mut self, slot: usize) {
        let mut child = self.slots[slot].take().expect("a running process");
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "aggregator {slot} exited on its own with {status}:\n{}",
                self.log_tails()
            );
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Checks that every process is still running.
    fn all_alive(&mut self) {
        for (slot, child) in self.slots.iter_mut().enumerate() {
            if let Some(status) = child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "aggregator {slot} exited on its own with {status}:\n{}",
                    log_tails(&self.logs)
                );
            }
        }
    }

    fn log_tails(&self) -> String {
        log_tails(&self.logs)
    }

    /// How many log lines of all processes contain `text`.
    fn log_lines_with(&self, text: &str) -> usize {
        std::fs::read_dir(&self.logs)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .map(|log| log.lines().filter(|l| l.contains(text)).count())
            .sum()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in self.slots.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The last lines of every aggregator log, for failure messages.
fn log_tails(dir: &Path) -> String {
    let mut out = String::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join("\n");
        out.push_str(&format!("--- {}\n{tail}\n", f.display()));
    }
    out
}

/// SIGKILLs a random process, waits up to 0.4 s (its messages and claims stay behind it),
/// and starts a new one in its place.
async fn kill_one(fleet: &mut Fleet, rng: &mut StdRng, kills: &mut Vec<usize>) {
    let slot = rng.random_range(0..PROCESSES);
    fleet.kill(slot);
    kills.push(slot);
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
    fleet.start(slot);
}

/// The test's own handle on the queue the processes drain (straight to the emulator): to
/// publish, to see it drained and to count dead letters.
enum Queue {
    Sqs { main: SqsQueue, dead: SqsQueue },
    Kinesis(KinesisQueue),
}

impl Queue {
    /// The queue `--queue` names (`sqs:URL` or `kinesis:STREAM`, whose checkpoints are in
    /// `table`, under the consumer name `tally aggregate` reads with).
    fn open(aws: &aws_config::SdkConfig, spec: &str, table: &str) -> Queue {
        if let Some(url) = spec.strip_prefix("sqs:") {
            let sqs = aws_sdk_sqs::Client::new(aws);
            return Queue::Sqs {
                main: SqsQueue::new(sqs.clone(), url),
                dead: SqsQueue::new(sqs, format!("{url}-dlq")),
            };
        }
        let stream = spec.strip_prefix("kinesis:").expect("sqs: or kinesis:");
        Queue::Kinesis(KinesisQueue::new(
            aws_sdk_kinesis::Client::new(aws),
            stream,
            aws_sdk_dynamodb::Client::new(aws),
            table,
            "aggregator",
        ))
    }

    fn queue(&self) -> &dyn EventQueue {
        match self {
            Queue::Sqs { main, .. } => main,
            Queue::Kinesis(k) => k,
        }
    }

    /// Messages or records set aside as undecodable or received too often.
    async fn dead_letters(&self) -> u64 {
        match self {
            Queue::Sqs { dead, .. } => dead.depth().await.expect("dead-letter depth"),
            Queue::Kinesis(k) => k.dead_letters().await.expect("dead letters").len() as u64,
        }
    }
}

/// Four aggregators on SQS: each message goes to one of them (until a kill or a lost answer
/// sends it to another).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_aggregator_processes_on_sqs_killed_at_random_end_exact() {
    killed_at_random("sqs").await;
}

/// Four aggregators on Kinesis under one consumer name: every process reads every record,
/// so all four race on every batch, and a restarted one reads again from the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_aggregator_processes_on_kinesis_killed_at_random_end_exact() {
    killed_at_random("kinesis").await;
}

/// The scenario of the [module doc](self) on `kind` (`sqs` or `kinesis`).
async fn killed_at_random(kind: &str) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let t0 = Instant::now();
    let scale = if kind == "kinesis" { 2 } else { 1 };
    let (distinct, resends) = (DISTINCT / scale, RESENDS / scale);
    let seed = std::env::var("TALLY_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("{kind}: TALLY_KILL_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let env = Env::aws(kind);
    let tenant = make_tenant(&env, "killed-co");
    let upstream = env.aws_endpoint.clone().unwrap();
    let table = env
        .store
        .as_deref()
        .unwrap()
        .strip_prefix("dynamodb:")
        .unwrap()
        .to_owned();

    // Every AWS call of the aggregators goes through the proxy; SQS passes untouched, a
    // low rate of DynamoDB writes meets a fault.
    let faults = [
        (Fault::ProvisionedThroughputExceeded, 0.01),
        (Fault::Throttling, 0.01),
        (Fault::TransactionConflict, 0.01),
        (Fault::TransactionCanceled, 0.02),
        (Fault::InternalServerError, 0.01),
        (Fault::AnswerLost500, 0.02),
        (Fault::ConnectionCut, 0.01),
    ];
    let proxy = FaultProxy::start(
        &upstream,
        FaultConfig {
            seed,
            rates: faults.to_vec(),
            latency: Duration::from_millis(40),
            reads: false,
        },
    )
    .await
    .unwrap();
    let mut via_proxy = env.clone();
    via_proxy.aws_endpoint = Some(proxy.url());

    // The test's own clients talk to the emulator directly.
    let aws = tally_tests::aws::sdk_config_at(&upstream).await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), table.clone());
    let queue = Queue::open(&aws, env.queue.as_deref().unwrap(), &table);

    let org = OrgId::parse(&tenant.org).unwrap();
    let projects: Vec<ProjectId> = tenant
        .projects
        .iter()
        .map(|p| ProjectId::parse(p).unwrap())
        .collect();
    let month = Month::of(Utc::now());
    let events = workload(&mut rng, &org, &projects, month, distinct);
    let stream = with_resends(&mut rng, &events, resends);

    let mut fleet = Fleet::new(via_proxy, env.data().join("aggregator-logs"));
    let chunks: Vec<&[Event]> = stream.chunks(PUBLISH_CHUNK).collect();
    // The publishes after which a process is killed, drawn from the seed.
    let mut kill_after: BTreeSet<usize> = BTreeSet::new();
    while kill_after.len() < KILLS_DURING {
        kill_after.insert(rng.random_range(1..chunks.len()));
    }
    let mut kills = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let report = queue.queue().publish(chunk).await.expect("publish");
        assert!(
            report.failed.is_empty(),
            "publish refused {:?}",
            report.failed
        );
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..400))).await;
        if kill_after.contains(&i) {
            kill_one(&mut fleet, &mut rng, &mut kills).await;
        }
    }
    for _ in 0..KILLS_AFTER {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
        kill_one(&mut fleet, &mut rng, &mut kills).await;
    }
    let t_published = t0.elapsed();

    // Drained: nothing on the queue, visible or in flight. Acknowledged only after their
    // apply returned, so every event is counted by then (or the oracle says what is not).
    let deadline = Instant::now() + DRAIN_LIMIT;
    loop {
        fleet.all_alive();
        let depth = queue.queue().depth().await.expect("queue depth");
        if depth == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{depth} message(s) still queued {DRAIN_LIMIT:?} after the last kill (seed {seed}); \
             faults {:?}\n{}",
            proxy.injected(),
            fleet.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let t_drained = t0.elapsed();
    let dead = queue.dead_letters().await;
    assert_eq!(
        dead,
        0,
        "{dead} message(s) were dead-lettered (seed {seed}): received too often, or undecodable\n{}",
        fleet.log_tails()
    );
    let want = plain_counters(&events);
    let diff = compare(&store, &org, month, &want).await;
    assert!(
        diff.is_none(),
        "counters are not exact after the drain (seed {seed}, kills {kills:?}): {}\n{}",
        diff.unwrap_or_default(),
        fleet.log_tails()
    );
    // What the kills left behind and the survivors cleaned up (reported, not asserted: a
    // kill may find its process idle).
    let recovered = [
        "taking over events of an aborted batch",
        "finished another batch's intent",
        "record not fully applied",
    ]
    .map(|text| (text, fleet.log_lines_with(text)));
    drop(fleet);

    let out = env.cli_raw(&[
        "reconcile",
        "--period",
        &month.to_string(),
        "--org",
        &tenant.org,
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "tally reconcile found drift or failed (seed {seed}): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let injected = proxy.injected();
    let total: u64 = injected.values().sum();
    assert!(total > 0, "the proxy injected no fault: {injected:?}");
    assert_eq!(kills.len(), KILLS_DURING + KILLS_AFTER);

    // The check can fail: one more event, applied straight to the store, is a counter the
    // oracle of the published events does not have.
    let planted = Event {
        id: EventId::parse("planted-1").unwrap(),
        ..events[0].clone()
    };
    store
        .apply_batch(std::slice::from_ref(&planted))
        .await
        .expect("plant");
    let caught = compare(&store, &org, month, &want).await;
    assert!(
        caught
            .as_deref()
            .is_some_and(|d| d.contains(planted.meter.as_str())),
        "the oracle comparison missed a planted event: {caught:?}"
    );

    println!(
        "{kind}: {PROCESSES} processes, {} distinct events + {resends} resends in {} publishes; \
         {} SIGKILLs (slots {kills:?}), {} starts; faults injected {injected:?} \
         ({total} of {} eligible calls); recovery in the logs {recovered:?}; published \
         and killed in {t_published:?}, drained at {t_drained:?}, done at {:?}",
        events.len(),
        chunks.len(),
        kills.len(),
        PROCESSES + kills.len(),
        proxy.eligible(),
        t0.elapsed()
    );
}

/// The oracle itself, on a few hand-made events: resends count once, latest breaks a
/// tie on time by the larger value, unique_count counts distinct values per bucket.
#[test]
fn oracle_counts_distinct_events_by_aggregation() {
    let org = OrgId::parse("org_oracle").unwrap();
    let p = ProjectId::parse("prj_oracle").unwrap();
    let month = Month::parse("2026-03").unwrap();
    let at = month.start();
    let ev = |id: &str, meter: usize, q: i64, secs: i64, user: &str| {
        let (m, aggregation) = meters()[meter].clone();
        let mut properties = serde_json::Map::new();
        properties.insert("user".into(), user.into());
        Event {
            org_id: org.clone(),
            id: EventId::parse(id).unwrap(),
            project_id: p.clone(),
            meter: MeterName::parse(m).unwrap(),
            aggregation,
            quantity: Quantity::new(Decimal::from(q)).unwrap(),
            timestamp: at + chrono::Duration::seconds(secs),
            properties,
        }
    };
    let events = [
        ev("a", 0, 2, 0, "x"),
        ev("b", 0, 3, 10, "x"),
        ev("a", 0, 2, 0, "x"),
        ev("c", 3, 5, 20, "x"),
        ev("d", 3, 7, 20, "x"),
        ev("e", 3, 9, 5, "x"),
        ev("f", 4, 1, 0, "u1"),
        ev("g", 4, 1, 30, "u1"),
        ev("h", 4, 1, 40, "u2"),
    ];
    let got = plain_counters(&events);
    let value = |meter: &str| {
        got[&OwnedCounterKey {
            org: org.clone(),
            project: None,
            meter: MeterName::parse(meter).unwrap(),
            granularity: Granularity::Month,
            start: at,
        }]
    };
    assert_eq!(value("calls"), Decimal::from(5));
    assert_eq!(value("temperature"), Decimal::from(7));
    assert_eq!(value("active_users"), Decimal::from(2));
    // Three granularities, org-wide and per project, for each of the three meters.
    assert_eq!(got.len(), 3 * 3 * 2);
}
