//! Tally's aggregator: takes batches of events off the queue and applies them exactly once.
//!
//! The loop is deliberately thin: collect up to [`AggregatorConfig::max_events`] events or
//! wait at most [`AggregatorConfig::max_wait`] after the first one, hand the whole batch to
//! [`UsageStore::apply_batch`] (which dedupes against the ledger and applies the counters of
//! exactly the events the ledger accepted), then acknowledge only the messages whose every event was settled and
//! move poison messages to the queue's dead-letter store with the reason
//! ([`EventQueue::dead_letter`]; the metric `tally_aggregator_poison_records_total` counts
//! them). A crash anywhere in between leaves messages unacknowledged; they come back after the
//! queue's visibility timeout and the ledger turns the second application into a no-op. That
//! is the whole exactly-once argument, and it does not depend on the queue delivering once.
//!
//! The judging and applying itself is a library, [`record::apply_records`]: a batch of
//! queue records in, one [`RecordOutcome`] (applied, duplicate, retry, poison) per record
//! out, so the polling worker here and the Lambda consumers (`tally_lambda::consumers`, which
//! own the Lambda event plumbing) share it. The Lambda consumers, which must answer before
//! their invocation's deadline, call [`record::apply_records_until`]: groups of whole records
//! of at most [`GROUP_EVENTS`] events, none started once less than the margin is left.
//!
//! [`reconcile`] recomputes counters from the ledger through the same ports, so it checks
//! every backend the same way.
//!
//! # Throughput: the loop is pipelined, and deep queues get bigger batches
//!
//! Issue 21's release run (`bench/RESULTS.md`, workload W, 2 M events in 100-event
//! requests) showed the loop, not the store, as the wall: HTTP ingest put the 2 M events on
//! the local queue in 7.9 s (253 k/s) while the counters became exact only at 24.7 s
//! (81 k/s), and `apply_batch` alone ran at ~217 k/s. The loop was serial: take (one queue
//! transaction), decode (JSON), apply (one store transaction), acknowledge (another queue
//! transaction), each waiting for the last, so on two cores one of them idled. Now:
//!
//! - [`run`] takes batch N+1 while batch N is applied (`pipelined_step`): the queue and the
//!   store are separate SQLite files with separate locks, so the two transactions and the
//!   decoding overlap. Applies stay strictly one after another, so the exactly-once argument
//!   above is unchanged; the batch taken ahead is kept hidden by the current batch's
//!   heartbeat and is settled by the drain at shutdown.
//! - A receive that came back full means a backlog: [`AggregatorConfig::deep_events`]
//!   (`tally serve --deep-batch-events`, 5,000 by default) tops the batch up with receives
//!   that do not wait, so a backlog drains in fewer store transactions (5,000-event batches
//!   took workload W from ~38 k to ~52 k events/s end to end on the single keyed ledger,
//!   the figure `--batch-events` cites), while a
//!   shallow queue keeps `max_events` and its latency.
//! - The local queue hides a taken message by overwriting one page instead of rewriting its
//!   ~20 KiB body (`store/src/local_queue.rs`: 11 WAL frames per take of a 40 KiB message
//!   before, 1-3 after).
//!
//! Measured on release builds (`bench/RESULTS.md`, "Issue 21 on release builds, base against
//! new alternating"): the same 2 M events now exact at 22.4 s (89 k/s, 1.19× the raw keyed
//! ceiling of that run), 76.7 k/s with deep batches off. The drain is still the wall (ingest
//! took them in 9.6 s); its profile puts JSON decoding of queue bodies, allocation and
//! re-encoding ledger bodies next in line after the store transaction itself.
//!
//! The fault-injection harness in `tests/src/faults.rs` checks all of this under random
//! fault schedules (failed and partial applies, skipped and partial acknowledgements,
//! redeliveries, client resends, several aggregators at once) on SQLite + local queue,
//! DynamoDB + SQS and DynamoDB + Kinesis.
//!
//! # What exactly-once costs on DynamoDB, and why it is cheap
//!
//! The naive meter does one `UpdateItem ADD` per event for each of six counters (org and
//! project × hour, day, month): 6 write units per event, and a retry double-counts. Tally
//! must spend at most half that with the ledger included. Three choices get it there (the
//! protocol itself is in the DynamoDB store's module doc, `store/src/dynamodb.rs`):
//!
//! - **What is written per event.** One ledger record, claimed with a plain conditional
//!   `PutItem` (1 unit), not inside a transaction (2 units). Exactly-once for the counters
//!   then comes from a per-batch *intent* (the batch's counter writes, one item) applied in
//!   transactions guarded by per-chunk markers, so a crash anywhere is finished by whoever
//!   meets the batch next and nothing is applied twice. `max` and `latest` are idempotent,
//!   so they stay out of the transactions: a plain conditional write each (1 unit), and
//!   none at all for a value the process already knows cannot beat the stored one.
//! - **What is derived at read time.** Only one counter item per (project, meter, day) is
//!   written, with an attribute per hour. Day and month totals, and org-wide totals across
//!   projects, are sums (or max / latest) of those attributes, computed when a dashboard or
//!   the billing worker reads them: one write where the naive meter does six. Reads stay
//!   cheap because a month of one project's meter is 31 small items.
//! - **How much a batch collapses.** All events of a batch that fall in the same
//!   (project, meter, day) become one `ADD` of one item, whatever their hours. On a Zipf
//!   workload the busy orgs collapse hard; the long tail does not, and costs ledger (1) +
//!   cell (2, transactional) + its share of the intent (under 0.01: intents are deflated).
//!
//! Measured on workload W: 1.97 write units per event against the baseline's 6; 2.08 since
//! two additions below, each paid for on purpose.
//!
//! - **The counter limit.** A month total of a `sum`/`count` meter never passes 10^19
//!   (`tally_core::headroom`): the store reserves room in a guard item per (org, month),
//!   one number per meter, before it counts, mostly from an allowance kept in the process,
//!   so an honest tenant costs about one guard write per (org, month) per aggregator
//!   process. On the 20,000-event run (one process, one hour, 21 events per org: the worst
//!   case) the earlier item per (org, meter, month) cost 0.095 units per event (0.180 with
//!   four aggregators); one item per org wrote 31 % fewer reservations on issue 16's runs
//!   (639 against 921 on 3,000 events with four aggregators: −0.094 units per event), for
//!   one strongly consistent read per (org, meter, month) that carries an older table's
//!   per-meter reservations over. Over a month the guard falls to about 0.01.
//! - **The batch size.** A batch's events share its day-cell updates, chunk markers and
//!   intent, so bigger batches cost less: with four aggregators and 1 % injected conflicts,
//!   1,000-record batches cost 2.30 units per event against 2.76 for 100 (four meters,
//!   3,000 events), 5.84 against 6.95 with a `latest` and a `unique_count` meter added. The template's
//!   `AggregatorBatchSize` is 1,000 since issue 16 (100 before), at the cost of up to its
//!   1 s batching window plus one batch's apply time of counter lag.
//!
//! # Hot tenants
//!
//! Real DynamoDB cancels a transaction that touches an item another transaction is
//! writing (`TransactionConflict`); moto never does. Under a Zipf load the items every
//! concurrent batch writes are the top orgs' day cells.
//!
//! **Since issue 16 the counters are written in no transaction at all (the default):**
//! writer slots number each store's batches, and each day-cell and unique-counter `ADD` is
//! one plain conditional `UpdateItem` that also raises the cell's high-water mark for its
//! slot, so a batch's op lands at most once however often it is sent, and a hot org's cells
//! conflict with nothing (`docs/dynamodb-writer-slots.md`, the exactly-once argument and its
//! crash schedules). Chosen over write-sharding hot cells (reads would sum the shards, and
//! the transactions would stay) and per-org transactions (the conflicts would stay, only
//! smaller) because it removes both the conflicts and the 2-unit transactional price:
//! 1.771 units per event on workload W against 2.295 for the chunked format below (four
//! meters, batch 1,000, four aggregators, 1 % injected conflicts; 3.144 against 4.169 with a
//! `latest` and a `unique_count` meter added). The whole matrix in this format (batch
//! 1,000; 1, 4 and 8 aggregators; 1 % and 5 % injected conflicts; 3,000 events a cell,
//! `bench/RESULTS.md`, 2026-12-06 14:42): 1.684 units per event with one aggregator and
//! 1.771–1.772 with four or eight on the four-meter W, 3.012–3.013 and 3.143–3.147 on the
//! six-meter W (one cell measured 3.533 once and 3.144 when run again: most likely an
//! injected conflict on a `DONE` put, then sent once, had a batch finished twice; that put
//! is retried now), against 6.000 for the naive baseline; no transaction sent or cancelled,
//! retries per event tracking the injected rate (0.015 at 1 %, 0.085 at 5 %, four meters),
//! nothing redelivered or dead-lettered, counters exact in every cell. At 20,000 events
//! (the same settings, 2026-12-06 17:38) the cells amortize further: 1.658 units per event
//! on the four-meter W (0.99 of it the ledger's one conditional put per record) and 2.970
//! on the six-meter W (0.76 of it `unique_count` markers). Slots are leases,
//! so the aggregator looks after them: a slot whose acquisition answer was lost is adopted
//! on the retry, a running batch renews its slot's lease each time half of it is gone, and
//! [`run`] releases the store's idle slots when it stops
//! ([`UsageStore::release_writers`]), so another process takes them at once. The chunked
//! format stays for tables still written by an older release
//! (`TALLY_DYNAMODB_WRITER_SLOTS=0`), and is what the three choices below were built for:
//!
//! - **Hot orgs in transactions of their own.** An org with 8 or more counter ops in a
//!   batch's intent gets chunks of its own (`Packing::HotApart` in the DynamoDB store), so a
//!   conflict on its cells cancels only its own actions; before, one conflict cancelled,
//!   billed and delayed the up to 90 cells of the Zipf tail packed with them. About 9 orgs
//!   per 1,000-event batch qualify on workload W, each one chunk marker (2 units): +0.0175
//!   units per event (`bench/RESULTS.md`). `FaultProxy::contend` in `tests/` plants the
//!   conflicts and shows the tail is never cancelled with the hot org.
//! - **Conflicts retried, and never fatal to the events.** A cancelled chunk is retried with
//!   jittered backoff (8 attempts). `unique_count` markers are not in the transactions at
//!   all (`store/src/dynamodb/markers.rs`): each is a plain conditional put owned by its
//!   batch, so a value counted before fails alone and cancels nothing. A chunk that still
//!   fails leaves its intent written: the redelivery finds the intent and finishes it, so an
//!   event reaches the dead-letter queue only if five deliveries in a row fail to finish
//!   one transaction of a dozen cells.
//! - **Bounded concurrency.** The template caps the aggregator's concurrency
//!   (`AggregatorMaxConcurrency`, `KinesisParallelizationFactor`) and alarms on
//!   `tally_dynamodb_transactions_cancelled_total{reason="TransactionConflict"}`.
//!
//! Measured with the fault proxy injecting conflicts at 1 % and 5 % of writes (issue 16,
//! `bench/RESULTS.md`): retries per event track the injected rate (0.011 at 1 %, 0.07 at
//! 5 %), no record was redelivered or dead-lettered, and counters stayed exact; injected
//! conflicts cancelled 1–3 transactions per run. Before the markers left the
//! transactions, most cancelled transactions were the store's own: a `unique_count` value
//! seen before cancelled its chunk (258 marker actions in 29 cancelled transactions on
//! 3,000 events), and with markers at 2 units each the six-meter workload cost 5.84 units
//! per event. With markers as plain puts owned by their batch: 4.17 units per event, one
//! cancelled transaction (the injected conflict), counters exact (batch 1,000, four
//! aggregators, 1 % conflicts). The transactional `ADD`s (1.90 units per event with six
//! meters, 0.93 with four) are what the slotted format above halves: #16's target (≤ 2.0 at
//! the default batch size, four aggregators, 1 % conflicts) is met on the four-meter W
//! (1.771), not with the `unique_count` meter added (3.144: its markers and its six counters
//! per new value).
//!
//! `bench/src/bin/write_cost.rs` measures the mix on workload W against the emulator beside
//! the naive baseline; `bench/RESULTS.md` has the figures.

