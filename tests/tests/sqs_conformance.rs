//! The queue conformance suite against [`SqsQueue`] on the emulator, plus what only SQS
//! has: packing into 256 KiB messages, the dead-letter queue, the redrive policy,
//! visibility extension and multi-event messages that would overshoot `max_events`.
//!
//! Every test makes its own queue pair (`tally-sqs-<random>` and its `-dlq`), with a 1 s
//! visibility timeout (SQS counts it in whole seconds). The endpoint comes from
//! `TALLY_TEST_AWS_ENDPOINT`; `bash scripts/test.sh` starts the emulator and sets it.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{Message, QueueAttributeName};
use tally_core::event::Event;
use tally_core::ports::{Delivery, EventQueue};
use tally_store::coalesce::CoalescingQueue;
use tally_store::sqs::{self, MAX_MESSAGE_BYTES, SqsConfig, SqsQueue};
use tally_tests::aws;
use tally_tests::conformance::fixtures::{event, fresh_event, fresh_org, fresh_project};
use tally_tests::conformance::queue::{QueueFactory, bodies_and_reasons, receive_more};
use tokio::time::Instant;

const VISIBILITY: Duration = Duration::from_secs(1);

/// One fresh queue pair on the emulator.
struct SqsFactory {
    client: Client,
    url: String,
    dlq_url: String,
}

impl SqsFactory {
    async fn new() -> Self {
        let config = aws::sdk_config().await;
        let client = Client::new(&config);
        let name = aws::fresh_name("tally-sqs");
        let (url, dlq_url) = sqs::create_queues(&client, &name).await.unwrap();
        SqsFactory {
            client,
            url,
            dlq_url,
        }
    }

    /// A handle that finds its dead-letter queue through the redrive policy.
    fn queue(&self) -> SqsQueue {
        SqsQueue::with_config(
            self.client.clone(),
            self.url.clone(),
            SqsConfig {
                visibility_timeout: VISIBILITY,
                ..SqsConfig::default()
            },
        )
    }

    /// Up to 10 raw messages of the queue at `url`, with their attributes, looked at
    /// without taking them (visibility 0).
    async fn peek(&self, url: &str) -> Vec<Message> {
        self.client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default()
    }
}

#[async_trait]
impl QueueFactory for SqsFactory {
    type Queue = SqsQueue;

    async fn open(&self) -> SqsQueue {
        self.queue()
    }

    fn visibility_timeout(&self) -> Duration {
        VISIBILITY
    }

    async fn inject_malformed(&self, body: &str) {
        self.queue().publish_raw(body).await.unwrap();
    }

    async fn dead_letters(&self) -> Vec<(String, String)> {
        bodies_and_reasons(self.queue().dead_letters(100).await, |d| {
            (d.body, d.reason.unwrap_or_default())
        })
    }
}

mod queue {
    use super::*;
    tally_tests::queue_conformance!(SqsFactory::new().await);
}

mod replay {
    use super::*;
    tally_tests::replay_conformance!(SqsFactory::new().await);
}

/// The same queue behind [`CoalescingQueue`], as `tally serve` opens it: merging concurrent
/// publishes must keep every promise the suite checks.
struct CoalescedSqsFactory(SqsFactory);

#[async_trait]
impl QueueFactory for CoalescedSqsFactory {
    type Queue = CoalescingQueue<SqsQueue>;

    async fn open(&self) -> Self::Queue {
        CoalescingQueue::new(self.0.queue())
    }

    fn visibility_timeout(&self) -> Duration {
        VISIBILITY
    }

    async fn inject_malformed(&self, body: &str) {
        self.0.inject_malformed(body).await;
    }

    async fn dead_letters(&self) -> Vec<(String, String)> {
        self.0.dead_letters().await
    }
}

mod coalesced {
    use super::*;
    tally_tests::queue_conformance!(CoalescedSqsFactory(SqsFactory::new().await));
}

/// Events of one org with `blob` bytes of properties each.
fn big_events(n: usize, blob: usize, tag: &str) -> Vec<Event> {
    let org = fresh_org();
    let project = fresh_project();
    (0..n)
        .map(|i| {
            let mut e = event(
                &org,
                &project,
                &format!("{tag}-{i:04}"),
                "api_calls",
                "1",
                "2026-11-26T10:00:00Z",
            );
            e.properties
                .insert("blob".into(), format!("{i:04}{}", "x".repeat(blob)).into());
            e
        })
        .collect()
}

