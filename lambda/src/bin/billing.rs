//! `tally-billing-lambda`: the monthly billing run on an EventBridge schedule
//! (`cron(0 2 1 * ? *)`): once [`tally_lambda::env::GRACE_PERIOD_SECONDS`] have passed since
//! the previous month ended, closes it and stores every org's usage report, with the same
//! `close_month` as `tally bill` and `tally serve`'s scheduler. A failure fails the
//! invocation (alarmed, retried). Stripe sync is not here yet.

use std::time::Duration;

use anyhow::Context;
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;
use tally_billing::Catalogue;
use tally_core::ports::SystemClock;
use tally_lambda::env::{self, Env};
use tally_lambda::handlers::BillingPorts;
use tally_lambda::{backends, handlers, telemetry::Telemetry};

/// Longest grace period accepted: the schedule runs two hours into the month, so a longer
/// one would never let this run close anything.
const MAX_GRACE_SECONDS: u64 = 2 * 3600;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Env::new(env::BILLING);
    let telemetry = Telemetry::init(&env, "billing")?;
    let raw = env.required(env::GRACE_PERIOD_SECONDS)?;
    let grace: u64 = raw.trim().parse().with_context(|| {
        format!(
            "{} must be whole seconds, got {raw:?}",
            env::GRACE_PERIOD_SECONDS
        )
    })?;
    if grace > MAX_GRACE_SECONDS {
        anyhow::bail!(
            "{} is {grace}; at most {MAX_GRACE_SECONDS} (the schedule runs at 02:00 UTC on the 1st)",
            env::GRACE_PERIOD_SECONDS
        );
    }
    let grace = Duration::from_secs(grace);
    let catalogue = Catalogue::builtin().context("the built-in plan catalogue")?;
    let store = backends::store(&env).await?;
    let ports = BillingPorts {
        tenants: store.tenants.as_ref(),
        usage: store.usage.as_ref(),
        reports: store.reports.as_ref(),
        clock: &SystemClock,
    };
    let catalogue = &catalogue;
    let telemetry = &telemetry;
    lambda_runtime::run(service_fn(move |_event: LambdaEvent<Value>| async move {
        let out = handlers::bill(ports, catalogue, grace).await;
        telemetry.flush();
        out.map_err(|e| {
            tracing::error!(error = format!("{e:#}"), "billing run failed");
            lambda_runtime::Error::from(format!("{e:#}"))
        })
    }))
    .await
    .map_err(|e| anyhow::anyhow!(e))
    .context("the Lambda runtime stopped")
}