#[cfg(test)]
mod apply_only;
pub mod conflicts;
#[cfg(test)]
mod pipeline_tests;
pub mod reconcile;
pub mod record;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_core::ports::{AuditLog, Delivery, EventQueue, StoreError, UsageStore};
use tokio::sync::watch;
use tracing::{Instrument, info, warn};

pub use reconcile::{Drift, ReconcileError, reconcile};
pub use record::{
    DEFAULT_DEADLINE_MARGIN, Deadline, GROUP_EVENTS, RecordInput, RecordOutcome, SetAside,
    apply_records, apply_records_until, check_record, decode_envelope, group_records, split_record,
};

/// Batching knobs.
#[derive(Debug, Clone, Copy)]
pub struct AggregatorConfig {
    /// Most events applied in one batch while the queue is shallow.
    pub max_events: usize,
    /// Most events applied in one batch while the queue is deep: a receive that came back
    /// with `max_events` events is followed by more receives that do not wait, up to this
    /// many (never fewer than `max_events`). One batch shares one store transaction, so a
    /// backlog is drained in fewer, fuller commits; a shallow queue keeps `max_events`.
    pub deep_events: usize,
    /// Longest a batch waits to fill once its first event arrived.
    pub max_wait: Duration,
    /// How long one idle receive waits before checking for shutdown.
    pub idle_poll: Duration,
    /// Pause after a failed apply before trying again (the messages stay on the queue).
    pub error_backoff: Duration,
    /// While a batch is being applied, how often to ask the queue to keep its messages
    /// hidden, so a slow batch (a throttled table, a big backlog) is not handed to a second
    /// aggregator mid-apply. Redelivery would stay exact (the ledger dedupes) but doubles the
    /// work.
    pub heartbeat: Duration,
    /// How much more hidden time each heartbeat asks for.
    pub visibility_extension: Duration,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            max_events: 1_000,
            deep_events: 1_000,
            max_wait: Duration::from_millis(200),
            idle_poll: Duration::from_millis(500),
            error_backoff: Duration::from_millis(500),
            heartbeat: Duration::from_secs(10),
            visibility_extension: Duration::from_secs(30),
        }
    }
}

