//! `tally-billing-lambda`: billing on AWS, one binary for four kinds of invocation, told
//! apart by the event's shape ([`tally_lambda::fanout::BillingEvent::classify`]):
//!
//! - **The monthly schedule** (`cron(0 2 1 * ? *)`, EventBridge's scheduled event, no input):
//!   once [`tally_lambda::env::GRACE_PERIOD_SECONDS`] have passed since the previous month
//!   ended, plans the months due as `tally bill` and `tally serve`'s scheduler do (months an
//!   earlier run left open first, oldest first). With
//!   [`tally_lambda::env::BILLING_QUEUE_URL`] set (the template sets it) it only closes them
//!   and enqueues one `{"org", "period"}` item per org
//!   ([`tally_billing::fanout::enqueue_due`]); without it, it bills every org in-process
//!   ([`tally_lambda::handlers::bill_and_sync`]), which fits a few hundred orgs at most.
//! - **A batch of items from the billing queue** (an SQS event-source mapping with
//!   `ReportBatchItemFailures`): each item is closed and, when
//!   [`tally_lambda::env::STRIPE_SECRET_ARN`] is set, invoiced, with the same per-org steps
//!   as `tally bill`; items without time left or that failed come back
//!   ([`tally_lambda::fanout::consume`]).
//! - **`{"job": "catch-up"}`** (daily): re-enqueues orgs of recently closed months missing a
//!   report or an invoice and publishes the unbilled-orgs gauge
//!   ([`tally_billing::fanout::catch_up`]).
//! - **`{"job": "alerts"}`** (every five minutes): the plan-limit alert pass
//!   ([`tally_lambda::alerts`]).
//!
//! Secrets are read from Secrets Manager as they are at the invocation
//! ([`tally_lambda::secrets`]). A failure fails the invocation (alarmed, retried).

use std::time::Duration;

