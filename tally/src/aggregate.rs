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
use tracing::{info, warn};

use crate::backend;
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
    let worker = tokio::spawn(tally_aggregator::run(
        backends.queue.clone(),
        backends.stores.usage.clone(),
        Some(backends.stores.tenants.clone() as Arc<dyn AuditLog>),
        cfg,
        stop_rx.clone(),
        args.drain_limit,
    ));
    // On SQLite this worker also keeps the ledger to its retention, as `tally serve` does
    // (pruning twice from two processes is harmless: each run deletes what is left).
    let pruner = backends.stores.sqlite().cloned().map(|store| {
        tokio::spawn(crate::prune::run_periodically(
            store,
            clock,
            crate::prune::PRUNE_EVERY,
            stop_rx.clone(),
        ))
    });
    info!(
        max_events = cfg.max_events,
        "aggregator running; stop with Ctrl-C or SIGTERM"
    );
    crate::signal::shutdown().await;
    info!("stopping: draining what is queued");
    let _ = stop_tx.send(true);
    if let Err(e) = worker.await {
        warn!(error = %e, "aggregator task ended abnormally; unacknowledged records come back");
    }
    if let Some(p) = pruner {
        let _ = p.await;
    }
    Ok(())
}
