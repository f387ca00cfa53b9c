//! The queue conformance suite: what every [`EventQueue`] backend must do.
//!
//! Each `pub async fn` here is one test taking a [`QueueFactory`];
//! [`queue_conformance!`](crate::queue_conformance) expands to one `#[tokio::test]` per
//! function. A queue is one pipe, so each factory owns a queue of its own (a fresh file, a
//! fresh SQS queue or Kinesis stream). Waits are bounded by the factory's visibility timeout,
//! which tests should set short (100–500 ms); nothing sleeps for long.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use tally_core::event::Event;
use tally_core::ports::{Delivery, EventQueue};
use tokio::time::Instant;

use super::fixtures::{event, fresh_org, fresh_project};

/// Makes handles onto one queue, and reaches around the port for what tests need.
#[async_trait]
pub trait QueueFactory: Send + Sync {
    /// The backend under test.
    type Queue: EventQueue + 'static;

    /// A new handle onto this factory's queue. A second call is another process opening the
    /// same queue; a call after dropping every handle is a restart.
    async fn open(&self) -> Self::Queue;

    /// The visibility timeout the handles use.
    fn visibility_timeout(&self) -> Duration;

    /// Puts a message with this exact body (not a list of events) on the queue, bypassing
    /// `publish`.
    async fn inject_malformed(&self, body: &str);

    /// The dead-lettered messages so far, as (body, reason).
    async fn dead_letters(&self) -> Vec<(String, String)>;

    /// A message body in this backend's stored form holding these events' JSON texts as
    /// they are (the queue envelope by default; the local queue stores a bare array).
    fn body_of(items: &[String]) -> String {
        format!(r#"{{"v":1,"events":[{}]}}"#, items.join(","))
    }
}

/// What a factory's [`QueueFactory::dead_letters`] answers, from its backend's own listing
/// of dead letters and how to take one apart into (body, reason).
pub fn bodies_and_reasons<L, E: std::fmt::Debug>(
    listed: Result<Vec<L>, E>,
    parts: impl Fn(L) -> (String, String),
) -> Vec<(String, String)> {
    listed.unwrap().into_iter().map(parts).collect()
}

/// Expands to one `#[tokio::test]` per queue conformance test, each building its factory with
/// the given expression (evaluated inside the async test, so it may `.await`).
///
/// ```text
/// tally_tests::queue_conformance!(LocalQueueFactory::new());
/// ```
#[macro_export]
macro_rules! queue_conformance {
    ($factory:expr) => {
        $crate::conformance_tests!(queue, $factory);
    };
}

fn events(n: usize, tag: &str) -> Vec<Event> {
    let org = fresh_org();
    let p = fresh_project();
    (0..n)
        .map(|i| {
            event(
                &org,
                &p,
                &format!("{tag}-{i}"),
                "api_calls",
                "1",
                "2026-11-26T10:00:00Z",
            )
        })
        .collect()
}

/// Receives until `want` distinct events arrived or `within` passed; returns the deliveries.
async fn collect<Q: EventQueue>(q: &Q, want: usize, within: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + within;
    let mut out: Vec<Delivery> = Vec::new();
    let mut seen = BTreeMap::new();
    while seen.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        for d in q
            .receive(100, left.min(Duration::from_millis(500)))
            .await
            .unwrap()
        {
            for e in &d.events {
                seen.insert((e.org_id.clone(), e.id.clone()), ());
            }
            out.push(d);
        }
    }
    out
}

fn events_of(deliveries: &[Delivery]) -> Vec<Event> {
    let mut all: Vec<Event> = deliveries.iter().flat_map(|d| d.events.clone()).collect();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    all.dedup();
    all
}

fn sorted(mut events: Vec<Event>) -> Vec<Event> {
    events.sort_by(|a, b| a.id.cmp(&b.id));
    events
}

async fn ack_all<Q: EventQueue>(q: &Q, deliveries: &[Delivery]) {
    let receipts: Vec<String> = deliveries.iter().map(|d| d.receipt.clone()).collect();
    q.ack(&receipts).await.unwrap();
}

/// One `receive` of at most `max` events (waiting up to `wait`) while fewer than `want`
/// distinct events have arrived in `got`; `None` once they all have. Fails if `deadline`
/// passes first, or if the receive hands out more than `max` events.
pub async fn receive_more<Q: EventQueue>(
    q: &Q,
    got: &[Delivery],
    want: usize,
    deadline: Instant,
    (max, wait): (usize, Duration),
) -> Option<Vec<Delivery>> {
    let arrived = events_of(got).len();
    if arrived >= want {
        return None;
    }
    assert!(
        Instant::now() < deadline,
        "only {arrived} of {want} arrived"
    );
    let batch = q.receive(max, wait).await.unwrap();
    let n: usize = batch.iter().map(|d| d.events.len()).sum();
    assert!(n <= max, "receive({max}) handed out {n} events");
    Some(batch)
}

