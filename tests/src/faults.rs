//! The fault-injection harness: decorators around the real [`UsageStore`] and
//! [`EventQueue`] adapters that fail the write path at every step, a driver that runs
//! several aggregators on one queue while a client publishes and resends, and the checks
//! that every counter equals an independently computed ground truth and that
//! [`tally_aggregator::reconcile`] finds no drift.
//!
//! A [`Schedule`] is the random part: a list of store faults consumed by successive
//! `apply_batch` calls, a list of queue faults consumed by successive `ack` calls and a
//! list of receive faults consumed by successive `receive` calls (all aggregators share
//! the lists, so which aggregator meets which fault depends on timing too). Once a list is
//! used up its calls pass through, so every schedule ends with the system able to drain.
//!
//! How each fault is injected:
//!
//! - [`StoreFault::FailBefore`]: `apply_batch` returns `Unavailable` before the ledger
//!   write (nothing reaches the real store).
//! - [`StoreFault::PrefixThenErr`]: the first part of the batch is applied by the real
//!   store, then the call fails: a crash between two transaction chunks.
//! - [`StoreFault::PrefixThenFailed`]: the first part is applied; the rest is reported the
//!   way the DynamoDB adapter reports a failed chunk: `Failed` per event, except repeats
//!   inside the batch, which the adapter reports `Duplicate` whatever became of their first
//!   copy.
//! - [`StoreFault::AfterApplyErr`]: the whole batch is applied, then the call fails (the
//!   aggregator sees an error and acknowledges nothing).
//! - [`QueueFault::SkipAck`]: `ack` returns `Ok` without deleting anything: the process
//!   died after applying, before its acknowledgement reached the queue.
//! - [`QueueFault::PartialAck`]: some receipts are acknowledged, then `ack` fails.
//! - [`ReceiveFault::Redeliver`]: `receive` hands out again every delivery that was handed
//!   out and not acknowledged yet, even while another aggregator is still working on it
//!   (what a visibility timeout shorter than a batch does). Independently, when the real
//!   queue has nothing visible, deliveries not acknowledged within
//!   [`Harness::reoffer_after`] are handed out again (a fast simulated visibility timeout;
//!   the real queue's own timeout also applies).
//! - Client resends: some events are published again, in later publishes, exactly as
//!   before, while the aggregators run.
//! - Poison: with a schedule's `poison` flag, one `unique_count` event without the property
//!   its meter counts is published for an org of its own (it decodes, but fails validation
//!   after the fact); it must be dead-lettered with the reason and counted nowhere.

// Test support code: a failed unwrap here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;
use tally_aggregator::{AggregatorConfig, process_batch, reconcile};
use tally_core::counter::OwnedCounterKey;
use tally_core::event::{Event, Quantity};
use tally_core::ids::{EventId, MeterName, OrgId};
use tally_core::meter::Aggregation;
use tally_core::period::{Granularity, Month};
use tally_core::ports::{
    ApplyOutcome, ApplyReport, CounterQuery, CounterValue, Delivery, EventQueue, LedgerPage,
    PublishReport, QueueError, StoreError, UsageStore,
};
use tokio::time::Instant;

use crate::conformance::fixtures::{fresh_org, fresh_project};

/// A fault of one `apply_batch` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFault {
    /// Delegate.
    Pass,
    /// Fail before the ledger write.
    FailBefore,
    /// Apply the first `n`% of the batch, then fail the call.
    PrefixThenErr(u8),
    /// Apply the first `n`% of the batch, report the rest failed (as a failed chunk).
    PrefixThenFailed(u8),
    /// Apply everything, then fail the call.
    AfterApplyErr,
}

/// A fault of one `ack` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueFault {
    /// Delegate.
    Pass,
    /// Acknowledge nothing and report success (a crash before the ack).
    SkipAck,
    /// Acknowledge the first `n`% of the receipts, then fail.
    PartialAck(u8),
}

/// A fault of one `receive` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveFault {
    /// Delegate.
    Pass,
    /// Hand out again every delivery not acknowledged yet.
    Redeliver,
}

