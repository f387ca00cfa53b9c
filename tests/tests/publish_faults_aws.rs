//! Partial failures of the queue publishers' batch sends, injected by the fault proxy
//! ([`tally_tests::fault_proxy`]) between the SDK and the emulator.
//!
//! - `sqs_publish_resends_only_the_failed_entries`: `SqsQueue::publish` of 40 one-event
//!   messages (40 orgs) while the proxy throttles every third `SendMessageBatch` call whole
//!   (`RequestThrottled`, the first one included) and fails each entry of the others with
//!   probability 0.3 (`Failed`, `InternalError`, not the sender's fault): nothing is reported failed,
//!   the proxy forwarded exactly 40 entries (an entry SQS took is never sent again), and the
//!   queue, read straight from the emulator, holds each event exactly once.
//! - `kinesis_publish_resends_only_the_failed_records`: the same for `KinesisQueue::publish`
//!   and `PutRecords` (calls throttled whole with `ProvisionedThroughputExceededException`;
//!   records failed with `ProvisionedThroughputExceededException` or `InternalFailure`,
//!   `FailedRecordCount` above zero), published in four calls of ten events.
//!
//! Each test then plants a duplicate (one event published again) and shows the
//! exactly-once check catches it. The seed is printed; `TALLY_PUBLISH_SEED` replays it.
//!
//! Needs `TALLY_TEST_AWS_ENDPOINT`; without it the tests fail and say how to run them.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use tally_core::backoff::Backoff;
use tally_core::event::Event;
use tally_core::ports::EventQueue;
use tally_store::kinesis::{KinesisConfig, KinesisQueue, create_stream};
use tally_store::sqs::{self, SqsConfig, SqsQueue};
use tally_tests::aws;
use tally_tests::conformance::fixtures::{event, fresh_org, fresh_project};
use tally_tests::fault_proxy::{FaultConfig, FaultProxy};
use tokio::time::Instant;

/// Events published per test, one org each (so one message or record each).
const EVENTS: usize = 40;
/// Probability that the proxy fails an entry.
const RATE: f64 = 0.3;

/// Enough attempts that an entry failing every one (0.3^12) never happens.
fn patient() -> Backoff {
    Backoff::new(12, Duration::from_millis(2), Duration::from_millis(20))
}

fn seed() -> u64 {
    let seed = std::env::var("TALLY_PUBLISH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("publish faults: TALLY_PUBLISH_SEED={seed}");
    seed
}

fn events(tag: &str) -> Vec<Event> {
    (0..EVENTS)
        .map(|i| {
            event(
                &fresh_org(),
                &fresh_project(),
                &format!("{tag}-{i}"),
                "api_calls",
                "1",
                "2026-11-26T10:00:00Z",
            )
        })
        .collect()
}

/// `None` if `got` holds each of `want` exactly once and nothing else, else what differs.
fn exactly_once(want: &[Event], got: &[Event]) -> Option<String> {
    let mut count: BTreeMap<String, i64> = BTreeMap::new();
    for e in want {
        *count.entry(format!("{}/{}", e.org_id, e.id)).or_default() -= 1;
    }
    for e in got {
        *count.entry(format!("{}/{}", e.org_id, e.id)).or_default() += 1;
    }
    let off: Vec<String> = count
        .into_iter()
        .filter(|(_, c)| *c != 0)
        .map(|(k, c)| format!("{k}: {c:+}"))
        .collect();
    (!off.is_empty()).then(|| off.join(", "))
}

/// Receives (acknowledging) from `q` until `want` events arrived; fails the test after 30 s.
async fn take(q: &dyn EventQueue, want: usize) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got.len() < want {
        assert!(
            Instant::now() < deadline,
            "only {} of {want} events arrived",
            got.len()
        );
        let deliveries = q.receive(100, Duration::from_millis(500)).await.unwrap();
        let receipts: Vec<String> = deliveries.iter().map(|d| d.receipt.clone()).collect();
        for d in deliveries {
            got.extend(d.events);
        }
        if !receipts.is_empty() {
            q.ack(&receipts).await.unwrap();
        }
    }
    got
}