/// Waits (bounded) for the queue to report depth 0.
async fn assert_drains<Q: EventQueue>(q: &Q) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let depth = q.depth().await.unwrap();
        if depth == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "queue depth stayed at {depth}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Nothing comes back for longer than the visibility timeout (acknowledged means gone, not
/// hidden), and the queue drains.
async fn assert_all_acknowledged<F: QueueFactory>(f: &F, q: &F::Queue) {
    let again = q.receive(100, f.visibility_timeout() * 3).await.unwrap();
    assert!(
        again.is_empty(),
        "acknowledged messages came back: {again:?}"
    );
    assert_drains(q).await;
}

/// Published events are handed out intact; acknowledged messages never come back.
pub async fn published_events_are_received_and_acked_once<F: QueueFactory>(f: &F) {
    let q = f.open().await;
    let sent = events(3, "a");
    let report = q.publish(&sent).await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert!(q.depth().await.unwrap() >= 1);
    let got = collect(&q, 3, Duration::from_secs(5)).await;
    assert_eq!(events_of(&got), sorted(sent));
    assert!(got.iter().all(|d| d.receive_count == 1));
    ack_all(&q, &got).await;
    assert_all_acknowledged(f, &q).await;
    // Acknowledging twice is harmless.
    ack_all(&q, &got).await;
}

/// What was published survives dropping every handle, including messages taken and not
/// acknowledged.
pub async fn nothing_is_lost_across_reopen<F: QueueFactory>(f: &F) {
    let first = events(2, "x");
    let second = events(1, "y");
    {
        let q = f.open().await;
        q.publish(&first).await.unwrap();
        q.publish(&second).await.unwrap();
        let taken = q.receive(1, Duration::from_secs(2)).await.unwrap();
        assert!(!taken.is_empty());
    }
    {
        let q = f.open().await;
        let got = collect(&q, 3, f.visibility_timeout() * 3 + Duration::from_secs(5)).await;
        let mut want = first.clone();
        want.extend(second.clone());
        assert_eq!(events_of(&got), sorted(want));
        ack_all(&q, &got).await;
    }
    let q = f.open().await;
    assert_all_acknowledged(f, &q).await;
}

/// A message taken and not acknowledged is invisible until its visibility timeout passes,
/// then handed out again with a higher receive count.
pub async fn unacked_messages_come_back_after_the_visibility_timeout<F: QueueFactory>(f: &F) {
    let q = f.open().await;
    let sent = events(2, "r");
    q.publish(&sent).await.unwrap();
    let first = collect(&q, 2, Duration::from_secs(5)).await;
    assert_eq!(events_of(&first), sorted(sent.clone()));
    assert!(first.iter().all(|d| d.receive_count == 1));
    let hidden = q.receive(100, Duration::ZERO).await.unwrap();
    assert!(hidden.is_empty(), "in flight, so not visible: {hidden:?}");

    let taken_at = Instant::now();
    let again = collect(&q, 2, f.visibility_timeout() * 5 + Duration::from_secs(5)).await;
    assert!(taken_at.elapsed() + Duration::from_millis(20) >= f.visibility_timeout() / 2);
    assert_eq!(events_of(&again), sorted(sent));
    assert!(again.iter().all(|d| d.receive_count >= 2), "{again:?}");
    ack_all(&q, &again).await;
    assert_all_acknowledged(f, &q).await;
}

/// `receive` hands out at most about `max_events` events (one-event messages here, so
/// exactly at most).
pub async fn receive_respects_max_events<F: QueueFactory>(f: &F) {
    let q = f.open().await;
    let sent = events(10, "m");
    for e in &sent {
        q.publish(std::slice::from_ref(e)).await.unwrap();
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let each = (3, Duration::from_millis(500));
    while let Some(batch) = receive_more(&q, &got, sent.len(), deadline, each).await {
        ack_all(&q, &batch).await;
        got.extend(batch);
    }
    assert_eq!(events_of(&got), sorted(sent));
    assert_drains(&q).await;
}

/// A message that does not decode is set aside with a reason, never handed out and never
/// dropped; the good messages around it still flow.
pub async fn malformed_messages_are_dead_lettered<F: QueueFactory>(f: &F) {
    let q = f.open().await;
    let before = events(1, "before");
    q.publish(&before).await.unwrap();
    let marker = format!("not events {}", super::fixtures::random_hex());
    f.inject_malformed(&marker).await;
    let after = events(2, "after");
    q.publish(&after).await.unwrap();

    let got = collect(&q, 3, Duration::from_secs(5)).await;
    let mut want = before;
    want.extend(after);
    assert_eq!(events_of(&got), sorted(want));
    ack_all(&q, &got).await;

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let dead = f.dead_letters().await;
        if let Some((_, reason)) = dead.iter().find(|(body, _)| body.contains(&marker)) {
            assert!(!reason.trim().is_empty(), "a dead letter says why");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "malformed message not dead-lettered: {dead:?}"
        );
        // Some backends dead-letter on a later receive.
        let stray = q.receive(100, Duration::from_millis(200)).await.unwrap();
        assert!(stray.is_empty(), "{stray:?}");
    }
    assert_drains(&q).await;
}