/// One random fault schedule and workload.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Distinct events to publish.
    pub events: usize,
    /// Events published again (client resends).
    pub resends: usize,
    /// Publishes the events are cut into.
    pub publishes: usize,
    /// Aggregators running at once.
    pub aggregators: usize,
    /// Most events per aggregator batch.
    pub batch: usize,
    /// Faults of successive `apply_batch` calls.
    pub store: Vec<StoreFault>,
    /// Faults of successive `ack` calls.
    pub acks: Vec<QueueFault>,
    /// Faults of successive `receive` calls.
    pub receives: Vec<ReceiveFault>,
    /// Publish a poison event too.
    pub poison: bool,
    /// Seed of the workload (ids, meters, quantities, times, which events are resent).
    pub seed: u64,
}

fn store_fault() -> impl Strategy<Value = StoreFault> {
    prop_oneof![
        4 => Just(StoreFault::Pass),
        1 => Just(StoreFault::FailBefore),
        1 => (1u8..100).prop_map(StoreFault::PrefixThenErr),
        1 => (1u8..100).prop_map(StoreFault::PrefixThenFailed),
        1 => Just(StoreFault::AfterApplyErr),
    ]
}

fn queue_fault() -> impl Strategy<Value = QueueFault> {
    prop_oneof![
        4 => Just(QueueFault::Pass),
        1 => Just(QueueFault::SkipAck),
        1 => (1u8..100).prop_map(QueueFault::PartialAck),
    ]
}

fn receive_fault() -> impl Strategy<Value = ReceiveFault> {
    prop_oneof![
        5 => Just(ReceiveFault::Pass),
        1 => Just(ReceiveFault::Redeliver),
    ]
}

/// Random schedules: `events` distinct events (plus up to half as many resends), 2–3
/// aggregators, up to 12 faults of each kind.
pub fn schedules(events: std::ops::Range<usize>) -> impl Strategy<Value = Schedule> {
    (
        events,
        0usize..=50,
        1usize..=4,
        2usize..=3,
        3usize..=16,
        proptest::collection::vec(store_fault(), 0..12),
        proptest::collection::vec(queue_fault(), 0..12),
        proptest::collection::vec(receive_fault(), 0..12),
        proptest::bool::weighted(0.25),
        any::<u64>(),
    )
        .prop_map(
            |(
                events,
                resend_pct,
                publishes,
                aggregators,
                batch,
                store,
                acks,
                receives,
                poison,
                seed,
            )| {
                Schedule {
                    events,
                    resends: events * resend_pct / 100,
                    publishes,
                    aggregators,
                    batch,
                    store,
                    acks,
                    receives,
                    poison,
                    seed,
                }
            },
        )
}

/// The fault lists of a running schedule, shared by every decorator.
#[derive(Debug, Default)]
pub struct Faults {
    store: Mutex<VecDeque<StoreFault>>,
    acks: Mutex<VecDeque<QueueFault>>,
    receives: Mutex<VecDeque<ReceiveFault>>,
    /// How many faults were met, by kind (for the test's own report).
    pub injected: Mutex<HashMap<&'static str, usize>>,
}

impl Faults {
    fn new(s: &Schedule) -> Self {
        Faults {
            store: Mutex::new(s.store.iter().copied().collect()),
            acks: Mutex::new(s.acks.iter().copied().collect()),
            receives: Mutex::new(s.receives.iter().copied().collect()),
            injected: Mutex::new(HashMap::new()),
        }
    }

    fn note(&self, what: &'static str) {
        *self.injected.lock().unwrap().entry(what).or_default() += 1;
    }

    fn exhausted(&self) -> bool {
        self.store.lock().unwrap().is_empty()
            && self.acks.lock().unwrap().is_empty()
            && self.receives.lock().unwrap().is_empty()
    }
}

/// A [`UsageStore`] that fails `apply_batch` as the schedule says and delegates the rest.
pub struct FaultyStore {
    inner: Arc<dyn UsageStore>,
    faults: Arc<Faults>,
}

impl FaultyStore {
    /// Wraps a real store.
    pub fn new(inner: Arc<dyn UsageStore>, faults: Arc<Faults>) -> Self {
        FaultyStore { inner, faults }
    }
}

