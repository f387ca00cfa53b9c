//! The queue conformance suite against [`KinesisQueue`] on the emulator, plus what only the
//! Kinesis consumer has: checkpoints that never pass an unacknowledged record, a reopened
//! consumer resuming from its checkpoint, and several shards.
//!
//! Every test makes its own stream (`tally-kinesis-<random>`, one shard unless it says
//! otherwise) and its own checkpoint table (a minimal `pk`/`sk` table), with a 500 ms
//! visibility timeout (30 s in the adapter-specific tests) and 50 ms polls. The endpoint comes from `TALLY_TEST_AWS_ENDPOINT`;
//! `bash scripts/test.sh` starts the emulator and sets it.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use tally_core::event::Event;
use tally_core::ports::{Delivery, EventQueue};
use tally_store::kinesis::{self, KinesisConfig, KinesisQueue};
use tally_tests::aws;
use tally_tests::conformance::fixtures::{event, fresh_org, fresh_project};
use tally_tests::conformance::queue::{QueueFactory, bodies_and_reasons};
use tokio::time::Instant;

const VISIBILITY: Duration = Duration::from_millis(500);
const LONG_VISIBILITY: Duration = Duration::from_secs(30);
const CONSUMER: &str = "aggregator";

/// One fresh stream and checkpoint table on the emulator.
struct KinesisFactory {
    kinesis: aws_sdk_kinesis::Client,
    dynamo: aws_sdk_dynamodb::Client,
    stream: String,
    table: String,
    /// Short for the conformance suite, which waits for it to pass; long for the tests
    /// below, which must not see a redelivery however slow the machine is.
    visibility: Duration,
}

impl KinesisFactory {
    async fn new() -> Self {
        Self::with_shards(1, VISIBILITY).await
    }

    async fn with_shards(shards: u32, visibility: Duration) -> Self {
        let config = aws::sdk_config().await;
        let kinesis = aws_sdk_kinesis::Client::new(&config);
        let dynamo = aws_sdk_dynamodb::Client::new(&config);
        let stream = aws::fresh_name("tally-kinesis");
        let table = aws::fresh_name("tally-kinesis-table");
        kinesis::create_stream(&kinesis, &stream, shards)
            .await
            .unwrap();
        aws::create_pk_sk_table(&dynamo, &table).await;
        KinesisFactory {
            kinesis,
            dynamo,
            stream,
            table,
            visibility,
        }
    }

    fn queue(&self) -> KinesisQueue {
        self.consumer(CONSUMER)
    }

    fn consumer(&self, name: &str) -> KinesisQueue {
        KinesisQueue::with_config(
            self.kinesis.clone(),
            self.stream.clone(),
            self.dynamo.clone(),
            self.table.clone(),
            name,
            KinesisConfig {
                visibility_timeout: self.visibility,
                poll_interval: Duration::from_millis(50),
                ..KinesisConfig::default()
            },
        )
    }
}

#[async_trait]
impl QueueFactory for KinesisFactory {
    type Queue = KinesisQueue;

    async fn open(&self) -> KinesisQueue {
        self.queue()
    }

    fn visibility_timeout(&self) -> Duration {
        self.visibility
    }

    async fn inject_malformed(&self, body: &str) {
        self.queue()
            .publish_raw("malformed", body.as_bytes())
            .await
            .unwrap();
    }

    async fn dead_letters(&self) -> Vec<(String, String)> {
        bodies_and_reasons(self.queue().dead_letters().await, |d| (d.body, d.reason))
    }
}

mod queue {
    use super::*;
    tally_tests::queue_conformance!(KinesisFactory::new().await);
}

fn one_event(tag: &str) -> Event {
    event(
        &fresh_org(),
        &fresh_project(),
        tag,
        "api_calls",
        "1",
        "2026-11-26T10:00:00Z",
    )
}

/// Publishes one record per event (separate calls, so each is its own record).
async fn publish_each(q: &KinesisQueue, events: &[Event]) {
    for e in events {
        let report = q.publish(std::slice::from_ref(e)).await.unwrap();
        assert!(report.failed.is_empty(), "{:?}", report.failed);
    }
}

/// Receives (without acknowledging) until `want` deliveries arrived or 10 s passed, in
/// sequence order.
async fn take(q: &KinesisQueue, want: usize) -> Vec<Delivery> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got: Vec<Delivery> = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        got.extend(q.receive(100, Duration::from_millis(500)).await.unwrap());
    }
    got.sort_by(|a, b| {
        let (a, b) = (seq_of(a), seq_of(b));
        (a.len(), a).cmp(&(b.len(), b))
    });
    got
}

