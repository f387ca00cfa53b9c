//! `tally-aggregator-lambda`: the aggregator as the target of an SQS or Kinesis event source
//! mapping ([`tally_lambda::env::TRANSPORT`] says which), answering with
//! `batchItemFailures` so only unsettled records come back. Poison records go to the queue
//! in [`tally_lambda::env::DEAD_LETTER_QUEUE_URL`] with their reason.

use anyhow::Context;
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;
use tally_lambda::env::{self, Env};
use tally_lambda::sink::SqsSink;
use tally_lambda::{backends, handlers, telemetry::Telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Env::new(env::AGGREGATOR);
    let telemetry = Telemetry::init(&env, "aggregator")?;
    let transport = env.transport()?;
    let store = backends::store(&env).await?;
    let sink = SqsSink::new(
        aws_sdk_sqs::Client::new(&store.sdk),
        env.required(env::DEAD_LETTER_QUEUE_URL)?,
    );
    let store = &store;
    let sink = &sink;
    let telemetry = &telemetry;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let audit: &dyn tally_core::ports::AuditLog = store.tenants.as_ref();
        let out = handlers::aggregate(
            transport,
            store.usage.as_ref(),
            Some(audit),
            Some(sink),
            event.payload,
        )
        .await;
        telemetry.flush();
        out.map_err(|e| {
            tracing::error!(
                error = format!("{e:#}"),
                "batch not applied; Lambda retries it"
            );
            lambda_runtime::Error::from(format!("{e:#}"))
        })
    }))
    .await
    .map_err(|e| anyhow::anyhow!(e))
    .context("the Lambda runtime stopped")
}