fn cut(len: usize, pct: u8) -> usize {
    (len * usize::from(pct) / 100).clamp(1, len.saturating_sub(1).max(1))
}

#[async_trait]
impl UsageStore for FaultyStore {
    async fn apply_batch(&self, events: &[Event]) -> Result<ApplyReport, StoreError> {
        let fault = self
            .faults
            .store
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(StoreFault::Pass);
        let injected = |what| StoreError::Unavailable(format!("injected fault: {what}"));
        match fault {
            StoreFault::Pass => self.inner.apply_batch(events).await,
            StoreFault::FailBefore => {
                self.faults.note("store: fail before the ledger write");
                Err(injected("before the ledger write"))
            }
            StoreFault::PrefixThenErr(pct) => {
                self.faults.note("store: crash between chunks");
                let k = cut(events.len(), pct);
                self.inner.apply_batch(&events[..k]).await?;
                Err(injected("crash between transaction chunks"))
            }
            StoreFault::PrefixThenFailed(pct) => {
                self.faults.note("store: failed chunk");
                let k = cut(events.len(), pct);
                let mut report = self.inner.apply_batch(&events[..k]).await?;
                let mut seen: HashSet<(&OrgId, &EventId)> = HashSet::new();
                for (i, e) in events.iter().enumerate() {
                    let repeat = !seen.insert((&e.org_id, &e.id));
                    if i >= k {
                        report.outcomes.push(if repeat {
                            ApplyOutcome::Duplicate
                        } else {
                            ApplyOutcome::Failed("injected fault: chunk failed".into())
                        });
                    }
                }
                Ok(report)
            }
            StoreFault::AfterApplyErr => {
                self.faults.note("store: crash after apply");
                self.inner.apply_batch(events).await?;
                Err(injected("crash after apply"))
            }
        }
    }

    async fn counter_series(&self, query: &CounterQuery) -> Result<Vec<CounterValue>, StoreError> {
        self.inner.counter_series(query).await
    }

    async fn ledger_page(
        &self,
        org: &OrgId,
        month: Month,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<LedgerPage, StoreError> {
        self.inner.ledger_page(org, month, cursor, limit).await
    }

    async fn stored_counters(
        &self,
        org: &OrgId,
        month: Month,
    ) -> Result<Vec<(OwnedCounterKey, Decimal)>, StoreError> {
        self.inner.stored_counters(org, month).await
    }

    async fn is_period_closed(&self, month: Month) -> Result<bool, StoreError> {
        self.inner.is_period_closed(month).await
    }

    async fn close_period(&self, month: Month, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.inner.close_period(month, at).await
    }
}

/// A delivery handed out and not acknowledged yet.
struct Outstanding {
    delivery: Delivery,
    handed_out: Instant,
}

/// An [`EventQueue`] that skips or breaks acknowledgements and redelivers as the schedule
/// says, delegating to the real queue.
pub struct FaultyQueue {
    inner: Arc<dyn EventQueue>,
    faults: Arc<Faults>,
    /// By receipt.
    outstanding: Mutex<HashMap<String, Outstanding>>,
    reoffer_after: Duration,
    /// Orgs of records that were dead-lettered.
    pub dead_lettered: Mutex<Vec<(OrgId, String)>>,
}

impl FaultyQueue {
    /// Wraps a real queue; deliveries not acknowledged within `reoffer_after` are handed out
    /// again when the real queue has nothing.
    pub fn new(inner: Arc<dyn EventQueue>, faults: Arc<Faults>, reoffer_after: Duration) -> Self {
        FaultyQueue {
            inner,
            faults,
            outstanding: Mutex::new(HashMap::new()),
            reoffer_after,
            dead_lettered: Mutex::new(Vec::new()),
        }
    }

    fn settle(&self, receipts: &[String]) {
        let mut out = self.outstanding.lock().unwrap();
        for r in receipts {
            out.remove(r);
        }
    }

    /// Deliveries handed out and not acknowledged.
    pub fn outstanding(&self) -> usize {
        self.outstanding.lock().unwrap().len()
    }