use anyhow::Context;
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;
use tally_billing::Catalogue;
use tally_billing::fanout::StripeItemPorts;
use tally_core::ports::SystemClock;
use tally_lambda::alerts::JobOutput;
use tally_lambda::env::{self, Env};
use tally_lambda::fanout::{
    self, BillingEvent, Budget, ITEM_TIME_RESERVE, ItemPorts, SqsBillQueue,
};
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
    let stripe = Secret::stripe_from_env(&env, STRIPE_SECRET_KEY_FIELD, &store.sdk)?
        .map(|secret| handlers::stripe_provider(secret, tally_stripe::STRIPE_API_BASE.to_owned()));
    let ports = BillingPorts {
        tenants: store.tenants.as_ref(),
        usage: store.usage.as_ref(),
        reports: store.reports.as_ref(),
        // Month close reads the catalogue version in force for each month from the table,
        // as `tally bill` does; the built-in catalogue prices months no version covers.
        versions: store.dynamo.as_ref(),
        overrides: store.dynamo.as_ref(),
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
    let queue = env
        .optional(env::BILLING_QUEUE_URL)?
        .map(|url| SqsBillQueue::new(aws_sdk_sqs::Client::new(&store.sdk), url));
    let queue = queue.as_ref();
    let grace_chrono = chrono::Duration::from_std(grace).context("the grace period")?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let fail = |what: &str, e: String| {
            tracing::error!(error = e, "{what} failed");
            lambda_runtime::Error::from(e)
        };
        let kind = BillingEvent::classify(event.payload)
            .map_err(|e| fail("billing invocation", e.to_string()))?;
        if let BillingEvent::Alerts = kind {
            // The secret as it is now: a rotation signs this run's alerts once the refresh
            // interval has passed.
            let sender = Derived::current_if_any(alert_sender)
                .await
                .map_err(|e| fail("alert run (no signing secret)", e.to_string()))?;
            let sender = sender
                .as_deref()
                .map(|s| s as &dyn tally_billing::alerts::AlertSender);
            // Alerts measure by the catalogue version in force now (read each run, so a
            // published version applies from its month without a redeploy).
            let month = tally_core::Month::of(tally_core::ports::Clock::now(&SystemClock));
            let in_force =
                tally_billing::versions::catalogue_for(store.dynamo.as_ref(), catalogue, month)
                    .await
                    .map_err(|e| fail("alert run (catalogue version)", e.to_string()))?;
            let out = tally_lambda::alerts::run(alert_ports, &in_force.catalogue, sender).await;
            telemetry.flush();
            return out
                .map_err(|e| fail("alert run", format!("{e:#}")))
                .and_then(|run| to_value(JobOutput::<()>::Alerts(run)));
        }
        let provider = Derived::current_if_any(stripe)
            .await
            .map_err(|e| fail("billing run (no Stripe secret key)", e.to_string()))?;
        let stripe_ports = provider.as_deref().map(|provider| handlers::StripePorts {
            provider,
            ledger: store.dynamo.as_ref(),
            sleeper: &tally_notify::TokioSleeper,
        });
        // Lambda's deadline, in milliseconds since the epoch: later months (or items) wait
        // for the retry rather than start without time to finish.
        let deadline = i64::try_from(event.context.deadline)
            .ok()
            .and_then(chrono::DateTime::from_timestamp_millis);
        let out = match (kind, queue) {
            (BillingEvent::Queue(batch), _) => {
                let item_ports = ItemPorts {
                    close: ports,
                    stripe: stripe_ports.map(|s| StripeItemPorts {
                        provider: s.provider,
                        ledger: s.ledger,
                        sleeper: s.sleeper,
                    }),
                    catalogue,
                    grace: grace_chrono,
                };
                let budget = deadline.map(|deadline| Budget {
                    clock: &SystemClock,
                    deadline,
                    reserve: ITEM_TIME_RESERVE,
                });
                let response = fanout::consume(item_ports, &batch, budget.as_ref()).await;
                to_value(response)
            }
            (BillingEvent::CatchUp, Some(queue)) => {
                let ledger = stripe_ports.map(|s| s.ledger);
                tally_billing::fanout::catch_up(ports, ledger, queue, grace_chrono)
                    .await
                    .map_err(|e| fail("billing catch-up", format!("{e:#}")))
                    .and_then(|run| to_value(run))
            }
            (BillingEvent::CatchUp, None) => Err(fail(
                "billing catch-up",
                format!(
                    "the catch-up needs the billing queue; {} is not set",
                    env::BILLING_QUEUE_URL
                ),
            )),
            (BillingEvent::Schedule, Some(queue)) => {
                match tally_billing::fanout::enqueue_due(ports, queue, grace_chrono).await {
                    Ok(run) => match run.left_open_beyond_cap {
                        Some(period) => Err(fail(
                            "billing run",
                            handlers::BillingError::OpenBeyondCap { period }.to_string(),
                        )),
                        None => to_value(run),
                    },
                    Err(e) => Err(fail("billing run", format!("{e:#}"))),
                }
            }
            (BillingEvent::Schedule, None) => {
                handlers::bill_and_sync(ports, catalogue, grace, stripe_ports, deadline)
                    .await
                    .map_err(|e| fail("billing run", format!("{e:#}")))
                    .and_then(|run| to_value(JobOutput::Bill(run)))
            }
            (BillingEvent::Alerts, _) => unreachable_alerts(),
        };
        telemetry.flush();
        out
    }))
    .await
    .map_err(|e| anyhow::anyhow!(e))
    .context("the Lambda runtime stopped")
}

/// The answer as JSON for the runtime.
fn to_value(v: impl serde::Serialize) -> Result<Value, lambda_runtime::Error> {
    serde_json::to_value(v)
        .map_err(|e| lambda_runtime::Error::from(format!("encoding the answer: {e}")))
}

/// The alert run returned above; this arm only completes the match.
fn unreachable_alerts() -> Result<Value, lambda_runtime::Error> {
    Err(lambda_runtime::Error::from(
        "the alert run is handled first",
    ))
}
