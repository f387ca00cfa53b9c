//! `tally-aggregator-lambda`: the aggregator as the target of an SQS or Kinesis event source
//! mapping ([`tally_lambda::env::TRANSPORT`] says which), answering with
//! `batchItemFailures` so only unsettled records come back. Poison records go to the queue
//! in [`tally_lambda::env::DEAD_LETTER_QUEUE_URL`] with their reason. Records are applied in
//! groups, and none is started with less than [`tally_lambda::env::DEADLINE_MARGIN_SECONDS`]
//! of the invocation left; those come back too.

use anyhow::Context;
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;
use tally_core::ports::SystemClock;
use tally_lambda::consumers::{Consumer, Deadline};
use tally_lambda::env::{self, Env};
use tally_lambda::sink::SqsSink;
use tally_lambda::{backends, handlers, telemetry::Telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Env::new(env::AGGREGATOR);
    let telemetry = Telemetry::init(&env, "aggregator")?;
    let transport = env.transport()?;
    let margin = env.deadline_margin()?;
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
        // Lambda's deadline, in milliseconds since the epoch: groups of records that could
        // not finish before it are left to come back rather than time the batch out.
        let deadline = i64::try_from(event.context.deadline)
            .ok()
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|at| Deadline {
                margin,
                ..Deadline::new(at, &SystemClock)
            });
        let mut consumer = Consumer::new(store.usage.as_ref())
            .with_audit(audit)
            .with_sink(sink);
        consumer.deadline = deadline.as_ref();
        let out = handlers::aggregate(transport, &consumer, event.payload).await;
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
