//! Tally's aggregator: takes batches of events off the queue and applies them exactly once.
//!
//! The loop is deliberately thin: collect up to [`AggregatorConfig::max_events`] events or
//! wait at most [`AggregatorConfig::max_wait`] after the first one, hand the whole batch to
//! [`UsageStore::apply_batch`] (which dedupes against the ledger and writes counters in the
//! same atomic step), then acknowledge only the messages whose every event was settled. A
//! crash anywhere in between leaves messages unacknowledged; they come back after the
//! queue's visibility timeout and the ledger turns the second application into a no-op. That
//! is the whole exactly-once argument, and it does not depend on the queue delivering once.
//!
//! [`reconcile`] recomputes counters from the ledger through the same ports, so it checks
//! every backend the same way.

pub mod reconcile;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_core::ports::{Delivery, EventQueue, StoreError, UsageStore};
use tokio::sync::watch;
use tracing::{Instrument, info, warn};

pub use reconcile::{Drift, reconcile};

/// Batching knobs.
#[derive(Debug, Clone, Copy)]
pub struct AggregatorConfig {
    /// Most events applied in one batch.
    pub max_events: usize,
    /// Longest a batch waits to fill once its first event arrived.
    pub max_wait: Duration,
    /// How long one idle receive waits before checking for shutdown.
    pub idle_poll: Duration,
    /// Pause after a failed apply before trying again (the messages stay on the queue).
    pub error_backoff: Duration,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            max_events: 1_000,
            max_wait: Duration::from_millis(200),
            idle_poll: Duration::from_millis(500),
            error_backoff: Duration::from_millis(500),
        }
    }
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Messages taken off the queue.
    pub messages: usize,
    /// Events in them.
    pub events: usize,
    /// Newly counted.
    pub applied: usize,
    /// Repeats (already counted).
    pub duplicates: usize,
    /// Messages acknowledged.
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
/// first message; an idle queue returns an empty batch after `first_wait`).
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

/// Receives one batch, applies it and acknowledges what was settled.
pub async fn process_batch(
    queue: &dyn EventQueue,
    usage: &dyn UsageStore,
    cfg: &AggregatorConfig,
    first_wait: Duration,
) -> Result<BatchStats, AggregateError> {
    let deliveries = collect(queue, cfg, first_wait).await?;
    if deliveries.is_empty() {
        return Ok(BatchStats::default());
    }
    let events: Vec<_> = deliveries
        .iter()
        .flat_map(|d| d.events.iter().cloned())
        .collect();
    let span = tracing::info_span!(
        "apply_batch",
        messages = deliveries.len(),
        batch_size = events.len()
    );
    async move {
        let started = Instant::now();
        let report = usage.apply_batch(&events).await?;
        metrics::histogram!("tally_apply_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("tally_batch_size").record(events.len() as f64);
        let mut stats = BatchStats {
            messages: deliveries.len(),
            events: events.len(),
            applied: report.applied(),
            duplicates: report.duplicates(),
            acked: 0,
        };
        metrics::counter!("tally_events_applied_total").increment(stats.applied as u64);
        metrics::counter!("tally_events_duplicate_total").increment(stats.duplicates as u64);

        // Outcomes are in event order; walk them message by message.
        let mut receipts = Vec::with_capacity(deliveries.len());
        let mut at = 0;
        for d in &deliveries {
            let outcomes = &report.outcomes[at..(at + d.events.len()).min(report.outcomes.len())];
            at += d.events.len();
            let settled = outcomes.len() == d.events.len()
                && outcomes
                    .iter()
                    .all(|o| !matches!(o, tally_core::ports::ApplyOutcome::Failed(_)));
            if settled {
                receipts.push(d.receipt.clone());
            } else {
                warn!(receipt = %d.receipt, "message not fully applied; leaving it for redelivery");
            }
        }
        queue.ack(&receipts).await?;
        stats.acked = receipts.len();
        Ok(stats)
    }
    .instrument(span)
    .await
}

/// Runs the aggregator until `shutdown` turns true, then drains what is left on the queue
/// (bounded by `drain_limit`) and returns.
pub async fn run(
    queue: Arc<dyn EventQueue>,
    usage: Arc<dyn UsageStore>,
    cfg: AggregatorConfig,
    mut shutdown: watch::Receiver<bool>,
    drain_limit: Duration,
) {
    loop {
        if *shutdown.borrow() {
            break;
        }
        let step = process_batch(queue.as_ref(), usage.as_ref(), &cfg, cfg.idle_poll);
        tokio::select! {
            res = step => {
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
        match process_batch(
            queue.as_ref(),
            usage.as_ref(),
            &cfg,
            Duration::from_millis(50),
        )
        .await
        {
            Ok(s) if s.messages == 0 => break,
            Ok(s) => drained += s.events,
            Err(e) => {
                warn!(error = %e, "drain batch failed; messages stay queued for the next start");
                break;
            }
        }
    }
    info!(drained, "aggregator stopped");
}
