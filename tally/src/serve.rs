//! `tally serve`: the whole of Tally in one process on the embedded default.
//!
//! One axum server carries the ingest and usage routers; the aggregator drains the local
//! queue in a background task; a small scheduler closes each ended month once its grace
//! period has passed. On SIGINT or SIGTERM the server stops taking requests, finishes the
//! ones in flight (each answered `202` only after its events were durably queued), and the
//! aggregator drains what is queued before the process exits. Anything still queued after
//! the drain limit stays in `queue.db` and is applied on the next start: nothing accepted is
//! lost either way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use clap::Args;
use tally_aggregator::AggregatorConfig;
use tally_core::MeterCatalogue;
use tally_core::ports::{Clock, SystemClock, UsageStore};
use tally_core::{Month, ports::StoreError};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::Common;
use crate::backend::{self, Backends};

/// `tally serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "TALLY_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Do not close ended months automatically.
    #[arg(long)]
    no_billing_scheduler: bool,
    /// How long after a month ends it stays open for late events (e.g. 1h, 30m, 90s).
    #[arg(long, env = "TALLY_GRACE_PERIOD", default_value = "1h", value_parser = parse_duration)]
    grace_period: Duration,
    /// Most events the aggregator applies in one batch (it also stops waiting 200 ms after
    /// the first). Bigger batches share the ledger's index pages between more events per
    /// commit: 5,000 raised workload W from ~38k to ~52k events/s end to end in
    /// bench/RESULTS.md, at the cost of a longer tail for ingest latency.
    #[arg(long, env = "TALLY_BATCH_EVENTS", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_events: u32,
    /// Longest the aggregator keeps draining the queue at shutdown (e.g. 30s).
    #[arg(long, env = "TALLY_DRAIN_LIMIT", default_value = "30s", value_parser = parse_duration)]
    drain_limit: Duration,
}

/// Parses `90s`, `30m`, `1h`, `2d` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("expected a duration like 90s, 30m or 1h, got {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => {
            return Err(format!(
                "unknown duration unit {unit:?} in {s:?}; use s, m, h or d"
            ));
        }
    };
    Ok(Duration::from_secs(secs))
}

/// Builds the HTTP app of the local server; `jwt` verifies users' tokens (none: JWTs are
/// refused).
pub fn app(
    backends: &Backends,
    clock: Arc<dyn Clock>,
    jwt: Option<tally_api::jwt::JwtConfig>,
) -> Router {
    let catalogue = Arc::new(MeterCatalogue::default());
    let ingest = tally_ingest::router(tally_ingest::IngestState {
        tenants: backends.tenants.clone(),
        usage: backends.usage.clone(),
        queue: backends.queue.clone(),
        catalogue: catalogue.clone(),
        clock: clock.clone(),
    });
    let api = tally_api::router(tally_api::ApiState {
        tenants: backends.tenants.clone(),
        usage: backends.usage.clone(),
        catalogue,
        clock,
        jwt: jwt.map(Arc::new),
    });
    ingest.merge(api).route(
        "/healthz",
        get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
    )
}

/// Runs the server until SIGINT/SIGTERM.
pub async fn serve(common: &Common, args: ServeArgs) -> anyhow::Result<()> {
    let backends = backend::open(common).await?;
    let jwt = crate::commands::jwt_config(common)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let local = listener.local_addr()?;
    let (stop_tx, stop_rx) = watch::channel(false);

    let aggregator = tokio::spawn(tally_aggregator::run(
        backends.queue.clone(),
        backends.usage.clone(),
        AggregatorConfig {
            max_events: args.batch_events as usize,
            ..AggregatorConfig::default()
        },
        stop_rx.clone(),
        args.drain_limit,
    ));
    let scheduler = (!args.no_billing_scheduler).then(|| {
        tokio::spawn(close_ended_months(
            backends.usage.clone(),
            clock.clone(),
            args.grace_period,
            stop_rx.clone(),
        ))
    });

    info!(addr = %local, data = %common.data.display(), "tally listening on http://{local}");
    let served = axum::serve(
        listener,
        app(&backends, clock, Some(jwt)).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await;
    info!("no longer accepting requests; draining the queue");
    let _ = stop_tx.send(true);
    if let Err(e) = aggregator.await {
        warn!(error = %e, "aggregator task ended abnormally; queued events stay on disk for the next start");
    }
    if let Some(s) = scheduler {
        let _ = s.await;
    }
    served.context("server failed")?;
    match backends.queue.depth().await {
        Ok(0) => info!("stopped; queue empty"),
        Ok(n) => info!(
            messages = n,
            "stopped; messages left on the queue are applied at the next start"
        ),
        Err(e) => warn!(error = %e, "stopped; could not read queue depth"),
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Closes the month before the current one once `grace` has passed since it ended. The
/// billing worker builds reports for closed months; this task only makes ingest refuse late
/// events for them.
async fn close_ended_months(
    usage: Arc<dyn UsageStore>,
    clock: Arc<dyn Clock>,
    grace: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::hours(1));
    loop {
        if let Err(e) = close_if_due(usage.as_ref(), clock.as_ref(), grace).await {
            warn!(error = %e, "could not check or close the previous month; will retry");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn close_if_due(
    usage: &dyn UsageStore,
    clock: &dyn Clock,
    grace: chrono::Duration,
) -> Result<(), StoreError> {
    let now = clock.now();
    let prev = Month::of(now).prev();
    if now >= prev.end() + grace && !usage.is_period_closed(prev).await? {
        usage.close_period(prev, now).await?;
        info!(period = %prev, "closed period");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }
}
