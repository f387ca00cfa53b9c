//! Opening the AWS backends a function runs on, from its environment ([`crate::env`]).
//!
//! Clients are built once per cold start and reused by every invocation of that execution
//! environment. The SDK's usual chain supplies region and credentials (the function's role);
//! `AWS_ENDPOINT_URL`, which the SDK reads itself, points them at an emulator.

use std::sync::Arc;

use aws_config::SdkConfig;
use tally_core::ports::{EventQueue, ReportStore, TenantStore, UsageStore};
use tally_store::dynamodb::DynamoStore;
use tally_store::kinesis::{KinesisConfig, KinesisQueue};
use tally_store::sqs::SqsQueue;

use crate::env::{self, Env, EnvError, Transport};
use crate::telemetry::Telemetry;

/// The consumer name Kinesis checkpoints would be kept under; ingest only publishes, but
/// the adapter is built with one (the same as `tally aggregate`'s).
const KINESIS_CONSUMER: &str = "aggregator";

/// The store, opened on the table named by [`env::TABLE`].
#[derive(Clone)]
pub struct Store {
    /// The adapter, for callers that need the concrete type.
    pub dynamo: Arc<DynamoStore>,
    /// The same, as the tenant port.
    pub tenants: Arc<dyn TenantStore>,
    /// The same, as the usage port.
    pub usage: Arc<dyn UsageStore>,
    /// The same, as billing's report port.
    pub reports: Arc<dyn ReportStore>,
    /// The SDK configuration, for further clients.
    pub sdk: SdkConfig,
}

/// Loads the SDK configuration (region from the Lambda environment, else `us-east-1`).
pub async fn sdk_config() -> SdkConfig {
    tally_store::aws::sdk_config(None).await
}

/// Opens the DynamoDB store named by [`env::TABLE`].
pub async fn store(env: &Env) -> Result<Store, EnvError> {
    let table = env.required(env::TABLE)?;
    let sdk = sdk_config().await;
    let mut dynamo = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), table);
    // Only the aggregator applies batches, so only it reads the counter format's setting.
    if env.lists(env::WRITER_SLOTS) {
        dynamo = dynamo.with_writer_slots(env.writer_slots()?);
    }
    let dynamo = Arc::new(dynamo);
    Ok(Store {
        tenants: dynamo.clone(),
        usage: dynamo.clone(),
        reports: dynamo.clone(),
        dynamo,
        sdk,
    })
}

/// The cold start, up to the store, of the functions that check none of their own settings
/// before opening it (api, ingest, stripe-webhook; billing and the aggregator check theirs
/// first, so that a bad setting fails before any connection): the reader of its variables
/// (`allowed`, one of [`env`]'s lists), its logs and metrics ([`Telemetry::init`] for
/// `function`, first, so that everything after it is logged), and the store ([`store`]).
pub async fn start(
    allowed: &'static [&'static str],
    function: &'static str,
) -> Result<(Env, Telemetry, Store), EnvError> {
    let env = Env::new(allowed);
    let telemetry = Telemetry::init(&env, function)?;
    let store = store(&env).await?;
    Ok((env, telemetry, store))
}

/// Opens the queue ingest publishes to: [`env::QUEUE_URL`] or [`env::STREAM`], as
/// [`env::TRANSPORT`] says.
pub fn queue(env: &Env, store: &Store) -> Result<Arc<dyn EventQueue>, EnvError> {
    Ok(match env.transport()? {
        Transport::Sqs => {
            let url = env.required(env::QUEUE_URL)?;
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(EnvError::invalid(
                    env::QUEUE_URL,
                    &url,
                    "must be the queue's URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)",
                ));
            }
            Arc::new(SqsQueue::new(aws_sdk_sqs::Client::new(&store.sdk), url))
        }
        Transport::Kinesis => Arc::new(KinesisQueue::with_config(
            aws_sdk_kinesis::Client::new(&store.sdk),
            env.required(env::STREAM)?,
            store.dynamo.client().clone(),
            store.dynamo.table().to_owned(),
            KINESIS_CONSUMER,
            KinesisConfig {
                key_spread: env.kinesis_key_spread()?,
                ..KinesisConfig::default()
            },
        )),
    })
}
