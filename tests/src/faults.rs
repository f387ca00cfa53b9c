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
//!   (what a visibility timeout shorter than a batch does), possibly into the very batch
//!   that already holds it. Independently, when the real queue has nothing visible,
//!   deliveries not acknowledged within [`Harness::reoffer_after`] are handed out again (a
//!   fast simulated visibility timeout; the real queue's own timeout also applies). Once
//!   the real queue acknowledged a message under any of its receipts, the decorator hands
//!   out none of them again, as the queue would not: a record acknowledged too early must
//!   show up as a short counter, not be papered over by a redelivery no queue would make.
//! - Client resends: some events are published again, in later publishes, exactly as
//!   before, while the aggregators run.
//! - Poison: with a schedule's `poison` flag, one `unique_count` event without the property
//!   its meter counts is published for an org of its own (it decodes, but fails validation
//!   after the fact); it must be dead-lettered with the reason and counted nowhere.
//!
//! [`run_property`] draws the schedules from a seed it prints and runs several at once, each
//! on a queue of its own (the store is shared, or fresh per schedule), so the waiting one
//! schedule does overlaps the work of the others. A failure names the schedule and how to
//! replay it (`TALLY_FAULT_SEED`, `TALLY_FAULT_ONLY`).

// Test support code: a failed unwrap here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;
use tally_aggregator::{AggregatorConfig, process_batch, reconcile};
use tally_core::counter::OwnedCounterKey;
use tally_core::event::{Event, Quantity};
use tally_core::ids::{EventId, MeterName, OrgId};
use tally_core::meter::Aggregation;
use tally_core::period::Month;
use tally_core::ports::{
    ApplyOutcome, ApplyReport, Delivery, EventQueue, PublishReport, QueueError, StoreError,
    UsageStore,
};
use tally_store::hooked::{BatchHook, Hooked};
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

prop_compose! {
    /// Random schedules: `events` distinct events (plus up to half as many resends), 2–3
    /// aggregators, up to 12 faults of each kind.
    pub fn schedules(events: std::ops::Range<usize>)(
        events in events,
        resend_pct in 0usize..=50,
        publishes in 1usize..=4,
        aggregators in 2usize..=3,
        batch in 3usize..=16,
        store in proptest::collection::vec(store_fault(), 0..12),
        acks in proptest::collection::vec(queue_fault(), 0..12),
        receives in proptest::collection::vec(receive_fault(), 0..12),
        poison in proptest::bool::weighted(0.25),
        seed in any::<u64>(),
    ) -> Schedule {
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
    }
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
pub type FaultyStore = Hooked<FaultyBatches>;

/// The hook of a [`FaultyStore`]: applies a batch, or part of one, or none, as the next
/// store fault of the schedule says.
pub struct FaultyBatches {
    faults: Arc<Faults>,
}

/// Wraps a real store in a [`FaultyStore`].
pub fn faulty_store(inner: Arc<dyn UsageStore>, faults: Arc<Faults>) -> FaultyStore {
    Hooked::new(inner, FaultyBatches { faults })
}

fn cut(len: usize, pct: u8) -> usize {
    (len * usize::from(pct) / 100).clamp(1, len.saturating_sub(1).max(1))
}

#[async_trait]
impl BatchHook for FaultyBatches {
    async fn apply_batch(
        &self,
        store: &dyn UsageStore,
        events: &[Event],
    ) -> Result<ApplyReport, StoreError> {
        let fault = self
            .faults
            .store
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(StoreFault::Pass);
        let injected = |what| StoreError::Unavailable(format!("injected fault: {what}"));
        match fault {
            StoreFault::Pass => store.apply_batch(events).await,
            StoreFault::FailBefore => {
                self.faults.note("store: fail before the ledger write");
                Err(injected("before the ledger write"))
            }
            StoreFault::PrefixThenErr(pct) => {
                self.faults.note("store: crash between chunks");
                let k = cut(events.len(), pct);
                store.apply_batch(&events[..k]).await?;
                Err(injected("crash between transaction chunks"))
            }
            StoreFault::PrefixThenFailed(pct) => {
                self.faults.note("store: failed chunk");
                let k = cut(events.len(), pct);
                let mut report = store.apply_batch(&events[..k]).await?;
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
                store.apply_batch(events).await?;
                Err(injected("crash after apply"))
            }
        }
    }
}

/// A delivery handed out and not acknowledged yet.
struct Outstanding {
    delivery: Delivery,
    handed_out: Instant,
    /// Which queue message it is (see [`message_key`]).
    message: u64,
}

/// Identifies the queue message a delivery came from, by its events: a redelivery has a
/// new receipt (an SQS receipt handle is opaque) but the same events, while two different
/// messages with the same events in the same order are as good as impossible in a
/// workload. Used to forget every receipt of a message once one of them is acknowledged,
/// as the queue does; were two messages ever to collide, forgetting the other one early is
/// harmless: the real queue still holds it and redelivers it.
fn message_key(d: &Delivery) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for e in &d.events {
        e.org_id.hash(&mut h);
        e.id.hash(&mut h);
    }
    d.events.len().hash(&mut h);
    h.finish()
}