/// What one batch did, counted in queue records (messages).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Records taken off the queue.
    pub messages: usize,
    /// Events in them.
    pub events: usize,
    /// Records with at least one newly counted event.
    pub applied: usize,
    /// Records whose every event had been counted before.
    pub duplicates: usize,
    /// Records left on the queue to come back (not fully applied).
    pub retried: usize,
    /// Poison records moved to the dead-letter store.
    pub poisoned: usize,
    /// Events set aside from records whose other events were applied (those records are
    /// counted in `applied`, and removed from the queue with their bad part).
    pub set_aside: usize,
    /// Records acknowledged (applied or duplicate).
    pub acked: usize,
}

/// Why a batch could not be processed; the messages stay on the queue for a retry.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    /// Receiving or acknowledging failed.
    #[error(transparent)]
    Queue(#[from] tally_core::ports::QueueError),
    /// Applying failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Collects one batch (up to `max_events`, or whatever arrived within `max_wait` of the
/// first message; an idle queue returns an empty batch after `first_wait`). When the first
/// receive came back full the queue is deep: receives that do not wait top the batch up to
/// `deep_events`, and stop at the first that comes back empty.
async fn collect(
    queue: &dyn EventQueue,
    cfg: &AggregatorConfig,
    first_wait: Duration,
) -> Result<Vec<Delivery>, AggregateError> {
    let mut deliveries = queue.receive(cfg.max_events, first_wait).await?;
    if deliveries.is_empty() {
        return Ok(deliveries);
    }
    let deadline = Instant::now() + cfg.max_wait;
    let mut events: usize = deliveries.iter().map(|d| d.events.len()).sum();
    let deep = cfg.deep_events.max(cfg.max_events);
    let full = events >= cfg.max_events;
    while full && events < deep {
        let more = queue.receive(deep - events, Duration::ZERO).await?;
        if more.is_empty() {
            break;
        }
        events += more.iter().map(|d| d.events.len()).sum::<usize>();
        deliveries.extend(more);
    }
    while events < cfg.max_events {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let more = queue.receive(cfg.max_events - events, left).await?;
        events += more.iter().map(|d| d.events.len()).sum::<usize>();
        deliveries.extend(more);
    }
    Ok(deliveries)
}

/// Collects one batch ([`collect`]) and drops a delivery handed out twice in it.
async fn take_batch(
    queue: &dyn EventQueue,
    cfg: &AggregatorConfig,
    first_wait: Duration,
) -> Result<Vec<Delivery>, AggregateError> {
    let mut deliveries = collect(queue, cfg, first_wait).await?;
    // A queue may hand one delivery out twice while a batch is collected (its visibility
    // ran out in between); judged twice it would be acknowledged or dead-lettered twice.
    let mut receipts_seen = std::collections::HashSet::new();
    deliveries.retain(|d| receipts_seen.insert(d.receipt.clone()));
    Ok(deliveries)
}

/// Receives one batch, applies it through [`apply_records`], acknowledges the settled
/// records, dead-letters the poison ones and leaves the rest for redelivery.
///
/// A poison record whose dead-lettering fails stays on the queue (it comes back and is
/// judged again): never acknowledged without being set aside. An `Err` means receiving or
/// acknowledging failed; whatever was not acknowledged comes back.
///
/// `audit`, when given, receives a record per event id resent with other contents (see
/// [`conflicts`]).
pub async fn process_batch(
    queue: &dyn EventQueue,
    usage: &dyn UsageStore,
    audit: Option<&dyn AuditLog>,
    cfg: &AggregatorConfig,
    first_wait: Duration,
) -> Result<BatchStats, AggregateError> {
    let deliveries = take_batch(queue, cfg, first_wait).await?;
    settle_batch(queue, usage, audit, cfg, deliveries, &Held::default()).await
}

/// Receipts taken off the queue ahead of the batch being settled ([`run`]'s prefetch):
/// the settling batch's heartbeat keeps them hidden too, so a slow apply does not let
/// them reach a second aggregator before their turn.
#[derive(Default)]
struct Held(std::sync::Mutex<Vec<String>>);

impl Held {
    fn set(&self, receipts: Vec<String>) {
        if let Ok(mut held) = self.0.lock() {
            *held = receipts;
        }
    }

    fn get(&self) -> Vec<String> {
        self.0.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

/// Applies a collected batch through [`apply_records`], acknowledges the settled records,
/// dead-letters the poison ones and leaves the rest for redelivery (see [`process_batch`]).
/// While it applies, a heartbeat keeps the batch's messages hidden, and `ahead`'s.
async fn settle_batch(
    queue: &dyn EventQueue,
    usage: &dyn UsageStore,
    audit: Option<&dyn AuditLog>,
    cfg: &AggregatorConfig,
    deliveries: Vec<Delivery>,
    ahead: &Held,
) -> Result<BatchStats, AggregateError> {
    if deliveries.is_empty() {
        return Ok(BatchStats::default());
    }
    let events: usize = deliveries.iter().map(|d| d.events.len()).sum();
    let span = tracing::info_span!("process_batch", messages = deliveries.len(), events);
    async move {
        let inputs: Vec<RecordInput<'_>> = deliveries
            .iter()
            .map(|d| RecordInput::Decoded {
                events: &d.events,
                unreadable: &d.unreadable,
                org: None,
            })
            .collect();
        let outcomes = {
            let held: Vec<String> = deliveries.iter().map(|d| d.receipt.clone()).collect();
            let apply = apply_records(usage, audit, &inputs);
            tokio::pin!(apply);
            let start = tokio::time::Instant::now() + cfg.heartbeat;
            let mut beat = tokio::time::interval_at(start, cfg.heartbeat.max(Duration::from_millis(10)));
            loop {
                tokio::select! {
                    outcomes = &mut apply => break outcomes,
                    _ = beat.tick() => {
                        let mut held = held.clone();
                        held.extend(ahead.get());
                        if let Err(e) = queue.extend_visibility(&held, cfg.visibility_extension).await {
                            warn!(error = %e, "could not extend visibility of a slow batch; it may be redelivered, which the ledger keeps exact");
                        }
                    }
                }
            }
        };
        let mut stats = BatchStats {
            messages: deliveries.len(),
            events,
            ..BatchStats::default()
        };
        let mut receipts = Vec::with_capacity(deliveries.len());
        for (d, outcome) in deliveries.iter().zip(&outcomes) {
            match outcome {
                RecordOutcome::Applied => {
                    stats.applied += 1;
                    receipts.push(d.receipt.clone());
                }
                RecordOutcome::Duplicate => {
                    stats.duplicates += 1;
                    receipts.push(d.receipt.clone());
                }
                RecordOutcome::Retry { reason } => {
                    stats.retried += 1;
                    warn!(receipt = %d.receipt, %reason, "record not fully applied; leaving it for redelivery");
                }
                RecordOutcome::Poison { reason } => match queue.dead_letter(d, reason).await {
                    Ok(()) => stats.poisoned += 1,
                    Err(e) => {
                        metrics::counter!("tally_aggregator_dead_letter_failures_total")
                            .increment(1);
                        warn!(receipt = %d.receipt, %reason, error = %e, "could not dead-letter poison record; it stays queued");
                    }
                },
                RecordOutcome::SetAside(part) => {
                    // Dead-lettering the bad part removes the message, which is the
                    // acknowledgement of its good part (applied above).
                    let aside = Delivery {
                        receipt: d.receipt.clone(),
                        events: part.events.clone(),
                        unreadable: part.unreadable.clone(),
                        receive_count: d.receive_count,
                    };
                    match queue.dead_letter(&aside, &part.reason).await {
                        Ok(()) => {
                            stats.applied += 1;
                            stats.set_aside += part.len();
                        }
                        Err(e) => {
                            metrics::counter!("tally_aggregator_dead_letter_failures_total")
                                .increment(1);
                            stats.retried += 1;
                            warn!(receipt = %d.receipt, reason = %part.reason, error = %e, "could not dead-letter the bad events of a record; it stays queued and its good events are repeats next time");
                        }
                    }
                }
            }
        }
        queue.ack(&receipts).await?;
        stats.acked = receipts.len();
        Ok(stats)
    }
    .instrument(span)
    .await
}

/// One turn of [`run`]: settles `ahead` (or, with none, a batch collected now, the first
/// receive waiting up to `first_wait`) while the next batch is taken off the queue, and
/// returns the outcome with that next batch (`None` when the queue had nothing at once).
///
/// Taking (the queue's transaction and the decoding) overlaps the apply; applies stay one
/// after another, so a batch is still settled before the next one is applied, and a
/// message taken ahead that was also in the batch (a redelivery) is a duplicate the ledger
/// recognises. A failed prefetch takes nothing that is not handed out again.
async fn pipelined_step(
    queue: &dyn EventQueue,
    usage: &dyn UsageStore,
    audit: Option<&dyn AuditLog>,
    cfg: &AggregatorConfig,
    ahead: Option<Vec<Delivery>>,
    first_wait: Duration,
) -> (Result<BatchStats, AggregateError>, Option<Vec<Delivery>>) {
    let batch = match ahead {
        Some(batch) => batch,
        None => match take_batch(queue, cfg, first_wait).await {
            Ok(batch) => batch,
            Err(e) => return (Err(e), None),
        },
    };
    if batch.is_empty() {
        return (Ok(BatchStats::default()), None);
    }
    let held = Held::default();
    let next = async {
        match take_batch(queue, cfg, Duration::ZERO).await {
            Ok(next) => {
                held.set(next.iter().map(|d| d.receipt.clone()).collect());
                Some(next).filter(|n| !n.is_empty())
            }
            Err(e) => {
                warn!(error = %e, "could not take the next batch ahead; the next turn collects it");
                None
            }
        }
    };
    tokio::join!(settle_batch(queue, usage, audit, cfg, batch, &held), next)
}

/// Runs the aggregator until `shutdown` turns true, then drains what is left on the queue
/// (bounded by `drain_limit`), releases what the store holds for writing
/// ([`UsageStore::release_writers`]) and returns.
///
/// Each turn takes the next batch off the queue while the current one is applied
/// (`pipelined_step`); see the crate doc for the figures.
pub async fn run(
    queue: Arc<dyn EventQueue>,
    usage: Arc<dyn UsageStore>,
    audit: Option<Arc<dyn AuditLog>>,
    cfg: AggregatorConfig,
    mut shutdown: watch::Receiver<bool>,
    drain_limit: Duration,
) {
    let (queue, usage, audit) = (queue.as_ref(), usage.as_ref(), audit.as_deref());
    let mut ahead = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let step = pipelined_step(queue, usage, audit, &cfg, ahead.take(), cfg.idle_poll);
        tokio::select! {
            (res, next) = step => {
                ahead = next;
                if let Err(e) = res {
                    warn!(error = %e, "batch failed; messages stay queued");
                    tokio::time::sleep(cfg.error_backoff).await;
                }
            }
            _ = shutdown.changed() => {}
        }
    }
    let deadline = Instant::now() + drain_limit;
    let mut drained = 0usize;
    while Instant::now() < deadline {
        let first_wait = Duration::from_millis(50);
        let (res, next) = pipelined_step(queue, usage, audit, &cfg, ahead.take(), first_wait).await;
        ahead = next;
        match res {
            Ok(s) if s.messages == 0 && ahead.is_none() => break,
            Ok(s) => drained += s.events,
            Err(e) => {
                warn!(error = %e, "drain batch failed; messages stay queued for the next start");
                break;
            }
        }
    }
    // What the store holds for writing (DynamoDB's writer slots) is given back, so another
    // aggregator need not wait out its leases.
    if let Err(e) = usage.release_writers().await {
        warn!(error = %e, "could not release the store's writer slots; their leases run out");
    }
    info!(drained, "aggregator stopped");
}

#[cfg(test)]
mod heartbeat_tests {
    use super::*;
    use crate::apply_only::{Apply, ApplyOnly};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use tally_core::Event;
    use tally_core::ports::{ApplyOutcome, ApplyReport, PublishReport, QueueError};

    /// A queue holding one delivery that counts visibility extensions.
    struct OneShotQueue {
        pending: Mutex<Vec<Delivery>>,
        extensions: AtomicUsize,
        acked: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl EventQueue for OneShotQueue {
        async fn publish(&self, _: &[Event]) -> Result<PublishReport, QueueError> {
            Ok(PublishReport::default())
        }
        async fn receive(&self, _: usize, _: Duration) -> Result<Vec<Delivery>, QueueError> {
            Ok(std::mem::take(&mut *self.pending.lock().unwrap()))
        }
        async fn ack(&self, receipts: &[String]) -> Result<(), QueueError> {
            self.acked.lock().unwrap().extend_from_slice(receipts);
            Ok(())
        }
        async fn depth(&self) -> Result<u64, QueueError> {
            Ok(0)
        }
        async fn extend_visibility(&self, _: &[String], _: Duration) -> Result<(), QueueError> {
            self.extensions.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// A store whose apply takes a while (a throttled table); counts the events it got.
    #[derive(Default)]
    struct SlowStore {
        applied: AtomicUsize,
    }

    #[async_trait]
    impl Apply for SlowStore {
        async fn apply(&self, events: &[Event]) -> Result<ApplyReport, StoreError> {
            tokio::time::sleep(Duration::from_millis(120)).await;
            self.applied.fetch_add(events.len(), Ordering::SeqCst);
            Ok(ApplyReport::of(vec![ApplyOutcome::Applied; events.len()]))
        }
    }

    fn one_event() -> Event {
        let json = r#"{"org_id":"org_a","id":"e1","project_id":"prj_a","meter":"api_calls","aggregation":{"kind":"sum"},"quantity":"1","timestamp":"2026-11-26T10:00:00Z"}"#;
        serde_json::from_str(json).unwrap()
    }

    #[tokio::test]
    async fn a_delivery_handed_out_twice_in_one_batch_is_judged_once() {
        let delivery = Delivery {
            receipt: "r1".into(),
            events: vec![one_event()],
            unreadable: Vec::new(),
            receive_count: 1,
        };
        let queue = OneShotQueue {
            pending: Mutex::new(vec![delivery.clone(), delivery]),
            extensions: AtomicUsize::new(0),
            acked: Mutex::new(Vec::new()),
        };
        let store = ApplyOnly(SlowStore::default());
        let cfg = AggregatorConfig {
            max_wait: Duration::ZERO,
            ..AggregatorConfig::default()
        };
        let stats = process_batch(&queue, &store, None, &cfg, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!((stats.messages, stats.acked), (1, 1));
        assert_eq!(store.applied.load(Ordering::SeqCst), 1);
        assert_eq!(*queue.acked.lock().unwrap(), ["r1"]);
    }

    #[tokio::test]
    async fn a_slow_batch_keeps_its_messages_hidden_until_acked() {
        let event = one_event();
        let queue = OneShotQueue {
            pending: Mutex::new(vec![Delivery {
                receipt: "r1".into(),
                events: vec![event],
                unreadable: Vec::new(),
                receive_count: 1,
            }]),
            extensions: AtomicUsize::new(0),
            acked: Mutex::new(Vec::new()),
        };
        let cfg = AggregatorConfig {
            max_wait: Duration::ZERO,
            heartbeat: Duration::from_millis(20),
            ..AggregatorConfig::default()
        };
        let stats = process_batch(
            &queue,
            &ApplyOnly(SlowStore::default()),
            None,
            &cfg,
            Duration::ZERO,
        )
        .await
        .unwrap();
        assert_eq!(stats.acked, 1);
        assert_eq!(*queue.acked.lock().unwrap(), ["r1"]);
        assert!(
            queue.extensions.load(Ordering::SeqCst) >= 2,
            "a 120 ms apply with a 20 ms heartbeat must extend visibility"
        );
    }
}
