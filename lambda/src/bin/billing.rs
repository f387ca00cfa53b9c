//! `tally-billing-lambda`: the monthly billing run on an EventBridge schedule
//! (`cron(0 2 1 * ? *)`): once [`tally_lambda::env::GRACE_PERIOD_SECONDS`] have passed since
//! the previous month ended, closes it and stores the usage report of every org that
//! existed in it, with the same `close_month` as `tally bill` and `tally serve`'s
//! scheduler; months an earlier run left open are billed first, oldest first, while the
//! invocation has time ([`tally_lambda::handlers::bill_and_sync`]). A failure fails the
//! invocation (alarmed, retried). When [`tally_lambda::env::STRIPE_SECRET_ARN`] is set,
//! every report of the period is then synced to Stripe with the same `sync_period` as
//! `tally bill`, with the `secret_key` of that secret as it is at the invocation (read from
//! Secrets Manager and refreshed, [`tally_lambda::secrets`]); an org left pending or refused
//! fails the invocation, and the retry resumes from the sync ledger.
//!
//! An event `{"job": "alerts"}` (a second schedule, every five minutes) runs the plan-limit
//! alert pass instead ([`tally_lambda::alerts`]).

use std::time::Duration;

use anyhow::Context;
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;
use tally_billing::Catalogue;
use tally_core::ports::SystemClock;
use tally_lambda::alerts::JobOutput;
use tally_lambda::env::{self, Env};
use tally_lambda::handlers::BillingPorts;
use tally_lambda::secrets::{Derived, STRIPE_SECRET_KEY_FIELD, Secret};
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
    let catalogue = Catalogue::builtin().context("the built-in catalogue")?;
    let store = backends::store(&env).await?;
    let stripe = Secret::from_env(
        &env,
        env::STRIPE_SECRET_ARN,
        Some(STRIPE_SECRET_KEY_FIELD),
        &store.sdk,
    )?
    .map(|secret| handlers::stripe_provider(secret, tally_stripe::STRIPE_API_BASE.to_owned()));
    let ports = BillingPorts {
        tenants: store.tenants.as_ref(),
        usage: store.usage.as_ref(),
        reports: store.reports.as_ref(),
        clock: &SystemClock,
    };
    let alert_sender =
        tally_lambda::alerts::sender_from_env(&env, &store.sdk, std::sync::Arc::new(SystemClock))?;
    let alert_ports = tally_lambda::alerts::AlertRunPorts {
        tenants: store.tenants.as_ref(),
        usage: store.usage.as_ref(),
        alerts: store.dynamo.as_ref(),
        clock: &SystemClock,
    };
    let alert_sender = alert_sender.as_ref();
    let stripe = stripe.as_ref();
    let catalogue = &catalogue;
    let telemetry = &telemetry;
    let store = &store;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        if tally_lambda::alerts::is_alert_job(&event.payload) {
            // The secret as it is now: a rotation signs this run's alerts once the refresh
            // interval has passed.
            let sender = match alert_sender.map(Derived::current) {
                Some(current) => Some(current.await.map_err(|e| {
                    tracing::error!(error = %e, "alert run failed: no signing secret");
                    lambda_runtime::Error::from(e.to_string())
                })?),
                None => None,
            };
            let sender = sender
                .as_deref()
                .map(|s| s as &dyn tally_billing::alerts::AlertSender);
            let out = tally_lambda::alerts::run(alert_ports, catalogue, sender).await;
            telemetry.flush();
            return out.map(JobOutput::Alerts).map_err(|e| {
                tracing::error!(error = format!("{e:#}"), "alert run failed");
                lambda_runtime::Error::from(format!("{e:#}"))
            });
        }
        let provider = match stripe.map(Derived::current) {
            Some(current) => Some(current.await.map_err(|e| {
                tracing::error!(error = %e, "billing run failed: no Stripe secret key");
                lambda_runtime::Error::from(e.to_string())
            })?),
            None => None,
        };
        let stripe_ports = provider.as_deref().map(|provider| handlers::StripePorts {
            provider,
            ledger: store.dynamo.as_ref(),
            sleeper: &tally_notify::TokioSleeper,
        });
        // Lambda's deadline, in milliseconds since the epoch: later months wait for the
        // retry rather than start without time to finish.
        let deadline = i64::try_from(event.context.deadline)
            .ok()
            .and_then(chrono::DateTime::from_timestamp_millis);
        let out = handlers::bill_and_sync(ports, catalogue, grace, stripe_ports, deadline).await;
        telemetry.flush();
        out.map(JobOutput::Bill).map_err(|e| {
            tracing::error!(error = format!("{e:#}"), "billing run failed");
            lambda_runtime::Error::from(format!("{e:#}"))
        })
    }))
    .await
    .map_err(|e| anyhow::anyhow!(e))
    .context("the Lambda runtime stopped")
}