/// An [`EventQueue`] that skips or breaks acknowledgements and redelivers as the schedule
/// says, delegating to the real queue.
pub struct FaultyQueue {
    inner: Arc<dyn EventQueue>,
    faults: Arc<Faults>,
    /// By receipt.
    outstanding: Mutex<HashMap<String, Outstanding>>,
    /// The message of every receipt handed out (an acknowledged receipt may already be
    /// gone from `outstanding`).
    messages: Mutex<HashMap<String, u64>>,
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
            messages: Mutex::new(HashMap::new()),
            reoffer_after,
            dead_lettered: Mutex::new(Vec::new()),
        }
    }

    /// The queue deleted the messages of `receipts`: none of their deliveries (under any
    /// receipt) comes back. Keeping a redelivery's older receipt outstanding would hand the
    /// events out again although the real queue no longer has them, and so hide a record
    /// acknowledged before its events were all applied.
    fn settle(&self, receipts: &[String]) {
        let gone: HashSet<u64> = {
            let messages = self.messages.lock().unwrap();
            receipts
                .iter()
                .filter_map(|r| messages.get(r).copied())
                .collect()
        };
        self.outstanding
            .lock()
            .unwrap()
            .retain(|r, o| !receipts.contains(r) && !gone.contains(&o.message));
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
        let mut messages = self.messages.lock().unwrap();
        let mut out = self.outstanding.lock().unwrap();
        for d in &got {
            let message = message_key(d);
            messages.insert(d.receipt.clone(), message);
            out.insert(
                d.receipt.clone(),
                Outstanding {
                    delivery: d.clone(),
                    handed_out: now,
                    message,
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
    /// The real store, shared by every schedule (each uses fresh org ids).
    pub store: Arc<dyn UsageStore>,
    /// If set, each schedule gets a fresh store from it instead of `store` (the emulator
    /// slows down as one table grows: a transaction snapshots the whole table).
    pub new_store: Option<StoreMaker>,
    /// The real queues, all empty: as many schedules run at once as there are queues, each
    /// on a queue of its own (which all its aggregators share, as they share one queue in
    /// production). A schedule leaves its queue empty for the next one.
    pub queues: Vec<Arc<dyn EventQueue>>,
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
    crate::oracle::plain_counters(events).into_iter().collect()
}

/// The aggregator tasks of a running schedule; dropping it aborts them.
struct Workers(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &self.0 {
            w.abort();
        }
    }
}

/// What one schedule did, for the test's summary.
#[derive(Debug, Default)]
pub struct RunReport {
    /// Faults met, by kind.
    pub injected: HashMap<&'static str, usize>,
    /// Poison records dead-lettered.
    pub dead_lettered: usize,
}

/// Runs one schedule on `real_queue` (empty, and left empty when the schedule passes):
/// publishes (with resends, and a poison event if asked) while `s.aggregators` aggregators
/// drain the queue through the faulty decorators, waits until everything is acknowledged,
/// then checks every counter of every org against the ground truth and runs reconcile.
/// Returns an error describing the first mismatch; the aggregators are stopped either way.
pub async fn run_schedule(
    h: &Harness,
    real_queue: Arc<dyn EventQueue>,
    s: &Schedule,
) -> Result<RunReport, String> {
    let t_start = Instant::now();
    let real_store = match &h.new_store {
        Some(make) => make().await,
        None => h.store.clone(),
    };
    let faults = Arc::new(Faults::new(s));
    let store: Arc<dyn UsageStore> = Arc::new(faulty_store(real_store.clone(), faults.clone()));
    let queue = Arc::new(FaultyQueue::new(
        real_queue.clone(),
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
    // Aborted on every way out of this function: a schedule that fails must not leave
    // aggregators taking the next schedule's messages off its queue.
    let mut workers = Workers(Vec::new());
    for _ in 0..s.aggregators {
        let (queue, store, stop) = (queue.clone(), store.clone(), stop.clone());
        workers.0.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if process_batch(queue.as_ref(), store.as_ref(), None, &cfg, cfg.idle_poll)
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
        let report = real_queue
            .publish(chunk)
            .await
            .map_err(|e| format!("publish: {e}"))?;
        if !report.failed.is_empty() {
            return Err(format!("publish refused events: {:?}", report.failed));
        }
        tokio::time::sleep(Duration::from_millis(rng.below(10))).await;
    }
    if let Some(p) = &poison {
        real_queue
            .publish(std::slice::from_ref(p))
            .await
            .map_err(|e| format!("publish poison: {e}"))?;
    }

    let t_published = Instant::now();
    // Drain: until nothing is outstanding in the decorator, the poison record (if any) was
    // dead-lettered, the real queue is empty (where its depth is cheap and exact) and every
    // counter matches. The cheap conditions are checked first: reading every counter
    // competes with the aggregators for a single-threaded emulator.
    let truth = ground_truth(&events);
    let month = Month::parse(MONTH).unwrap();
    let deadline = Instant::now() + h.drain_timeout;
    let mut last_diff = None;
    // Since when the queue has been drained while the counters differ.
    let mut short_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(h.check_every).await;
        let poison_done = !s.poison || !queue.dead_lettered.lock().unwrap().is_empty();
        let mut drained = queue.outstanding() == 0 && poison_done;
        if drained && h.use_depth {
            drained = real_queue.depth().await.map_err(|e| e.to_string())? == 0;
        }
        if drained {
            last_diff = compare(real_store.as_ref(), &orgs, month, &truth).await?;
            if last_diff.is_none() {
                break;
            }
            // Nothing is left to deliver, so the counters cannot catch up any more (an
            // aggregator acknowledges only after its apply returned); give a straggler
            // a moment, then say so rather than wait for the deadline.
            let since = *short_since.get_or_insert_with(Instant::now);
            if h.use_depth && since.elapsed() >= Duration::from_secs(2) {
                return Err(format!(
                    "the queue is drained but counters differ: {}",
                    last_diff.unwrap_or_default()
                ));
            }
        } else {
            short_since = None;
        }
        if Instant::now() >= deadline {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if last_diff.is_none() {
                last_diff = compare(real_store.as_ref(), &orgs, month, &truth).await?;
            }
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
    for w in &workers.0 {
        w.abort();
    }
    for w in std::mem::take(&mut workers.0) {
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
        let drift = reconcile(real_store.as_ref(), org, month, month.start())
            .await
            .map_err(|e| format!("reconcile: {e}"))?;
        if !drift.is_empty() {
            return Err(format!("reconcile found drift for {org:?}: {drift:?}"));
        }
    }
    if s.poison {
        let stored = real_store
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
    Ok(crate::oracle::counter_differences(stored, truth, 5))
}

/// The schedules of a run: schedule `i` of base seed `seed` is drawn from [`schedules`]
/// with a proptest RNG seeded by `(seed, i)` alone, so any one of them can be drawn again
/// (and replayed) without the others.
pub fn draw_schedules(seed: u64, cases: u32, events: std::ops::Range<usize>) -> Vec<Schedule> {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
    let strategy = schedules(events);
    (0..u64::from(cases))
        .map(|i| {
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&seed.to_le_bytes());
            bytes[8..16].copy_from_slice(&i.to_le_bytes());
            let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
            let mut runner =
                TestRunner::new_with_rng(proptest::test_runner::Config::default(), rng);
            strategy.new_tree(&mut runner).unwrap().current()
        })
        .collect()
}

/// Runs `cases` random schedules ([`draw_schedules`]) on a harness, as many at once as it
/// has queues, each on fresh orgs, and prints a summary. Panics on the first failing
/// schedule with its index, the run's seed, the schedule and what went wrong; no
/// shrinking (a schedule is small, and timing makes it only roughly replayable anyway).
///
/// Environment: `TALLY_FAULT_CASES` overrides the count (more for a soak, fewer while
/// debugging); `TALLY_FAULT_SEED` fixes the base seed (random otherwise, and printed);
/// `TALLY_FAULT_ONLY=i` runs only schedule `i` of that seed (a replay).
pub fn run_property(
    rt: &tokio::runtime::Runtime,
    harness: Harness,
    cases: u32,
    events: std::ops::Range<usize>,
    label: &str,
) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let cases = env("TALLY_FAULT_CASES").map_or(cases, |c| u32::try_from(c).unwrap());
    let seed = env("TALLY_FAULT_SEED").unwrap_or_else(rand::random);
    let mut list: Vec<(usize, Schedule)> = draw_schedules(seed, cases, events)
        .into_iter()
        .enumerate()
        .collect();
    if let Some(only) = env("TALLY_FAULT_ONLY") {
        list.retain(|(i, _)| *i as u64 == only);
    }
    assert!(!harness.queues.is_empty(), "a harness needs a queue");
    println!(
        "{label}: {} schedules (TALLY_FAULT_SEED={seed}), {} at once",
        list.len(),
        harness.queues.len()
    );
    let started = std::time::Instant::now();
    let harness = Arc::new(harness);
    let list = Arc::new(list);
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let totals: Arc<Mutex<HashMap<&'static str, usize>>> = Arc::default();
    let dead = Arc::new(AtomicUsize::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let slowest = Arc::new(Mutex::new((Duration::ZERO, 0usize)));
    rt.block_on(async {
        let mut slots = Vec::new();
        for queue in harness.queues.clone() {
            let (h, list, next, failed) =
                (harness.clone(), list.clone(), next.clone(), failed.clone());
            let (totals, dead, failures, slowest) = (
                totals.clone(),
                dead.clone(),
                failures.clone(),
                slowest.clone(),
            );
            slots.push(tokio::spawn(async move {
                while !failed.load(Ordering::Relaxed) {
                    let Some((i, s)) = list.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    let t = Instant::now();
                    match run_schedule(&h, queue.clone(), s).await {
                        Ok(r) => {
                            let mut t = totals.lock().unwrap();
                            for (k, v) in r.injected {
                                *t.entry(k).or_default() += v;
                            }
                            dead.fetch_add(r.dead_lettered, Ordering::Relaxed);
                        }
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            failures.lock().unwrap().push(format!(
                                "schedule {i} failed (replay: TALLY_FAULT_SEED={seed} \
                                 TALLY_FAULT_ONLY={i}): {e}\n{s:#?}"
                            ));
                        }
                    }
                    let took = t.elapsed();
                    let mut slow = slowest.lock().unwrap();
                    if took > slow.0 {
                        *slow = (took, *i);
                    }
                }
            }));
        }
        for slot in slots {
            slot.await.unwrap();
        }
    });
    let mut t: Vec<_> = totals.lock().unwrap().clone().into_iter().collect();
    t.sort();
    let slowest = *slowest.lock().unwrap();
    println!(
        "{label}: {} schedules in {:.1?} (slowest: schedule {} in {:.1?}); faults injected: {t:?}; \
         poison records dead-lettered: {}",
        list.len(),
        started.elapsed(),
        slowest.1,
        slowest.0,
        dead.load(Ordering::Relaxed)
    );
    let failures = failures.lock().unwrap();
    if !failures.is_empty() {
        panic!("{label}: {}", failures.join("\n\n"));
    }
}
