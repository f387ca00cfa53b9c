//! `tally-stripe-webhook-lambda`: Stripe's invoice webhooks (`POST /v1/stripe/webhook`)
//! behind an API Gateway HTTP API.
//!
//! The same router `tally serve` mounts ([`tally_billing::webhook::router`]): it checks
//! `Stripe-Signature` with the `webhook_signing_secret` field of the Stripe secret whose
//! ARN is [`tally_lambda::env::STRIPE_SECRET_ARN`], read from Secrets Manager at run time
//! and refreshed ([`tally_lambda::secrets`]); unset, every request is answered `503`
//! saying so. It records `invoice.paid` / `invoice.payment_failed` in the sync ledger of
//! the DynamoDB table.

use std::sync::Arc;

use anyhow::Context;
use tally_billing::webhook::{WebhookState, router};
use tally_core::ports::SystemClock;
use tally_lambda::env;
use tally_lambda::secrets::{STRIPE_WEBHOOK_SECRET_FIELD, Secret};
use tally_lambda::{backends, handlers};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (env, telemetry, store) = backends::start(env::STRIPE_WEBHOOK, "stripe-webhook").await?;
    let secret = Secret::stripe_from_env(&env, STRIPE_WEBHOOK_SECRET_FIELD, &store.sdk)?;
    let Some(secret) = secret else {
        tracing::warn!(
            "{} is not set: every webhook is answered 503",
            env::STRIPE_SECRET_ARN
        );
        let router = router(WebhookState {
            ledger: store.dynamo.clone(),
            secret: None,
            clock: Arc::new(SystemClock),
        });
        return handlers::http::serve(router, telemetry)
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .context("the Lambda runtime stopped");
    };
    if let Err(e) = secret.current().await {
        tracing::error!(error = %e, "the Stripe webhook signing secret cannot be read yet");
    }
    let router =
        handlers::http::stripe_webhook_router(store.dynamo.clone(), Arc::new(SystemClock), secret);
    handlers::http::serve_derived(Arc::new(router), telemetry)
        .await
        .map_err(|e| anyhow::anyhow!(e))
        .context("the Lambda runtime stopped")
}