/// The proxy failed some `what`s (entries, records) and throttled some calls, and yet
/// forwarded each of the [`EVENTS`] exactly once: no resend of one the backend took.
fn assert_failed_then_forwarded_once(proxy: &FaultProxy, what: &str, seed: u64) {
    assert!(proxy.entries_failed() > 0, "no {what} failed (seed {seed})");
    assert!(proxy.calls_failed() > 0, "no call was throttled");
    assert_eq!(
        proxy.entries_forwarded(),
        EVENTS as u64,
        "an {what} the backend took was sent again (seed {seed})"
    );
}

/// Reads `sent` back from `reader` (a direct client, past the proxy) and checks each event
/// came exactly once; then plants a duplicate and sees the check catch it.
async fn assert_read_back_exactly_once(reader: &dyn EventQueue, sent: &[Event], seed: u64) {
    let mut got = take(reader, EVENTS).await;
    assert_eq!(exactly_once(sent, &got), None, "seed {seed}");

    // A planted duplicate: the check sees it.
    let report = reader.publish(&sent[..1]).await.unwrap();
    assert!(report.failed.is_empty());
    got.extend(take(reader, 1).await);
    assert!(
        exactly_once(sent, &got).is_some(),
        "a duplicate went unseen"
    );
}

async fn proxy(seed: u64) -> FaultProxy {
    let proxy = FaultProxy::start(
        &aws::endpoint(),
        FaultConfig {
            seed,
            ..FaultConfig::quiet()
        },
    )
    .await
    .unwrap();
    proxy.fail_entries(RATE);
    proxy.fail_calls(3);
    proxy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_publish_resends_only_the_failed_entries() {
    let seed = seed();
    let proxy = proxy(seed).await;
    let direct = aws_sdk_sqs::Client::new(&aws::sdk_config().await);
    let (url, _) = sqs::create_queues(&direct, &aws::fresh_name("tally-sqs-pf"))
        .await
        .unwrap();
    let config = SqsConfig {
        retry: patient(),
        ..SqsConfig::default()
    };
    let proxied = aws_sdk_sqs::Client::new(&aws::sdk_config_at(&proxy.url()).await);
    let publisher = SqsQueue::with_config(proxied, url.clone(), config.clone());
    let sent = events("sqs");
    let report = publisher.publish(&sent).await.unwrap();
    assert!(
        report.failed.is_empty(),
        "{:?} (seed {seed})",
        report.failed
    );
    assert_failed_then_forwarded_once(&proxy, "entry", seed);

    let reader = SqsQueue::with_config(direct, url, config);
    assert_read_back_exactly_once(&reader, &sent, seed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_publish_resends_only_the_failed_records() {
    let seed = seed();
    let proxy = proxy(seed).await;
    let direct_config = aws::sdk_config().await;
    let kinesis = aws_sdk_kinesis::Client::new(&direct_config);
    let dynamo = aws_sdk_dynamodb::Client::new(&direct_config);
    let stream = aws::fresh_name("tally-kin-pf");
    create_stream(&kinesis, &stream, 1).await.unwrap();
    let checkpoints = aws::fresh_name("tally-kin-pf-cp");
    aws::create_pk_sk_table(&dynamo, &checkpoints).await;
    let config = KinesisConfig {
        retry: patient(),
        poll_interval: Duration::from_millis(50),
        ..KinesisConfig::default()
    };
    let proxied = aws_sdk_kinesis::Client::new(&aws::sdk_config_at(&proxy.url()).await);
    let publisher = KinesisQueue::with_config(
        proxied,
        stream.clone(),
        dynamo.clone(),
        checkpoints.clone(),
        "publisher",
        config.clone(),
    );
    let sent = events("kin");
    for part in sent.chunks(10) {
        let report = publisher.publish(part).await.unwrap();
        assert!(
            report.failed.is_empty(),
            "{:?} (seed {seed})",
            report.failed
        );
    }
    assert_failed_then_forwarded_once(&proxy, "record", seed);

    let reader = KinesisQueue::with_config(kinesis, stream, dynamo, checkpoints, "reader", config);
    assert_read_back_exactly_once(&reader, &sent, seed).await;
}