/// A message with one event that does not decode between two that do: the two are handed
/// out to be applied, the bad one beside them as unreadable, and setting it aside keeps
/// exactly it in the dead-letter store and removes the message.
pub async fn an_unreadable_event_is_set_aside_alone<F: QueueFactory>(f: &F) {
    let q = f.open().await;
    let good = events(2, "good");
    let bad = format!(
        r#"{{"org_id":"{}","id":"bad-{}","quantity":7}}"#,
        good[0].org_id.as_str(),
        super::fixtures::random_hex()
    );
    let text = |e: &Event| serde_json::to_string(e).unwrap();
    f.inject_malformed(&F::body_of(&[text(&good[0]), bad.clone(), text(&good[1])]))
        .await;
    let got = collect(&q, 2, Duration::from_secs(5)).await;
    assert_eq!(events_of(&got), sorted(good.clone()));
    let with_bad: Vec<&Delivery> = got.iter().filter(|d| !d.unreadable.is_empty()).collect();
    assert_eq!(with_bad.len(), 1, "{got:?}");
    let d = with_bad[0];
    assert_eq!(d.unreadable.len(), 1);
    assert_eq!(d.unreadable[0].json, bad);
    // What the aggregator does once the good events are applied.
    let aside = Delivery {
        receipt: d.receipt.clone(),
        events: Vec::new(),
        unreadable: d.unreadable.clone(),
        receive_count: d.receive_count,
    };
    q.dead_letter(&aside, "event bad: does not decode")
        .await
        .unwrap();
    let others: Vec<Delivery> = got
        .iter()
        .filter(|o| o.receipt != d.receipt)
        .cloned()
        .collect();
    ack_all(&q, &others).await;
    let dead = f.dead_letters().await;
    let kept: Vec<&(String, String)> = dead
        .iter()
        .filter(|(body, _)| body.contains(&bad))
        .collect();
    assert_eq!(kept.len(), 1, "{dead:?}");
    assert!(
        !kept[0].0.contains(good[0].id.as_str()),
        "only the bad event is kept: {}",
        kept[0].0
    );
    assert_eq!(kept[0].1, "event bad: does not decode");
    assert_drains(&q).await;
}

/// A receive that is waiting returns as soon as something is published.
pub async fn a_waiting_receive_wakes_on_publish<F: QueueFactory>(f: &F) {
    let q = std::sync::Arc::new(f.open().await);
    let waiting = {
        let q = q.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let got = q.receive(100, Duration::from_secs(8)).await.unwrap();
            (got, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = events(1, "w");
    q.publish(&sent).await.unwrap();
    let (got, waited) = waiting.await.unwrap();
    assert_eq!(events_of(&got), sent);
    assert!(waited < Duration::from_secs(4), "woke after {waited:?}");
    ack_all(q.as_ref(), &got).await;
}

/// A message published through one handle (another process) reaches a receive waiting on
/// another.
pub async fn a_publish_from_another_handle_is_received<F: QueueFactory>(f: &F) {
    let consumer = std::sync::Arc::new(f.open().await);
    let producer = f.open().await;
    let waiting = {
        let q = consumer.clone();
        tokio::spawn(async move { q.receive(100, Duration::from_secs(8)).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = events(2, "o");
    producer.publish(&sent).await.unwrap();
    let mut got = waiting.await.unwrap();
    if events_of(&got).len() < 2 {
        got.extend(collect(consumer.as_ref(), 2, Duration::from_secs(5)).await);
    }
    assert_eq!(events_of(&got), sorted(sent));
    ack_all(consumer.as_ref(), &got).await;
}

/// With nothing to hand out, `receive` waits about `wait` and returns nothing.
pub async fn an_empty_receive_returns_after_its_wait<F: QueueFactory>(f: &F) {
    let q = f.open().await;
    let started = Instant::now();
    let got = q.receive(100, Duration::from_millis(300)).await.unwrap();
    let waited = started.elapsed();
    assert!(got.is_empty(), "{got:?}");
    assert!(
        waited >= Duration::from_millis(250),
        "returned after {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "returned after {waited:?}");
    assert!(q.receive(100, Duration::ZERO).await.unwrap().is_empty());
}
