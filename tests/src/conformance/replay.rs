//! The dead-letter replay suite: what every queue that implements
//! [`DeadLetterReplay`] (the local queue, SQS) must do when an operator replays dead
//! letters after a fix (`tally replay`).
//!
//! Each `pub async fn` is one test taking a [`QueueFactory`] whose queue can replay;
//! [`replay_conformance!`](crate::replay_conformance) expands to one `#[tokio::test]` per
//! function. Letters are planted the way production makes them: a delivery set aside with
//! [`EventQueue::dead_letter`] (what the aggregator does with a record it gives up on), the
//! aggregator's own [`process_batch`] setting aside an event that does not decode, or a
//! body the adapter itself finds undecodable. The events are applied by [`process_batch`]
//! into a [`MemoryStore`], whose ledger is the exactly-once ledger every store has (the
//! storage suite checks that on each store).

use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_aggregator::{AggregatorConfig, BatchStats, process_batch};
use tally_core::event::Event;
use tally_core::ids::MeterName;
use tally_core::ports::{CounterQuery, Delivery, EventQueue, UsageStore};
use tally_core::{Granularity, OrgId};
use tally_store::MemoryStore;
use tally_store::replay::{DeadLetterReplay, LetterStatus, ReplayReport, ReplayRequest};
use tokio::time::Instant;

use super::fixtures::{dec, event, fresh_org, fresh_project, random_hex};
use super::queue::QueueFactory;

/// Expands to one `#[tokio::test]` per replay test, each building its factory with the given
/// expression (evaluated inside the async test, so it may `.await`).
#[macro_export]
macro_rules! replay_conformance {
    ($factory:expr) => {
        $crate::conformance_tests!(replay, $factory);
    };
}

const AT: &str = "2026-11-26T10:00:00Z";

fn good_events(org: &OrgId, tag: &str, quantities: &[&str]) -> Vec<Event> {
    let project = fresh_project();
    quantities
        .iter()
        .enumerate()
        .map(|(i, q)| event(org, &project, &format!("{tag}-{i}"), "api_calls", q, AT))
        .collect()
}

/// Receives until `want` events arrived (bounded); returns the deliveries, unacknowledged.
async fn receive_events<Q: EventQueue>(q: &Q, want: usize) -> Vec<Delivery> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got: Vec<Delivery> = Vec::new();
    while got
        .iter()
        .map(|d| d.events.len() + d.unreadable.len())
        .sum::<usize>()
        < want
    {
        assert!(Instant::now() < deadline, "only got {got:?}");
        got.extend(q.receive(100, Duration::from_millis(500)).await.unwrap());
    }
    got
}

/// Publishes `events` and sets their message aside with `reason`, as the aggregator does
/// with a record it cannot apply: a dead letter whose events are all valid.
async fn plant<Q: EventQueue>(q: &Q, events: &[Event], reason: &str) {
    q.publish(events).await.unwrap();
    for d in receive_events(q, events.len()).await {
        q.dead_letter(&d, reason).await.unwrap();
    }
}

