//! The fault-injection property test ([`tally_tests::faults`]) on the AWS backends in the
//! emulator: DynamoDB + SQS (200 schedules), SQLite + SQS (50) and DynamoDB + Kinesis (20).
//!
//! Every schedule gets a fresh table (moto's transactions snapshot the whole table, so a
//! table shared by 200 schedules makes the later ones slow) and fresh org ids. Four SQS
//! schedules run at once, each on a queue of its own; the Kinesis schedules run one at a
//! time on one stream. SQS counts visibility in whole seconds; waiting a second per
//! redelivery would make 200 schedules far too slow, so redelivery is mostly injected by
//! the decorator, which hands out unacknowledged deliveries again after 300 ms (and at once
//! on a `Redeliver` fault). SQS's own 1 s visibility timeout still applies underneath.
//!
//! `every_counter_is_exact_under_random_faults_on_sqlite_and_sqs` runs the SQS property on
//! the SQLite store: a failure in both SQS variants points at the SQS adapter or the
//! harness, one only on DynamoDB at the DynamoDB store.
//!
//! Needs `TALLY_TEST_AWS_ENDPOINT`; without it the tests fail and say how to run them.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;

use tally_core::ports::{EventQueue, UsageStore};
use tally_store::kinesis::KinesisConfig;
use tally_store::sqlite::SqliteStore;
use tally_store::sqs::{self, SqsConfig, SqsQueue};
use tally_tests::aws;
use tally_tests::faults::{Harness, StoreMaker, run_property};

/// Runs the property on the emulator: `cases` schedules of `events` distinct events each, on
/// the harness `harness` builds from the SDK configuration.
fn run_on_emulator(
    harness: impl AsyncFnOnce(SdkConfig) -> Harness,
    cases: u32,
    events: std::ops::Range<usize>,
    label: &str,
) {
    aws::endpoint();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let harness = rt.block_on(async { harness(aws::sdk_config().await).await });
    run_property(&rt, harness, cases, events, label);
}

/// A DynamoDB store on a fresh table named from `prefix`.
async fn fresh_dynamo(config: &SdkConfig, prefix: &str) -> Arc<dyn UsageStore> {
    Arc::new(aws::fresh_dynamo_store(config, prefix).await)
}

/// A fresh table per schedule: moto's transactions snapshot the whole table, so one table
/// shared by 200 schedules makes the later ones several times slower. Creating a table in
/// the emulator takes milliseconds.
fn fresh_tables(config: SdkConfig) -> StoreMaker {
    Box::new(move || {
        let config = config.clone();
        Box::pin(async move { fresh_dynamo(&config, "tally-faults").await })
    })
}

/// `n` fresh SQS queues (each with its dead-letter queue), one per schedule running at once.
async fn sqs_queues(config: &SdkConfig, n: usize) -> Vec<Arc<dyn EventQueue>> {
    let client = aws_sdk_sqs::Client::new(config);
    let mut queues = Vec::new();
    for _ in 0..n {
        let (url, _dlq) = sqs::create_queues(&client, &aws::fresh_name("tally-faults"))
            .await
            .unwrap();
        queues.push(Arc::new(SqsQueue::with_config(
            client.clone(),
            url,
            SqsConfig {
                visibility_timeout: Duration::from_secs(1),
                ..SqsConfig::default()
            },
        )) as Arc<dyn EventQueue>);
    }
    queues
}

/// The SQS harness on `store`/`new_store`, with [`SQS_AT_ONCE`] fresh queues.
async fn sqs_harness(
    config: &SdkConfig,
    store: Arc<dyn UsageStore>,
    new_store: Option<StoreMaker>,
) -> Harness {
    Harness {
        store,
        new_store,
        queues: sqs_queues(config, SQS_AT_ONCE).await,
        // Fast enough to redeliver many times per schedule, slow enough that most applies
        // finish first: each redelivery is more emulator work for every schedule.
        reoffer_after: Duration::from_millis(300),
        // Each idle SQS receive is a couple of short polls (SQS waits in whole seconds).
        idle_wait: Duration::from_millis(250),
        drain_timeout: Duration::from_secs(60),
        use_depth: true,
        check_every: Duration::from_millis(100),
    }
}

/// Schedules run at once on SQS, each on its own queue: a schedule spends most of its time
/// waiting (for redeliveries, for the emulator), so four overlap well on two cores; more
/// only queue up behind the emulator's one DynamoDB lock.
const SQS_AT_ONCE: usize = 4;

/// Distinct events per SQS schedule: enough for several batches, several messages per org
/// and a fault or two per batch; the emulator's cost is per event written, and the test
/// command runs 200 schedules.
const SQS_EVENTS: std::ops::Range<usize> = 10..19;

#[test]
fn every_counter_is_exact_under_random_faults_on_dynamodb_and_sqs() {
    let harness = async |config: SdkConfig| {
        let store = fresh_dynamo(&config, "tally-faults").await;
        sqs_harness(&config, store, Some(fresh_tables(config.clone()))).await
    };
    run_on_emulator(harness, 200, SQS_EVENTS, "dynamodb + sqs");
}

/// The same property with the SQLite store behind the SQS queue: it tells a fault of the
/// SQS adapter or the harness (it fails here too) from one of the DynamoDB store.
#[test]
fn every_counter_is_exact_under_random_faults_on_sqlite_and_sqs() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("tally.db")).unwrap();
    let harness = async |config: SdkConfig| sqs_harness(&config, Arc::new(store), None).await;
    run_on_emulator(harness, 50, SQS_EVENTS, "sqlite + sqs");
}

#[test]
fn every_counter_is_exact_under_random_faults_on_dynamodb_and_kinesis() {
    let harness = async |config: SdkConfig| {
        let kinesis = KinesisConfig {
            visibility_timeout: Duration::from_millis(300),
            poll_interval: Duration::from_millis(50),
            ..KinesisConfig::default()
        };
        let queue = aws::fresh_kinesis_queue(&config, "tally-faults", "faults", kinesis).await;
        Harness {
            store: fresh_dynamo(&config, "tally-faults-k").await,
            new_store: Some(fresh_tables(config.clone())),
            queues: vec![Arc::new(queue)],
            reoffer_after: Duration::from_millis(150),
            idle_wait: Duration::from_millis(60),
            drain_timeout: Duration::from_secs(60),
            // Kinesis depth spends GetRecords calls; the decorator's outstanding count and
            // the counters say when a schedule is done.
            use_depth: false,
            check_every: Duration::from_millis(100),
        }
    };
    run_on_emulator(harness, 20, 20..41, "dynamodb + kinesis");
}
