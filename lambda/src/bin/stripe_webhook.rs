//! `tally-stripe-webhook-lambda`: Stripe's invoice webhooks (`POST /v1/stripe/webhook`)
//! behind an API Gateway HTTP API.
//!
//! The same router `tally serve` mounts ([`tally_billing::webhook::router`]): it checks
//! `Stripe-Signature` with the signing secret in
//! [`tally_lambda::env::STRIPE_WEBHOOK_SECRET`] (resolved from Secrets Manager when the
//! stack deploys; unset, every request is answered `503` saying so) and records
//! `invoice.paid` / `invoice.payment_failed` in the sync ledger of the DynamoDB table.

use std::sync::Arc;

use anyhow::Context;
use tally_billing::webhook::{WebhookState, router};
use tally_core::ports::SystemClock;
use tally_lambda::env::{self, Env};
use tally_lambda::{backends, handlers, telemetry::Telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Env::new(env::STRIPE_WEBHOOK);
    let telemetry = Telemetry::init(&env, "stripe-webhook")?;
    let secret = env.optional(env::STRIPE_WEBHOOK_SECRET)?;
    if secret.is_none() {
        tracing::warn!(
            "{} is not set: every webhook is answered 503",
            env::STRIPE_WEBHOOK_SECRET
        );
    }
    let store = backends::store(&env).await?;
    let router = router(WebhookState {
        ledger: store.dynamo.clone(),
        secret: secret.map(Arc::from),
        clock: Arc::new(SystemClock),
    });
    handlers::http::serve(router, telemetry)
        .await
        .map_err(|e| anyhow::anyhow!(e))
        .context("the Lambda runtime stopped")
}
