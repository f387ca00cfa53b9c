//! Plan-limit alerts: the webhook sender from the environment ([`sender_from_env`]; tests
//! that run the app in process build it with [`sender`]), `tally alerts check` (one pass,
//! for cron) and the periodic pass `tally serve` runs in its own task.
//!
//! Alerts are on when both `TALLY_ALERT_WEBHOOK_URL` and `TALLY_ALERT_WEBHOOK_SECRET` are
//! set (one without the other is a configuration error, not a silent "off"). The pass is
//! [`tally_billing::alerts::check_alerts`]; what it sends and when is documented there and in
//! `tally-notify`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use tally_billing::alerts::{AlertPorts, CheckOutcome, DEFAULT_LEASE, check_alerts};
use tally_billing::versions::Versioned;
use tally_core::ports::Clock;
use tally_http::Live;
use tally_notify::{TokioSleeper, WebhookConfig, WebhookSender};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::backend::{self, Backends};
use crate::output::print;
use crate::settings::Common;

/// Where alerts are POSTed.
pub const URL_ENV: &str = "TALLY_ALERT_WEBHOOK_URL";
/// The secret they are signed with.
pub const SECRET_ENV: &str = "TALLY_ALERT_WEBHOOK_SECRET";

/// The signed-webhook sender, if alerts are configured.
pub fn sender_from_env(clock: Arc<dyn Clock>) -> anyhow::Result<Option<WebhookSender>> {
    let read = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let (url, secret) = match (read(URL_ENV), read(SECRET_ENV)) {
        (None, None) => return Ok(None),
        (Some(url), Some(secret)) => (url, secret),
        (Some(_), None) => bail!("{URL_ENV} is set but {SECRET_ENV} is not; alerts need both"),
        (None, Some(_)) => bail!("{SECRET_ENV} is set but {URL_ENV} is not; alerts need both"),
    };
    sender(&url, &secret, clock).map(Some)
}

/// The signed-webhook sender for alerts POSTed to `url` and signed with `secret`, as
/// [`sender_from_env`] builds it from the environment.
pub fn sender(url: &str, secret: &str, clock: Arc<dyn Clock>) -> anyhow::Result<WebhookSender> {
    let config = WebhookConfig::new(url.trim(), secret.trim());
    // The lease must outlast one alert's attempts, or a second pass could send it too.
    if let Ok(lease) = DEFAULT_LEASE.to_std()
        && config.worst_case() >= lease
    {
        bail!("the alert sender's attempts could outlast the alert lease");
    }
    WebhookSender::new(config, clock, Arc::new(TokioSleeper)).context("alert webhook settings")
}

/// `tally alerts` subcommands.
#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Run one pass: send the plan-limit alerts due now and retry pending ones (for cron).
    Check(CheckArgs),
}

/// `tally alerts check` flags.
#[derive(Debug, Args)]
pub struct CheckArgs {}

#[derive(Serialize)]
struct Problem {
    org_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    alert: Option<String>,
    error: String,
}

#[derive(Serialize)]
struct CheckOut {
    orgs: usize,
    claimed: usize,
    delivered: usize,
    problems: Vec<Problem>,
}

fn out_of(outcome: &CheckOutcome) -> CheckOut {
    CheckOut {
        orgs: outcome.orgs,
        claimed: outcome.claimed,
        delivered: outcome.delivered,
        problems: outcome
            .problems
            .iter()
            .map(|(org, key, e)| Problem {
                org_id: org.to_string(),
                alert: key.as_ref().map(tally_billing::alerts::alert_id),
                error: e.to_string(),
            })
            .collect(),
    }
}

/// Runs `tally alerts …`. A pass with problems prints them and fails, so cron reports it;
/// the alerts concerned stay pending for the next pass.
pub async fn alerts(common: &Common, command: AlertsCommand) -> anyhow::Result<()> {
    let AlertsCommand::Check(CheckArgs {}) = command;
    let clock = crate::clock::from_env()?;
    let Some(sender) = sender_from_env(clock.clone())? else {
        bail!("alerts are off: set {URL_ENV} and {SECRET_ENV}");
    };
    let stores = backend::open_store(common).await?;
    let catalogue = common.load_catalogue()?;
    let ports = AlertPorts {
        tenants: stores.tenants.as_ref(),
        usage: stores.usage.as_ref(),
        alerts: stores.alerts.as_ref(),
        clock: clock.as_ref(),
    };
    let outcome = check_alerts(ports, &catalogue, &sender, DEFAULT_LEASE)
        .await
        .context("alert check")?;
    let out = out_of(&outcome);
    print(common.json, &out, |out| {
        let mut text = format!(
            "checked {} org(s): {} alert(s) claimed, {} delivered",
            out.orgs, out.claimed, out.delivered
        );
        for p in &out.problems {
            text.push_str(&format!(
                "\n  {} {}: {}",
                p.org_id,
                p.alert.as_deref().unwrap_or("-"),
                p.error
            ));
        }
        text
    })?;
    if !out.problems.is_empty() {
        bail!(
            "{} problem(s) in the alert check; undelivered alerts stay pending and the next check retries them",
            out.problems.len()
        );
    }
    Ok(())
}

/// `tally serve`'s alert task: a pass every `interval` until `stop`. Problems are logged
/// and counted (`tally_alert_problems_total`), deliveries counted
/// (`tally_alerts_delivered_total`); nothing here waits on or for ingest and the aggregator.
pub async fn run_periodically(
    backends: Backends,
    catalogue: Live<Versioned>,
    sender: WebhookSender,
    clock: Arc<dyn Clock>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let ports = AlertPorts {
            tenants: backends.stores.tenants.as_ref(),
            usage: backends.stores.usage.as_ref(),
            alerts: backends.stores.alerts.as_ref(),
            clock: clock.as_ref(),
        };
        // The catalogue in force at this pass (`tally serve` may swap it between passes).
        let in_force = catalogue.load();
        // A pass is bounded (each alert's attempts are), but stop waiting for it on shutdown.
        let pass = tokio::select! {
            pass = check_alerts(ports, &in_force.catalogue, &sender, DEFAULT_LEASE) => Some(pass),
            _ = stop.changed() => None,
        };
        match pass {
            None => return,
            Some(Ok(outcome)) => {
                metrics::counter!("tally_alerts_delivered_total")
                    .increment(outcome.delivered as u64);
                metrics::counter!("tally_alert_problems_total")
                    .increment(outcome.problems.len() as u64);
                if outcome.delivered > 0 {
                    info!(delivered = outcome.delivered, "sent plan-limit alerts");
                }
                for (org, key, e) in &outcome.problems {
                    let alert = key.as_ref().map(tally_billing::alerts::alert_id);
                    warn!(org = %org, alert = alert.as_deref().unwrap_or("-"), error = %e, "plan-limit alert problem; retried next pass");
                }
            }
            Some(Err(e)) => {
                metrics::counter!("tally_alert_problems_total").increment(1);
                warn!(error = %e, "alert check failed; retried next pass");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}