/// Receives until `want` events arrived (acknowledging as it goes) or 15 s passed.
async fn drain(q: &SqsQueue, want: usize, max_events: usize) -> Vec<Delivery> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut got = Vec::new();
    let mut events = 0;
    while events < want && Instant::now() < deadline {
        let batch = q.receive(max_events, Duration::from_secs(1)).await.unwrap();
        let receipts: Vec<String> = batch.iter().map(|d| d.receipt.clone()).collect();
        q.ack(&receipts).await.unwrap();
        events += batch.iter().map(|d| d.events.len()).sum::<usize>();
        got.extend(batch);
    }
    got
}

fn ids(deliveries: &[Delivery]) -> BTreeSet<String> {
    deliveries
        .iter()
        .flat_map(|d| d.events.iter().map(|e| e.id.as_str().to_owned()))
        .collect()
}

async fn wait_for_depth_zero(q: &SqsQueue) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while q.depth().await.unwrap() != 0 {
        assert!(Instant::now() < deadline, "queue never drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_publish_is_split_into_messages_of_at_most_256_kib() {
    let f = SqsFactory::new().await;
    let q = f.queue();
    // ~4 KB of properties each (the validation bound): about 1 MB in all.
    let sent = big_events(240, 4000, "big");
    let report = q.publish(&sent).await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);

    let raw = f.peek(&f.url).await;
    assert!(
        raw.len() >= 4,
        "expected several messages, got {}",
        raw.len()
    );
    let mut raw_events = 0;
    for m in &raw {
        let body = m.body().unwrap();
        assert!(
            body.len() <= MAX_MESSAGE_BYTES,
            "a message of {} bytes",
            body.len()
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["v"], 1);
        raw_events += v["events"].as_array().unwrap().len();
    }
    assert_eq!(raw_events, sent.len());

    let got = drain(&q, sent.len(), 1000).await;
    assert_eq!(
        ids(&got),
        sent.iter().map(|e| e.id.as_str().to_owned()).collect()
    );
    let mut back: Vec<Event> = got.into_iter().flat_map(|d| d.events).collect();
    back.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(back, sent, "events come back exactly as published");
    wait_for_depth_zero(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_go_to_the_dead_letter_queue_with_the_reason() {
    let f = SqsFactory::new().await;
    let q = f.queue();
    let marker = aws::fresh_name("garbage");
    q.publish_raw(&marker).await.unwrap();
    q.publish_raw(r#"{"v":99,"events":[]}"#).await.unwrap();
    let good = big_events(1, 10, "good");
    q.publish(&good).await.unwrap();

    let got = drain(&q, 1, 100).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].events, good);
    // Nothing else is handed out, and the main queue is empty: the bad ones moved.
    assert!(
        q.receive(100, Duration::from_secs(2))
            .await
            .unwrap()
            .is_empty()
    );
    wait_for_depth_zero(&q).await;

    let dead = q.dead_letters(10).await.unwrap();
    let reasons: HashMap<&str, &str> = dead
        .iter()
        .map(|d| (d.body.as_str(), d.reason.as_deref().unwrap_or("")))
        .collect();
    assert!(
        reasons[marker.as_str()].contains("not a Tally event envelope"),
        "{dead:?}"
    );
    assert!(
        reasons[r#"{"v":99,"events":[]}"#].contains("version 99"),
        "{dead:?}"
    );
    // The source message id travels along.
    let raw = f.peek(&f.dlq_url).await;
    assert_eq!(raw.len(), 2);
    for m in raw {
        let attrs = m.message_attributes.unwrap_or_default();
        assert!(attrs.contains_key(sqs::SOURCE_ID_ATTRIBUTE), "{attrs:?}");
        assert!(attrs.contains_key(sqs::REASON_ATTRIBUTE), "{attrs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_queues_is_idempotent_and_sets_the_redrive_policy() {
    let config = aws::sdk_config().await;
    let client = Client::new(&config);
    let name = aws::fresh_name("tally-sqs");
    let first = sqs::create_queues(&client, &name).await.unwrap();
    let again = sqs::create_queues(&client, &name).await.unwrap();
    assert_eq!(first, again);
    assert!(first.1.ends_with(&format!("{name}-dlq")), "{first:?}");
    let attrs = client
        .get_queue_attributes()
        .queue_url(&first.0)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap();
    let policy: serde_json::Value =
        serde_json::from_str(&attrs[&QueueAttributeName::RedrivePolicy]).unwrap();
    assert!(
        policy["deadLetterTargetArn"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{name}-dlq")),
        "{policy}"
    );
    assert_eq!(
        policy["maxReceiveCount"].to_string().trim_matches('"'),
        sqs::MAX_RECEIVE_COUNT.to_string()
    );
    // The handle finds the dead-letter queue through the policy.
    let q = SqsQueue::new(client.clone(), first.0.clone());
    assert_eq!(q.dead_letter_queue_url().await.unwrap(), first.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_visibility_keeps_a_message_hidden() {
    let f = SqsFactory::new().await;
    let q = f.queue();
    let sent = big_events(1, 10, "slow");
    q.publish(&sent).await.unwrap();
    let got = q.receive(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.len(), 1);
    let receipts = vec![got[0].receipt.clone()];
    q.extend_visibility(&receipts, Duration::from_secs(4))
        .await
        .unwrap();
    // Well past the 1 s timeout it would have had, it is still hidden.
    let early = q.receive(10, Duration::from_secs(2)).await.unwrap();
    assert!(early.is_empty(), "{early:?}");
    let later = q.receive(10, Duration::from_secs(6)).await.unwrap();
    assert_eq!(later.len(), 1, "comes back once the extension passes");
    assert_eq!(later[0].receive_count, 2);
    q.ack(&[later[0].receipt.clone()]).await.unwrap();
    wait_for_depth_zero(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_event_messages_that_would_overshoot_wait_for_the_next_receive() {
    let f = SqsFactory::new().await;
    let q = f.queue();
    let mut sent = Vec::new();
    for i in 0..4 {
        let pair = big_events(2, 10, &format!("pair{i}"));
        q.publish(&pair).await.unwrap();
        sent.extend(pair);
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let each = (3, Duration::from_secs(1));
    while let Some(batch) = receive_more(&q, &got, sent.len(), deadline, each).await {
        // Nothing is handed out twice: held-back messages wait in the handle.
        for d in &batch {
            for e in &d.events {
                assert!(
                    !ids(&got).contains(e.id.as_str()),
                    "{} handed out twice",
                    e.id.as_str()
                );
            }
        }
        let receipts: Vec<String> = batch.iter().map(|d| d.receipt.clone()).collect();
        q.ack(&receipts).await.unwrap();
        got.extend(batch);
    }
    assert_eq!(got.len(), 4);
    wait_for_depth_zero(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_too_big_for_any_message_is_reported_failed_and_the_rest_go() {
    let f = SqsFactory::new().await;
    let q = f.queue();
    // Validation never lets such an event through; the adapter still must not lose or
    // panic on it.
    let mut sent = big_events(3, 10, "mixed");
    sent[1]
        .properties
        .insert("huge".into(), "y".repeat(MAX_MESSAGE_BYTES).into());
    let report = q.publish(&sent).await.unwrap();
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    assert_eq!(report.failed[0].0, 1);
    assert!(
        report.failed[0].1.contains("at most"),
        "{}",
        report.failed[0].1
    );
    let got = drain(&q, 2, 100).await;
    assert_eq!(
        ids(&got),
        [&sent[0], &sent[2]]
            .iter()
            .map(|e| e.id.as_str().to_owned())
            .collect()
    );
    wait_for_depth_zero(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_sends_bodies_byte_for_byte_without_the_reason_and_takes_redrive_letters_too() {
    use aws_sdk_sqs::types::MessageAttributeValue;
    use tally_store::replay::{LetterStatus, ReplayRequest};

    let f = SqsFactory::new().await;
    let q = f.queue();
    let (org, project) = (fresh_org(), fresh_project());
    let text = |id: &str| {
        serde_json::to_string(&event(
            &org,
            &project,
            id,
            "api_calls",
            "1",
            "2026-11-26T10:00:00Z",
        ))
        .unwrap()
    };
    // Spacing no encoder writes: a re-encoded copy would not keep it.
    let redriven = format!(r#"{{ "v": 1, "events": [ {} ] }}"#, text("redriven"));
    let set_aside = format!(r#"{{"v":1,  "events":[{}]}}"#, text("set-aside"));
    // What the redrive policy leaves: the body, no attributes.
    f.client
        .send_message()
        .queue_url(&f.dlq_url)
        .message_body(&redriven)
        .send()
        .await
        .unwrap();
    // What Tally's dead-lettering leaves: the body and the reason.
    let reason = MessageAttributeValue::builder()
        .data_type("String")
        .string_value("store unavailable")
        .build()
        .unwrap();
    f.client
        .send_message()
        .queue_url(&f.dlq_url)
        .message_body(&set_aside)
        .message_attributes(sqs::REASON_ATTRIBUTE, reason)
        .send()
        .await
        .unwrap();

    let report = q.replay_dead_letters(&ReplayRequest::all()).await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.letters.len(), 2);
    assert!(
        report
            .letters
            .iter()
            .all(|l| l.status == LetterStatus::Replayed && l.events == 1)
    );
    let reasons: BTreeSet<Option<&str>> =
        report.letters.iter().map(|l| l.reason.as_deref()).collect();
    assert_eq!(reasons, BTreeSet::from([None, Some("store unavailable")]));

    let main = f.peek(&f.url).await;
    let bodies: BTreeSet<&str> = main.iter().filter_map(|m| m.body()).collect();
    assert_eq!(
        bodies,
        BTreeSet::from([redriven.as_str(), set_aside.as_str()])
    );
    for m in &main {
        assert!(
            m.message_attributes.as_ref().is_none_or(HashMap::is_empty),
            "the reason stays behind: {m:?}"
        );
    }
    assert!(f.peek(&f.dlq_url).await.is_empty(), "both left the DLQ");
    let got = drain(&q, 2, 100).await;
    assert_eq!(
        ids(&got),
        BTreeSet::from(["redriven".to_owned(), "set-aside".to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_whose_copy_could_not_be_sent_stays_in_the_dead_letter_queue() {
    use tally_core::backoff::Backoff;
    use tally_store::replay::{LetterStatus, ReplayRequest};

    let f = SqsFactory::new().await;
    let (_, _, e) = fresh_event("kept", "api_calls", "1", "2026-11-26T10:00:00Z");
    f.queue().publish(std::slice::from_ref(&e)).await.unwrap();
    let got = drain_unacked(&f.queue()).await;
    f.queue()
        .dead_letter(&got, "store unavailable")
        .await
        .unwrap();

    // The fault: the main queue is gone, so the copy cannot be sent.
    let gone = format!("{}-gone", f.url);
    let broken = SqsQueue::with_config(
        f.client.clone(),
        gone,
        SqsConfig {
            dead_letter_queue_url: Some(f.dlq_url.clone()),
            retry: Backoff::new(1, Duration::from_millis(1), Duration::from_millis(1)),
            ..SqsConfig::default()
        },
    );
    let report = broken
        .replay_dead_letters(&ReplayRequest::all())
        .await
        .unwrap();
    assert!(!report.is_complete(), "{report:?}");
    assert_eq!(report.letters.len(), 1);
    assert_eq!(report.letters[0].status, LetterStatus::Left);
    assert!(report.letters[0].problem.is_some());
    // Still there, visible again at once, and replayable once the fault is gone.
    let kept = f.queue().dead_letters(10).await.unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].body.contains("kept"));
    let fixed = f
        .queue()
        .replay_dead_letters(&ReplayRequest::all())
        .await
        .unwrap();
    assert!(fixed.is_complete(), "{fixed:?}");
    let back = drain(&f.queue(), 1, 100).await;
    assert_eq!(ids(&back), BTreeSet::from(["kept".to_owned()]));
}

/// Receives one delivery without acknowledging it (bounded wait).
async fn drain_unacked(q: &SqsQueue) -> Delivery {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(d) = q
            .receive(100, Duration::from_secs(1))
            .await
            .unwrap()
            .into_iter()
            .next()
        {
            return d;
        }
        assert!(Instant::now() < deadline, "nothing was received");
    }
}
