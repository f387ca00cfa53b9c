//! `tally-ingest-lambda`: `POST /v1/events` behind an API Gateway HTTP API.
//!
//! The same ingest router `tally serve` runs, on the DynamoDB store and the SQS queue or
//! Kinesis stream named by the environment ([`tally_lambda::env::INGEST`]). Its caches (keys,
//! projects, periods, usage) live as long as the execution environment, and the keys'
//! last-used times are written from it every few seconds while it is warm. Its rate and
//! hard plan limits are shared with every other warm instance through the table
//! ([`tally_ingest::shared`]; `TALLY_SHARED_RATE_BLOCKS`, `TALLY_SHARED_PLAN_BLOCKS`).
//! Its meters and plans are the stored catalogue version in force, re-read every
//! `TALLY_CATALOGUE_REFRESH_SECONDS` ([`tally_lambda::catalogue`]).

use std::sync::Arc;

use anyhow::Context;
use tally_billing::Catalogue;
use tally_core::ports::SystemClock;
use tally_lambda::catalogue;
use tally_lambda::env;
use tally_lambda::{backends, handlers};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (env, telemetry, store) = backends::start(env::INGEST, "ingest").await?;
    let catalogue = Catalogue::builtin().context("the built-in catalogue")?;
    let queue = backends::queue(&env, &store)?;
    let refresh = catalogue::open_from_env(&env, &store, catalogue).await?;
    // Rate and hard plan limits are shared by every warm instance through the table
    // (tally_ingest::shared), so they hold whatever the number of instances.
    let ingest = tally_ingest::Ingest::with_allowances(
        tally_ingest::IngestState::new(
            store.tenants.clone(),
            store.usage.clone(),
            queue,
            refresh.catalogue(),
            Arc::new(SystemClock),
        )
        .with_series(store.dynamo.clone()),
        tally_ingest::IngestConfig {
            shared: env.shared_limits()?,
            // API Gateway appends the address it was reached from to X-Forwarded-For.
            trusted_proxies: 1,
            ..tally_ingest::IngestConfig::default()
        },
        store.dynamo.clone(),
    );
    // Keys' last-used times, written at most every few seconds while the function is warm.
    tokio::spawn(tally_ingest::keys::flush_key_uses(
        ingest.key_cache(),
        store.tenants.clone(),
        tally_ingest::keys::KEY_USE_FLUSH_EVERY,
        std::future::pending(),
    ));
    let router = catalogue::refreshing(ingest.router(), refresh);
    handlers::http::serve(router, telemetry)
        .await
        .map_err(|e| anyhow::anyhow!(e))
        .context("the Lambda runtime stopped")
}
