//! `tally-ingest-lambda`: `POST /v1/events` behind an API Gateway HTTP API.
//!
//! The same ingest router `tally serve` runs, on the DynamoDB store and the SQS queue or
//! Kinesis stream named by the environment ([`tally_lambda::env::INGEST`]). Its caches (keys,
//! projects, periods, usage) live as long as the execution environment.

use std::sync::Arc;

use anyhow::Context;
use tally_core::MeterCatalogue;
use tally_core::ports::SystemClock;
use tally_lambda::env::{self, Env};
use tally_lambda::{backends, handlers, telemetry::Telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Env::new(env::INGEST);
    let telemetry = Telemetry::init(&env, "ingest")?;
    let store = backends::store(&env).await?;
    let queue = backends::queue(&env, &store)?;
    let router = tally_ingest::router(tally_ingest::IngestState::new(
        store.tenants.clone(),
        store.usage.clone(),
        queue,
        Arc::new(MeterCatalogue::default()),
        Arc::new(SystemClock),
    ));
    handlers::http::serve(router, telemetry)
        .await
        .map_err(|e| anyhow::anyhow!(e))
        .context("the Lambda runtime stopped")
}