    fn reoffer(&self, older_than: Duration, max_events: usize) -> Vec<Delivery> {
        let now = Instant::now();
        let mut out = self.outstanding.lock().unwrap();
        let mut picked = Vec::new();
        let mut events = 0;
        for o in out.values_mut() {
            if now.duration_since(o.handed_out) >= older_than
                && (picked.is_empty() || events + o.delivery.events.len() <= max_events)
            {
                o.handed_out = now;
                events += o.delivery.events.len();
                let mut d = o.delivery.clone();
                d.receive_count += 1;
                picked.push(d);
            }
        }
        picked
    }
}

#[async_trait]
impl EventQueue for FaultyQueue {
    async fn publish(&self, events: &[Event]) -> Result<PublishReport, QueueError> {
        self.inner.publish(events).await
    }

    async fn receive(
        &self,
        max_events: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let fault = self
            .faults
            .receives
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(ReceiveFault::Pass);
        if fault == ReceiveFault::Redeliver {
            let again = self.reoffer(Duration::ZERO, max_events);
            if !again.is_empty() {
                self.faults.note("queue: redeliver in flight");
                return Ok(again);
            }
        }
        let got = self.inner.receive(max_events, wait).await?;
        if got.is_empty() {
            let again = self.reoffer(self.reoffer_after, max_events);
            if !again.is_empty() {
                self.faults.note("queue: redeliver after timeout");
            }
            return Ok(again);
        }
        let now = Instant::now();
        let mut out = self.outstanding.lock().unwrap();
        for d in &got {
            out.insert(
                d.receipt.clone(),
                Outstanding {
                    delivery: d.clone(),
                    handed_out: now,
                },
            );
        }
        Ok(got)
    }

    async fn ack(&self, receipts: &[String]) -> Result<(), QueueError> {
        let fault = if receipts.is_empty() {
            QueueFault::Pass
        } else {
            self.faults
                .acks
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(QueueFault::Pass)
        };
        match fault {
            QueueFault::Pass => {
                self.inner.ack(receipts).await?;
                self.settle(receipts);
                Ok(())
            }
            QueueFault::SkipAck => {
                self.faults.note("queue: ack skipped (crash)");
                Ok(())
            }
            QueueFault::PartialAck(pct) => {
                self.faults.note("queue: ack failed part way");
                let k = (receipts.len() * usize::from(pct) / 100).min(receipts.len() - 1);
                self.inner.ack(&receipts[..k]).await?;
                self.settle(&receipts[..k]);
                Err(QueueError::Unavailable(
                    "injected fault: ack failed part way".into(),
                ))
            }
        }
    }

