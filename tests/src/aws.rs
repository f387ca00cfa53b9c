//! Shared helpers for tests against the AWS emulator (moto, started by `scripts/test.sh`).
//!
//! The endpoint comes from `TALLY_TEST_AWS_ENDPOINT`; without it [`endpoint`] fails the test
//! with a message that says how to run the suite, so an AWS test never passes by skipping.
//! Credentials are dummies (`test`/`test`) unless the environment sets real-looking ones,
//! the region falls back to `us-east-1`, and every test names its own queues, streams and
//! tables with [`fresh_name`], because the emulator's state is shared by all tests.

// Test support code: a failed unwrap here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use aws_sdk_sqs::config::{Credentials, SharedCredentialsProvider};
use tally_store::dynamodb::{DynamoStore, create_table};
use tally_store::kinesis::{KinesisConfig, KinesisQueue, create_stream};

/// The environment variable naming the emulator's endpoint.
pub const ENDPOINT_VAR: &str = "TALLY_TEST_AWS_ENDPOINT";

/// The emulator's endpoint; panics (fails the test) with instructions when it is not set.
pub fn endpoint() -> String {
    match std::env::var(ENDPOINT_VAR) {
        Ok(e) if !e.trim().is_empty() => e.trim().to_owned(),
        _ => panic!(
            "{ENDPOINT_VAR} is not set: the AWS adapter tests need the emulator. Run them \
             with `bash scripts/test.sh`, which starts moto and sets it (or start \
             `moto_server -H 127.0.0.1 -p PORT` yourself and export \
             {ENDPOINT_VAR}=http://127.0.0.1:PORT)."
        ),
    }
}

/// The SDK configuration for the emulator: `tally_store::aws::sdk_config` on [`endpoint`],
/// with the dummy credentials `test`/`test` when `AWS_ACCESS_KEY_ID` is not set.
pub async fn sdk_config() -> SdkConfig {
    sdk_config_at(&endpoint()).await
}

/// The SDK configuration of [`sdk_config`] on another endpoint (e.g. a
/// [`FaultProxy`](crate::fault_proxy::FaultProxy) in front of the emulator).
pub async fn sdk_config_at(endpoint: &str) -> SdkConfig {
    let config = tally_store::aws::sdk_config(Some(endpoint)).await;
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
        return config;
    }
    config
        .into_builder()
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "test",
            "test",
            None,
            None,
            "tally-tests",
        )))
        .build()
}

/// `<prefix>-<12 random hex digits>`: a queue, stream or table name no other test uses.
pub fn fresh_name(prefix: &str) -> String {
    format!("{prefix}-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// A [`DynamoStore`] on a fresh table of Tally's layout named from `prefix`: how a test on
/// the emulator gets a store no other test writes to.
pub async fn fresh_dynamo_store(sdk: &SdkConfig, prefix: &str) -> DynamoStore {
    let client = aws_sdk_dynamodb::Client::new(sdk);
    let table = fresh_name(prefix);
    create_table(&client, &table)
        .await
        .unwrap_or_else(|e| panic!("cannot create the table {table}: {e}"));
    DynamoStore::new(client, table)
}

/// Creates a DynamoDB table keyed by `pk` (S, hash) and `sk` (S, range), on demand, if it
/// does not exist: the key schema of Tally's single table, enough for tests that only need
/// somewhere to put items (e.g. the Kinesis consumer's checkpoints).
pub async fn create_pk_sk_table(client: &aws_sdk_dynamodb::Client, name: &str) {
    let attribute = |n: &str| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .unwrap()
    };
    let key = |n: &str, t: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(n)
            .key_type(t)
            .build()
            .unwrap()
    };
    let result = client
        .create_table()
        .table_name(name)
        .attribute_definitions(attribute("pk"))
        .attribute_definitions(attribute("sk"))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await;
    if let Err(e) = result {
        let exists = e
            .as_service_error()
            .is_some_and(|s| s.is_resource_in_use_exception());
        assert!(
            exists,
            "creating table {name}: {}",
            aws_sdk_dynamodb::error::DisplayErrorContext(&e)
        );
    }
}

/// A Kinesis consumer named `consumer` on a fresh one-shard stream, with its checkpoints in a
/// fresh table (both named from `prefix`), configured by `config`.
pub async fn fresh_kinesis_queue(
    sdk: &SdkConfig,
    prefix: &str,
    consumer: &str,
    config: KinesisConfig,
) -> KinesisQueue {
    let dynamo = aws_sdk_dynamodb::Client::new(sdk);
    let checkpoints = fresh_name(&format!("{prefix}-cp"));
    create_pk_sk_table(&dynamo, &checkpoints).await;
    let kinesis = aws_sdk_kinesis::Client::new(sdk);
    let stream = fresh_name(prefix);
    create_stream(&kinesis, &stream, 1).await.unwrap();
    KinesisQueue::with_config(kinesis, stream, dynamo, checkpoints, consumer, config)
}