/// Runs the aggregator's batch step until the queue is empty (bounded); the sum of its
/// stats.
async fn drain<Q: EventQueue>(q: &Q, store: &MemoryStore) -> BatchStats {
    let cfg = AggregatorConfig {
        max_events: 100,
        max_wait: Duration::from_millis(20),
        ..AggregatorConfig::default()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut sum = BatchStats::default();
    loop {
        let s = process_batch(q, store, None, &cfg, Duration::from_millis(300))
            .await
            .unwrap();
        sum.messages += s.messages;
        sum.events += s.events;
        sum.applied += s.applied;
        sum.duplicates += s.duplicates;
        sum.poisoned += s.poisoned;
        sum.set_aside += s.set_aside;
        sum.acked += s.acked;
        if s.messages == 0 && q.depth().await.unwrap() == 0 {
            return sum;
        }
        assert!(
            Instant::now() < deadline,
            "the queue never drained: {sum:?}"
        );
    }
}

/// The org's api_calls total for the month of [`AT`].
async fn total(store: &MemoryStore, org: &OrgId) -> Decimal {
    let from: DateTime<Utc> = "2026-11-01T00:00:00Z".parse().unwrap();
    let to: DateTime<Utc> = "2026-12-01T00:00:00Z".parse().unwrap();
    store
        .counter_series(&CounterQuery {
            org: org.clone(),
            project: None,
            meter: MeterName::parse("api_calls").unwrap(),
            granularity: Granularity::Month,
            from,
            to,
        })
        .await
        .unwrap()
        .iter()
        .map(|c| c.value)
        .sum()
}

/// A [`QueueFactory`] whose queue replays dead letters: what every test here takes.
pub trait ReplayFactory: QueueFactory<Queue: DeadLetterReplay> {}

impl<F: QueueFactory<Queue: DeadLetterReplay>> ReplayFactory for F {}

async fn listing<Q: DeadLetterReplay>(q: &Q) -> ReplayReport {
    let r = q
        .replay_dead_letters(&ReplayRequest::all().listing())
        .await
        .unwrap();
    assert!(r.dry_run);
    r
}

async fn replay<Q: DeadLetterReplay>(q: &Q, request: ReplayRequest) -> ReplayReport {
    let r = q.replay_dead_letters(&request).await.unwrap();
    assert!(!r.dry_run);
    r
}

/// A dead letter of valid events (the aggregator gave up on it while the store was down) is
/// listed by a dry run without moving, replayed, and then counted exactly once; the same
/// letter planted and replayed again changes no counter.
pub async fn replayed_dead_letters_are_counted_exactly_once<F: ReplayFactory>(f: &F) {
    let (q, store, org) = (f.open().await, MemoryStore::new(), fresh_org());
    let events = good_events(&org, "replay", &["2", "3"]);
    let reason = "store unavailable: the disk was full";
    plant(&q, &events, reason).await;
    assert_eq!(q.depth().await.unwrap(), 0);
    assert_eq!(drain(&q, &store).await.events, 0, "nothing left to apply");
    assert_eq!(total(&store, &org).await, Decimal::ZERO);

    // A dry run lists the letter and moves nothing, however often it runs.
    for _ in 0..2 {
        let dry = listing(&q).await;
        assert_eq!(dry.letters.len(), 1, "{dry:?}");
        let l = &dry.letters[0];
        assert_eq!(l.status, LetterStatus::WouldReplay);
        assert_eq!((l.events, l.reason.as_deref()), (2, Some(reason)));
        assert!(l.dead_lettered_at.is_some(), "{l:?}");
        assert!(!l.id.is_empty());
        assert_eq!((dry.republished(), dry.events_republished()), (1, 2));
        assert_eq!(q.depth().await.unwrap(), 0, "a dry run moves nothing");
    }

    let done = replay(&q, ReplayRequest::all()).await;
    assert!(done.is_complete(), "{done:?}");
    assert_eq!((done.republished(), done.events_republished()), (1, 2));
    assert_eq!(done.letters[0].status, LetterStatus::Replayed);
    assert!(
        listing(&q).await.letters.is_empty(),
        "the letter left the store"
    );
    let applied = drain(&q, &store).await;
    assert_eq!((applied.events, applied.applied), (2, 1), "{applied:?}");
    assert_eq!(total(&store, &org).await, dec("5"));

    // The same events dead-lettered again (a copy) and replayed: counted before, not again.
    plant(&q, &events, reason).await;
    let again = replay(&q, ReplayRequest::all()).await;
    assert!(again.is_complete(), "{again:?}");
    assert_eq!(again.republished(), 1);
    let repeat = drain(&q, &store).await;
    assert_eq!(
        (repeat.events, repeat.duplicates, repeat.applied),
        (2, 1, 0)
    );
    assert_eq!(total(&store, &org).await, dec("5"));
    assert!(listing(&q).await.letters.is_empty());
}

/// An event that does not decode is set aside by the aggregator; replayed before any fix,
/// it is set aside again with its reason: back in the dead-letter store once, not lost, not
/// on the queue. Its good neighbour is counted once through it all.
pub async fn a_letter_still_unreadable_after_replay_comes_back_with_its_reason<F: ReplayFactory>(
    f: &F,
) {
    let (q, store, org) = (f.open().await, MemoryStore::new(), fresh_org());
    let good = good_events(&org, "nb", &["4"]);
    let bad = format!(
        r#"{{"org_id":"{}","id":"bad-{}","quantity":7}}"#,
        org.as_str(),
        random_hex()
    );
    let body = F::body_of(&[serde_json::to_string(&good[0]).unwrap(), bad.clone()]);
    f.inject_malformed(&body).await;
    let first = drain(&q, &store).await;
    assert_eq!(first.set_aside, 1, "{first:?}");
    assert_eq!(total(&store, &org).await, dec("4"));

    let before = listing(&q).await;
    assert_eq!(before.letters.len(), 1, "{before:?}");
    let reason = before.letters[0].reason.clone().unwrap();
    assert!(!reason.trim().is_empty());
    assert_eq!(before.letters[0].events, 1);

    let done = replay(&q, ReplayRequest::all()).await;
    assert!(done.is_complete(), "{done:?}");
    assert_eq!(done.events_republished(), 1);
    let second = drain(&q, &store).await;
    // Nothing of it can be applied now, so it goes aside whole.
    assert_eq!((second.poisoned, second.messages), (1, 1), "{second:?}");

    let after = listing(&q).await;
    assert_eq!(after.letters.len(), 1, "back once: {after:?}");
    assert_eq!(after.letters[0].reason.as_deref(), Some(reason.as_str()));
    assert_ne!(after.letters[0].id, before.letters[0].id, "a new letter");
    let (bodies, _): (Vec<String>, Vec<String>) = f.dead_letters().await.into_iter().unzip();
    assert_eq!(
        bodies.iter().filter(|b| b.contains(&bad)).count(),
        1,
        "{bodies:?}"
    );
    assert_eq!(q.depth().await.unwrap(), 0, "not looping on the queue");
    assert_eq!(total(&store, &org).await, dec("4"));
}

/// `--id`, `--reason` (a substring, ignoring case) and `--limit` select; an unknown id is
/// reported; a body that is not a message of events is listed as left, stays, and makes
/// the run incomplete.
pub async fn letters_are_selected_by_id_reason_and_limit_and_undecodable_ones_are_left<
    F: ReplayFactory,
>(
    f: &F,
) {
    let (q, store, org) = (f.open().await, MemoryStore::new(), fresh_org());
    let a = good_events(&org, "a", &["1"]);
    let b = good_events(&org, "b", &["10"]);
    let c = good_events(&org, "c", &["100"]);
    plant(&q, &a, "alpha fault").await;
    plant(&q, &b, "beta fault").await;
    plant(&q, &c, "beta fault").await;
    let marker = format!("not events {}", random_hex());
    f.inject_malformed(&marker).await;
    // The adapter moves an undecodable body aside when it meets it.
    assert_eq!(drain(&q, &store).await.events, 0);

    let all = listing(&q).await;
    assert_eq!(all.letters.len(), 4, "{all:?}");
    let left: Vec<_> = all.not_done().collect();
    assert_eq!(left.len(), 1, "{all:?}");
    assert_eq!(left[0].status, LetterStatus::Left);
    assert!(left[0].problem.is_some());
    assert_eq!(left[0].events, 0);
    let id_of = |reason: &str| {
        all.letters
            .iter()
            .filter(|l| l.reason.as_deref() == Some(reason))
            .map(|l| l.id.clone())
            .collect::<Vec<_>>()
    };
    let alpha = id_of("alpha fault");
    assert_eq!(alpha.len(), 1);

    let by_id = replay(
        &q,
        ReplayRequest::new(alpha.clone(), None, 10, false).unwrap(),
    )
    .await;
    assert!(by_id.is_complete(), "{by_id:?}");
    assert_eq!(by_id.letters.len(), 1);
    assert_eq!(by_id.letters[0].id, alpha[0]);
    assert_eq!(listing(&q).await.letters.len(), 3);

    let one_beta = replay(
        &q,
        ReplayRequest::new(vec![], Some("BETA".into()), 1, false).unwrap(),
    )
    .await;
    assert_eq!(one_beta.letters.len(), 1, "{one_beta:?}");
    assert_eq!(one_beta.letters[0].reason.as_deref(), Some("beta fault"));
    assert!(one_beta.limit_reached);
    assert_eq!(listing(&q).await.letters.len(), 2);

    let unknown = replay(
        &q,
        ReplayRequest::new(vec!["no-such-letter".into()], None, 10, false).unwrap(),
    )
    .await;
    assert!(unknown.letters.is_empty());
    assert_eq!(unknown.missing_ids, ["no-such-letter"]);
    assert!(!unknown.is_complete());

    let rest = replay(&q, ReplayRequest::all()).await;
    assert_eq!(rest.republished(), 1, "{rest:?}");
    assert!(
        !rest.is_complete(),
        "the undecodable letter was not replayed"
    );
    let remaining = listing(&q).await;
    assert_eq!(remaining.letters.len(), 1);
    assert_eq!(remaining.letters[0].status, LetterStatus::Left);
    let kept = f.dead_letters().await;
    assert!(
        kept.iter().any(|(body, _)| body.contains(&marker)),
        "{kept:?}"
    );

    let applied = drain(&q, &store).await;
    assert_eq!(applied.events, 3, "{applied:?}");
    assert_eq!(total(&store, &org).await, dec("111"));
}