    async fn depth(&self) -> Result<u64, QueueError> {
        self.inner.depth().await
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), QueueError> {
        self.inner.dead_letter(delivery, reason).await?;
        self.settle(std::slice::from_ref(&delivery.receipt));
        if let Some(e) = delivery.events.first() {
            self.dead_lettered
                .lock()
                .unwrap()
                .push((e.org_id.clone(), reason.to_owned()));
        }
        Ok(())
    }
}

/// Makes a fresh store for a schedule.
pub type StoreMaker = Box<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Arc<dyn UsageStore>> + Send>>
        + Send
        + Sync,
>;

/// The backend pair a harness runs on, and how long things may take.
pub struct Harness {
    /// The real store.
    pub store: Arc<dyn UsageStore>,
    /// If set, each schedule gets a fresh store from it instead of `store` (the emulator
    /// slows down as one table grows: a transaction snapshots the whole table).
    pub new_store: Option<StoreMaker>,
    /// The real queue (shared by all aggregators, as one queue is).
    pub queue: Arc<dyn EventQueue>,
    /// The simulated visibility timeout of [`FaultyQueue`].
    pub reoffer_after: Duration,
    /// How long an aggregator's idle receive waits.
    pub idle_wait: Duration,
    /// Longest a schedule may take to drain before the test fails.
    pub drain_timeout: Duration,
    /// Whether `depth` of the real queue is cheap and exact enough to wait on.
    pub use_depth: bool,
    /// How often the driver checks whether a schedule has drained (each check reads every
    /// counter, which competes with the aggregators on a single-threaded emulator).
    pub check_every: Duration,
}

/// Month every harness event falls in.
pub const MONTH: &str = "2026-10";

/// The meter of workload pick `k`: a sum, a count and a max.
fn meter(k: u64) -> (&'static str, Aggregation) {
    match k {
        0 => ("api_calls", Aggregation::Sum),
        1 => ("requests", Aggregation::Count),
        _ => ("storage_bytes", Aggregation::Max),
    }
}

/// A tiny deterministic generator (the workload must follow the schedule's seed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The events of a schedule: 2 orgs, 2 projects each, 3 meters, times over 3 days of
/// [`MONTH`].
fn workload(s: &Schedule) -> (Vec<OrgId>, Vec<Event>) {
    let mut rng = Lcg(s.seed ^ 0x9e37_79b9_7f4a_7c15);
    let orgs = [fresh_org(), fresh_org()];
    let projects = [
        [fresh_project(), fresh_project()],
        [fresh_project(), fresh_project()],
    ];
    let base = Utc.with_ymd_and_hms(2026, 10, 7, 0, 0, 0).unwrap();
    let events = (0..s.events)
        .map(|i| {
            let o = rng.below(2) as usize;
            let (meter, agg) = meter(rng.below(3));
            Event {
                org_id: orgs[o].clone(),
                id: EventId::parse(&format!("ev-{i}")).unwrap(),
                project_id: projects[o][rng.below(2) as usize].clone(),
                meter: MeterName::parse(meter).unwrap(),
                aggregation: agg,
                quantity: Quantity::new(Decimal::new(rng.below(100_000) as i64, 2)).unwrap(),
                timestamp: base + chrono::Duration::seconds(rng.below(3 * 86_400) as i64),
                properties: serde_json::Map::new(),
            }
        })
        .collect();
    (orgs.to_vec(), events)
}

/// The ground truth, computed with a plain map from the distinct events (not with
/// `tally_core::fold`): every (org, scope, meter, granularity, bucket) they imply.
pub fn ground_truth(events: &[Event]) -> HashMap<OwnedCounterKey, Decimal> {
    let mut seen: HashSet<(&OrgId, &EventId)> = HashSet::new();
    let mut truth: HashMap<OwnedCounterKey, Decimal> = HashMap::new();
    for e in events.iter().filter(|e| seen.insert((&e.org_id, &e.id))) {
        for g in Granularity::ALL {
            for project in [Some(e.project_id.clone()), None] {
                let key = OwnedCounterKey {
                    org: e.org_id.clone(),
                    project,
                    meter: e.meter.clone(),
                    granularity: g,
                    start: g.truncate(e.timestamp),
                };
                let q = e.quantity.value();
                match e.aggregation {
                    Aggregation::Sum => *truth.entry(key).or_default() += q,
                    Aggregation::Count => *truth.entry(key).or_default() += Decimal::ONE,
                    Aggregation::Max => {
                        let v = truth.entry(key).or_insert(q);
                        *v = (*v).max(q);
                    }
                    _ => unreachable!("the harness uses sum, count and max meters"),
                }
            }
        }
    }
    truth
}

/// What one schedule did, for the test's summary.
#[derive(Debug, Default)]
pub struct RunReport {
    /// Faults met, by kind.
    pub injected: HashMap<&'static str, usize>,
    /// Poison records dead-lettered.
    pub dead_lettered: usize,
}

/// Runs one schedule: publishes (with resends, and a poison event if asked) while
/// `s.aggregators` aggregators drain the queue through the faulty decorators, waits until
/// everything is acknowledged, then checks every counter of every org against the ground
/// truth and runs reconcile. Returns an error describing the first mismatch.
pub async fn run_schedule(h: &Harness, s: &Schedule) -> Result<RunReport, String> {
    let t_start = Instant::now();
    let real_store = match &h.new_store {
        Some(make) => make().await,
        None => h.store.clone(),
    };
    let h = &Harness {
        store: real_store,
        new_store: None,
        queue: h.queue.clone(),
        reoffer_after: h.reoffer_after,
        idle_wait: h.idle_wait,
        drain_timeout: h.drain_timeout,
        use_depth: h.use_depth,
        check_every: h.check_every,
    };
    let faults = Arc::new(Faults::new(s));
    let store: Arc<dyn UsageStore> = Arc::new(FaultyStore::new(h.store.clone(), faults.clone()));
    let queue = Arc::new(FaultyQueue::new(
        h.queue.clone(),
        faults.clone(),
        h.reoffer_after,
    ));
    let (orgs, events) = workload(s);
    let mut rng = Lcg(s.seed);
    // The published stream: every event once, plus resends of earlier ones, cut into
    // publishes; resends go into the same or a later publish than their original.
    let mut stream: Vec<Event> = events.clone();
    for _ in 0..s.resends {
        let i = rng.below(events.len() as u64) as usize;
        let at = i + 1 + rng.below((stream.len() - i) as u64) as usize;
        stream.insert(at.min(stream.len()), events[i].clone());
    }
    let poison_org = fresh_org();
    let poison = s.poison.then(|| Event {
        org_id: poison_org.clone(),
        id: EventId::parse("poison-1").unwrap(),
        meter: MeterName::parse("active_users").unwrap(),
        aggregation: Aggregation::UniqueCount {
            property: "user".into(),
        },
        properties: serde_json::Map::new(),
        ..events[0].clone()
    });

    let cfg = AggregatorConfig {
        max_events: s.batch,
        max_wait: Duration::from_millis(5),
        idle_poll: h.idle_wait,
        error_backoff: Duration::from_millis(5),
        ..AggregatorConfig::default()
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..s.aggregators {
        let (queue, store, stop) = (queue.clone(), store.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if process_batch(queue.as_ref(), store.as_ref(), &cfg, cfg.idle_poll)
                    .await
                    .is_err()
                {
                    tokio::time::sleep(cfg.error_backoff).await;
                }
            }
        }));
    }

    // The client: publishes the stream in pieces while the aggregators run.
    let pieces = s.publishes.min(stream.len()).max(1);
    let per = stream.len().div_ceil(pieces);
    for chunk in stream.chunks(per.max(1)) {
        let report = h
            .queue
            .publish(chunk)
            .await
            .map_err(|e| format!("publish: {e}"))?;
        if !report.failed.is_empty() {
            return Err(format!("publish refused events: {:?}", report.failed));
        }
        tokio::time::sleep(Duration::from_millis(rng.below(10))).await;
    }
    if let Some(p) = &poison {
        h.queue
            .publish(std::slice::from_ref(p))
            .await
            .map_err(|e| format!("publish poison: {e}"))?;
    }

    let t_published = Instant::now();
    // Drain: until the faults are used up, every counter matches, nothing is outstanding
    // in the decorator and (where cheap) the real queue is empty.
    let truth = ground_truth(&events);
    let month = Month::parse(MONTH).unwrap();
    let deadline = Instant::now() + h.drain_timeout;
    let mut last_diff;
    loop {
        tokio::time::sleep(h.check_every).await;
        last_diff = compare(h.store.as_ref(), &orgs, month, &truth).await?;
        let poison_done = !s.poison || !queue.dead_lettered.lock().unwrap().is_empty();
        if last_diff.is_none() && queue.outstanding() == 0 && poison_done {
            let empty = !h.use_depth || h.queue.depth().await.map_err(|e| e.to_string())? == 0;
            if empty {
                break;
            }
        }
        if Instant::now() >= deadline {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(format!(
                "not drained after {:?}: counters {:?}, faults left {}, outstanding {}, poison done {poison_done}",
                h.drain_timeout,
                last_diff,
                !faults.exhausted(),
                queue.outstanding()
            ));
        }
    }
    if std::env::var_os("TALLY_FAULT_TRACE").is_some() {
        eprintln!(
            "schedule: published in {:?}, drained in {:?}",
            t_published.duration_since(t_start),
            t_published.elapsed()
        );
    }
    // Everything is applied, so whatever a worker is doing now can only meet repeats:
    // stopping it mid-call (as a crash would) changes no counter.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in &workers {
        w.abort();
    }
    for w in workers {
        if let Err(e) = w.await
            && !e.is_cancelled()
        {
            return Err(format!("aggregator task: {e}"));
        }
    }
    if std::env::var_os("TALLY_FAULT_TRACE").is_some() {
        eprintln!(
            "schedule: workers stopped {:?} after the drain",
            t_published.elapsed()
        );
    }
    // Quiet now. Reconcile compares every stored counter with the ledger, so an
    // application that landed after the drain check would show up as drift here.
    for org in orgs.iter().chain(s.poison.then_some(&poison_org)) {
        let drift = reconcile(h.store.as_ref(), org, month)
            .await
            .map_err(|e| format!("reconcile: {e}"))?;
        if !drift.is_empty() {
            return Err(format!("reconcile found drift for {org:?}: {drift:?}"));
        }
    }
    if s.poison {
        let stored = h
            .store
            .stored_counters(&poison_org, month)
            .await
            .map_err(|e| e.to_string())?;
        if !stored.is_empty() {
            return Err(format!("the poison event was counted: {stored:?}"));
        }
        let dead = queue.dead_lettered.lock().unwrap();
        if !dead.iter().any(|(o, _)| *o == poison_org) {
            return Err("the poison event was not dead-lettered".into());
        }
    }
    if std::env::var_os("TALLY_FAULT_TRACE").is_some() {
        eprintln!(
            "schedule: checks done {:?} after the drain",
            t_published.elapsed()
        );
    }
    let injected = faults.injected.lock().unwrap().clone();
    let dead_lettered = queue.dead_lettered.lock().unwrap().len();
    Ok(RunReport {
        injected,
        dead_lettered,
    })
}

