//! `tally aggregate`: the polling worker, for running the aggregator outside Lambda (or
//! beside a `tally serve` whose own aggregator is not enough).
//!
//! Thin on purpose: it opens the backends named by `--store` and `--queue` once and runs
//! [`tally_aggregator::run`] until SIGINT or SIGTERM ([`crate::signal::shutdown`], the same
//! stop signal as `tally serve`), then drains what is left for at most
//! `--drain-limit`. Acknowledging only what is applied, dead-lettering poison records and
//! leaving the rest for redelivery are the library's job. On SQLite it also prunes ledger
//! rows past the retention every hour, as `tally serve` does ([`crate::prune`]).

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tally_aggregator::AggregatorConfig;
use tally_core::ports::AuditLog;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::backend::{self, Backends};
use crate::settings::{Common, parse_duration};

/// Flags of `tally aggregate`.
#[derive(Debug, Clone, Args)]
pub struct AggregateArgs {
    /// Most events applied in one batch.
    #[arg(long, default_value_t = 1_000)]
    pub max_events: usize,
    /// Longest a batch waits to fill after its first event, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub max_wait_ms: u64,
    /// Longest the worker keeps draining the queue after a stop signal.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain_limit: Duration,
}

/// Runs the aggregator on the configured backends until SIGINT/SIGTERM.
pub async fn aggregate(common: &Common, args: AggregateArgs) -> anyhow::Result<()> {
    let backends = backend::open(common).await?;
    let clock = crate::clock::from_env()?;
    let mut cfg = AggregatorConfig {
        max_events: args.max_events.max(1),
        max_wait: Duration::from_millis(args.max_wait_ms),
        ..AggregatorConfig::default()
    };
    // A shorter visibility timeout: keep a slow batch hidden by as much, every third
    // of it, so it is not handed to another aggregator while this one is still applying.
    if let Some(visibility) = crate::settings::queue_visibility()? {
        cfg.heartbeat = visibility / 3;
        cfg.visibility_extension = visibility;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let worker = spawn_aggregator(&backends, cfg, &stop_rx, args.drain_limit);
    // On SQLite this worker also keeps the ledger to its retention, as `tally serve` does
    // (pruning twice from two processes is harmless: each run deletes what is left).
    let pruner = crate::prune::spawn_periodic(&backends, clock, &stop_rx);
    info!(
        max_events = cfg.max_events,
        "aggregator running; stop with Ctrl-C or SIGTERM"
    );
    crate::signal::shutdown().await;
    info!("stopping: draining what is queued");
    stop_aggregator(&stop_tx, worker, "unacknowledged records come back", pruner).await;
    Ok(())
}

/// Starts [`tally_aggregator::run`] on `backends` (auditing to the tenant store) until
/// `stop` turns true, then draining for at most `drain_limit`.
pub fn spawn_aggregator(
    backends: &Backends,
    cfg: AggregatorConfig,
    stop: &watch::Receiver<bool>,
    drain_limit: Duration,
) -> JoinHandle<()> {
    tokio::spawn(tally_aggregator::run(
        backends.queue.clone(),
        backends.stores.usage.clone(),
        Some(backends.stores.tenants.clone() as Arc<dyn AuditLog>),
        cfg,
        stop.clone(),
        drain_limit,
    ))
}

/// Tells the aggregator and the tasks beside it to stop through `stop` and waits for them
/// all: the aggregator first (a failure logged, saying what becomes of its `unfinished`
/// work), then each of `others`.
pub async fn stop_aggregator(
    stop: &watch::Sender<bool>,
    aggregator: JoinHandle<()>,
    unfinished: &str,
    others: impl IntoIterator<Item = JoinHandle<()>>,
) {
    let _ = stop.send(true);
    if let Err(e) = aggregator.await {
        warn!(error = %e, "aggregator task ended abnormally; {unfinished}");
    }
    for task in others {
        let _ = task.await;
    }
}