fn seq_of(d: &Delivery) -> String {
    d.receipt.rsplit_once('/').unwrap().1.to_owned()
}

fn shard_of(d: &Delivery) -> String {
    d.receipt.rsplit_once('/').unwrap().0.to_owned()
}

/// Takes as many deliveries from `q` as `sent` has events, checks they carry exactly the
/// events of `sent` (by id), and returns them with the shards they were read from.
async fn take_sent(q: &KinesisQueue, sent: &[Event]) -> (Vec<Delivery>, BTreeSet<String>) {
    let got = take(q, sent.len()).await;
    let got_ids: BTreeSet<String> = ids(&got).into_iter().collect();
    let want: BTreeSet<String> = sent.iter().map(|e| e.id.as_str().to_owned()).collect();
    assert_eq!(got_ids, want);
    let shards = got.iter().map(shard_of).collect();
    (got, shards)
}

fn ids(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .flat_map(|d| d.events.iter().map(|e| e.id.as_str().to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_never_passes_an_unacked_record() {
    let f = KinesisFactory::with_shards(1, LONG_VISIBILITY).await;
    let q = f.queue();
    let sent: Vec<Event> = (0..3).map(|i| one_event(&format!("c{i}"))).collect();
    publish_each(&q, &sent).await;
    let got = take(&q, 3).await;
    assert_eq!(ids(&got), vec!["c0", "c1", "c2"]);
    let shard = shard_of(&got[0]);
    assert!(q.checkpoints().await.unwrap().is_empty());

    // Done: 0 and 2. The checkpoint may move over 0, not over 1.
    q.ack(&[got[0].receipt.clone(), got[2].receipt.clone()])
        .await
        .unwrap();
    assert_eq!(q.checkpoints().await.unwrap()[&shard], seq_of(&got[0]));
    assert_eq!(q.depth().await.unwrap(), 1, "only c1 is left");

    // 1 done: the checkpoint jumps over both.
    q.ack(&[got[1].receipt.clone()]).await.unwrap();
    assert_eq!(q.checkpoints().await.unwrap()[&shard], seq_of(&got[2]));
    assert_eq!(q.depth().await.unwrap(), 0);
    // A late or repeated ack does not move it back.
    q.ack(&[got[0].receipt.clone()]).await.unwrap();
    assert_eq!(q.checkpoints().await.unwrap()[&shard], seq_of(&got[2]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_consumer_resumes_after_its_checkpoint_without_losing_unacked_records() {
    let f = KinesisFactory::with_shards(1, LONG_VISIBILITY).await;
    let sent: Vec<Event> = (0..4).map(|i| one_event(&format!("r{i}"))).collect();
    {
        let q = f.queue();
        publish_each(&q, &sent).await;
        let got = take(&q, 4).await;
        assert_eq!(ids(&got), vec!["r0", "r1", "r2", "r3"]);
        // r0 and r2 applied; r1 and r3 still being worked on when the process dies.
        q.ack(&[got[0].receipt.clone(), got[2].receipt.clone()])
            .await
            .unwrap();
    }
    // A new process with the same consumer name: r0 is behind the checkpoint, r1 was never
    // acknowledged, r2 was but sits after r1, so it comes back too (harmless: the store
    // applies events once), and so does r3. Right away, not after a visibility timeout.
    let q = f.queue();
    let started = Instant::now();
    let got = take(&q, 3).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(ids(&got), vec!["r1", "r2", "r3"]);
    assert!(got.iter().all(|d| d.receive_count == 1));
    let receipts: Vec<String> = got.iter().map(|d| d.receipt.clone()).collect();
    q.ack(&receipts).await.unwrap();
    drop(q);

    // And after everything is acknowledged, a third process finds nothing.
    let q = f.queue();
    let more = q.receive(100, Duration::from_secs(1)).await.unwrap();
    assert!(more.is_empty(), "{more:?}");
    assert_eq!(q.depth().await.unwrap(), 0);

    // Another consumer name has its own checkpoints and reads everything.
    let other = f.consumer("reporting");
    let all = take(&other, 4).await;
    assert_eq!(ids(&all), vec!["r0", "r1", "r2", "r3"]);
}

/// A factory of a two-shard stream, created a second time on the way (creating is
/// idempotent: the stream exists already), and a handle onto it.
async fn two_shards() -> (KinesisFactory, KinesisQueue) {
    let f = KinesisFactory::with_shards(2, LONG_VISIBILITY).await;
    kinesis::create_stream(&f.kinesis, &f.stream, 2)
        .await
        .unwrap();
    let q = f.queue();
    (f, q)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_shards_and_orgs_are_all_read_and_checkpointed() {
    let (_factory, q) = two_shards().await;
    // One publish of many orgs: one record per org, spread over the shards by org id.
    let sent: Vec<Event> = (0..20).map(|i| one_event(&format!("s{i:02}"))).collect();
    let report = q.publish(&sent).await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let (got, shards) = take_sent(&q, &sent).await;
    assert_eq!(shards.len(), 2, "20 orgs land on both shards");
    let receipts: Vec<String> = got.iter().map(|d| d.receipt.clone()).collect();
    q.ack(&receipts).await.unwrap();
    let checkpoints = q.checkpoints().await.unwrap();
    assert_eq!(checkpoints.keys().cloned().collect::<BTreeSet<_>>(), shards);
    assert_eq!(q.depth().await.unwrap(), 0);
}

/// One org's records are no longer pinned to one shard: with the default key spread its
/// messages carry `<org>#<n>` keys and land on every shard, and all are read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_orgs_records_spread_over_the_shards() {
    let (f, q) = two_shards().await;
    let (org, project) = (fresh_org(), fresh_project());
    let sent: Vec<Event> = (0..24)
        .map(|i| {
            event(
                &org,
                &project,
                &format!("hot{i:02}"),
                "api_calls",
                "1",
                "2026-11-26T10:00:00Z",
            )
        })
        .collect();
    publish_each(&q, &sent).await;
    let (_, shards) = take_sent(&q, &sent).await;
    assert_eq!(shards.len(), 2, "one org's 24 records land on both shards");
    // The keys as Kinesis stored them: the org, then '#' and a spread index.
    let mut keys = BTreeSet::new();
    for shard in &shards {
        let iterator = f
            .kinesis
            .get_shard_iterator()
            .stream_name(&f.stream)
            .shard_id(shard)
            .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap()
            .shard_iterator
            .unwrap();
        let records = f
            .kinesis
            .get_records()
            .shard_iterator(iterator)
            .send()
            .await
            .unwrap()
            .records;
        keys.extend(records.into_iter().filter_map(|r| r.partition_key));
    }
    assert!(keys.len() > 2, "{keys:?}");
    for k in &keys {
        assert_eq!(
            tally_core::envelope::org_of_partition_key(k),
            org.as_str(),
            "{k}"
        );
        assert!(k.starts_with(&format!("{org}#")), "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_keeps_the_record_and_lets_the_checkpoint_pass() {
    let f = KinesisFactory::with_shards(1, LONG_VISIBILITY).await;
    let q = f.queue();
    let before = one_event("before");
    publish_each(&q, std::slice::from_ref(&before)).await;
    q.publish_raw("org_whatever", br#"{"v":7,"events":[]}"#)
        .await
        .unwrap();
    let after = one_event("after");
    publish_each(&q, std::slice::from_ref(&after)).await;
    let got = take(&q, 2).await;
    assert_eq!(ids(&got), vec!["before", "after"]);
    let receipts: Vec<String> = got.iter().map(|d| d.receipt.clone()).collect();
    q.ack(&receipts).await.unwrap();
    let shard = shard_of(&got[1]);
    assert_eq!(q.checkpoints().await.unwrap()[&shard], seq_of(&got[1]));
    let dead = q.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].body, r#"{"v":7,"events":[]}"#);
    assert_eq!(dead[0].partition_key, "org_whatever");
    assert!(dead[0].reason.contains("version 7"), "{}", dead[0].reason);
    assert!(!dead[0].truncated);
    assert_eq!(q.depth().await.unwrap(), 0);

    // A dead letter with nothing after it moves the checkpoint by itself (no ack to wait
    // for), so a restart does not read it again.
    q.publish_raw("org_whatever", b"trailing garbage")
        .await
        .unwrap();
    let none = q.receive(100, Duration::from_secs(1)).await.unwrap();
    assert!(none.is_empty(), "{none:?}");
    let dead = q.dead_letters().await.unwrap();
    let last = dead.iter().find(|d| d.body == "trailing garbage").unwrap();
    assert_eq!(q.checkpoints().await.unwrap()[&shard], last.sequence_number);
    assert_eq!(q.depth().await.unwrap(), 0);
}