/// `None` if every stored counter of `orgs` in `month` equals the truth (and no other
/// counter is non-zero), else a description of the first differences.
async fn compare(
    store: &dyn UsageStore,
    orgs: &[OrgId],
    month: Month,
    truth: &HashMap<OwnedCounterKey, Decimal>,
) -> Result<Option<String>, String> {
    let mut stored: HashMap<OwnedCounterKey, Decimal> = HashMap::new();
    for org in orgs {
        for (k, v) in store
            .stored_counters(org, month)
            .await
            .map_err(|e| format!("stored_counters: {e}"))?
        {
            stored.insert(k, v);
        }
    }
    let mut diffs = Vec::new();
    for (k, want) in truth {
        let have = stored.remove(k);
        if have != Some(*want) {
            diffs.push(format!("{k:?}: want {want}, have {have:?}"));
        }
    }
    for (k, v) in stored {
        if !v.is_zero() {
            diffs.push(format!("{k:?}: want nothing, have {v}"));
        }
    }
    Ok((!diffs.is_empty()).then(|| {
        diffs.truncate(5);
        diffs.join("; ")
    }))
}

/// Runs `cases` random schedules on a harness with proptest (few shrink steps: a failing
/// schedule is printed whole), each on fresh orgs, and prints a summary.
pub fn run_property(
    rt: &tokio::runtime::Runtime,
    harness: &Harness,
    cases: u32,
    events: std::ops::Range<usize>,
    label: &str,
) {
    // `TALLY_FAULT_CASES` overrides the count (e.g. more for a soak, fewer while debugging).
    let cases = std::env::var("TALLY_FAULT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    let started = std::time::Instant::now();
    let totals: Mutex<HashMap<&'static str, usize>> = Mutex::new(HashMap::new());
    let dead = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases,
        max_shrink_iters: 8,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    });
    let result = runner.run(&schedules(events), |s| {
        match rt.block_on(run_schedule(harness, &s)) {
            Ok(r) => {
                let mut t = totals.lock().unwrap();
                for (k, v) in r.injected {
                    *t.entry(k).or_default() += v;
                }
                dead.fetch_add(r.dead_lettered, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(TestCaseError::fail(e)),
        }
    });
    let mut t: Vec<_> = totals.into_inner().unwrap().into_iter().collect();
    t.sort();
    println!(
        "{label}: {cases} schedules in {:.1?}; faults injected: {t:?}; poison records dead-lettered: {}",
        started.elapsed(),
        dead.load(std::sync::atomic::Ordering::Relaxed)
    );
    if let Err(e) = result {
        panic!("{label}: {e}");
    }
}
