//! Tests of the aggregator's batching: deep batches ([`AggregatorConfig::deep_events`]) and
//! the next batch taken while the current one applies ([`pipelined_step`], [`run`]).

use super::*;
use crate::apply_only::{Apply, ApplyOnly};
use std::collections::VecDeque;
use std::sync::Mutex;

use async_trait::async_trait;

use tally_core::Event;
use tally_core::ports::{ApplyOutcome, ApplyReport, PublishReport, QueueError};

/// What happened, in order, across the queue and the store of one test.
type Log = Arc<Mutex<Vec<String>>>;

fn note(log: &Log, line: String) {
    log.lock().unwrap().push(line);
}

/// A queue of `messages` deliveries of `events_each` events, receipts `r1`, `r2`, ...; a
/// receive hands out whole messages up to `max_events` (the first always), like the local
/// queue, and logs them.
struct ListQueue {
    pending: Mutex<VecDeque<Delivery>>,
    extended: Mutex<Vec<String>>,
    log: Log,
}

impl ListQueue {
    fn new(messages: usize, events_each: usize, log: &Log) -> Self {
        let pending = (1..=messages)
            .map(|m| Delivery {
                receipt: format!("r{m}"),
                events: (0..events_each)
                    .map(|i| event(&format!("m{m}-{i}")))
                    .collect(),
                unreadable: Vec::new(),
                receive_count: 1,
            })
            .collect();
        ListQueue {
            pending: Mutex::new(pending),
            extended: Mutex::new(Vec::new()),
            log: log.clone(),
        }
    }
}

#[async_trait]
impl EventQueue for ListQueue {
    async fn publish(&self, _: &[Event]) -> Result<PublishReport, QueueError> {
        Ok(PublishReport::default())
    }
    async fn receive(&self, max_events: usize, _: Duration) -> Result<Vec<Delivery>, QueueError> {
        let mut pending = self.pending.lock().unwrap();
        let mut out: Vec<Delivery> = Vec::new();
        let mut events = 0;
        while let Some(next) = pending.front() {
            if !out.is_empty() && events + next.events.len() > max_events {
                break;
            }
            events += next.events.len();
            out.extend(pending.pop_front());
        }
        for d in &out {
            note(&self.log, format!("receive {}", d.receipt));
        }
        Ok(out)
    }
    async fn ack(&self, receipts: &[String]) -> Result<(), QueueError> {
        for r in receipts {
            note(&self.log, format!("ack {r}"));
        }
        Ok(())
    }
    async fn depth(&self) -> Result<u64, QueueError> {
        Ok(self.pending.lock().unwrap().len() as u64)
    }
    async fn extend_visibility(&self, receipts: &[String], _: Duration) -> Result<(), QueueError> {
        self.extended.lock().unwrap().extend_from_slice(receipts);
        Ok(())
    }
}

/// A store whose apply takes `delay` and logs when it starts and ends.
struct LoggedStore {
    delay: Duration,
    log: Log,
}

#[async_trait]
impl Apply for LoggedStore {
    async fn apply(&self, events: &[Event]) -> Result<ApplyReport, StoreError> {
        note(&self.log, format!("apply {} start", events.len()));
        tokio::time::sleep(self.delay).await;
        note(&self.log, format!("apply {} end", events.len()));
        Ok(ApplyReport::of(vec![ApplyOutcome::Applied; events.len()]))
    }
    async fn release(&self) -> Result<(), StoreError> {
        note(&self.log, "release".into());
        Ok(())
    }
}

/// A store whose applies take `delay` and log their start and end, and its release, to `log`.
fn logged_store(delay: Duration, log: &Log) -> ApplyOnly<LoggedStore> {
    ApplyOnly(LoggedStore {
        delay,
        log: log.clone(),
    })
}

/// Batches of `max_events`, topped up to `deep_events` from a deep queue, taken without
/// waiting for more.
fn batches(max_events: usize, deep_events: usize) -> AggregatorConfig {
    AggregatorConfig {
        max_events,
        deep_events,
        max_wait: Duration::ZERO,
        ..AggregatorConfig::default()
    }
}

fn event(id: &str) -> Event {
    let json = format!(
        r#"{{"org_id":"org_a","id":"{id}","project_id":"prj_a","meter":"api_calls","aggregation":{{"kind":"sum"}},"quantity":"1","timestamp":"2026-11-26T10:00:00Z"}}"#
    );
    serde_json::from_str(&json).unwrap()
}

fn position(log: &[String], line: &str) -> usize {
    log.iter()
        .position(|l| l == line)
        .unwrap_or_else(|| panic!("{line:?} not in {log:?}"))
}

#[tokio::test]
async fn a_full_receive_tops_the_batch_up_to_deep_events_and_a_partial_one_does_not() {
    // 30 messages of 100 events. The first receive takes 10 (1,000 events: full), so the
    // queue is deep and receives that do not wait add 15 more: 2,500 events. The 5 left
    // (500 events) are a partial first receive: no top-up, the batch is those 500.
    let log = Log::default();
    let queue = ListQueue::new(30, 100, &log);
    let store = logged_store(Duration::ZERO, &log);
    let cfg = batches(1_000, 2_500);
    let first = process_batch(&queue, &store, None, &cfg, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!((first.messages, first.events, first.acked), (25, 2_500, 25));
    let second = process_batch(&queue, &store, None, &cfg, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!((second.messages, second.events), (5, 500));
    // deep_events below max_events means max_events.
    let queue = ListQueue::new(30, 100, &log);
    let shallow = AggregatorConfig {
        deep_events: 10,
        ..cfg
    };
    let s = process_batch(&queue, &store, None, &shallow, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(s.events, 1_000);
}

#[tokio::test]
async fn the_next_batch_is_taken_while_the_current_one_applies_and_kept_hidden() {
    // Two messages of 100 events, batches of 100: r1 is applied (120 ms) while r2 is
    // taken, and the heartbeat (every 20 ms) keeps r2 hidden along with r1. r1 is
    // acknowledged only after its apply; r2 comes back as the next batch.
    let log = Log::default();
    let queue = ListQueue::new(2, 100, &log);
    let store = logged_store(Duration::from_millis(120), &log);
    let cfg = AggregatorConfig {
        heartbeat: Duration::from_millis(20),
        ..batches(100, 100)
    };
    let (res, ahead) = pipelined_step(&queue, &store, None, &cfg, None, Duration::ZERO).await;
    assert_eq!(res.unwrap().acked, 1);
    let ahead = ahead.expect("r2 was taken ahead");
    assert_eq!(ahead.len(), 1);
    assert_eq!(ahead[0].receipt, "r2");
    let seen = log.lock().unwrap().clone();
    assert!(position(&seen, "receive r2") < position(&seen, "apply 100 end"));
    assert!(position(&seen, "apply 100 end") < position(&seen, "ack r1"));
    let extended = queue.extended.lock().unwrap().clone();
    assert!(extended.contains(&"r1".to_owned()), "{extended:?}");
    assert!(extended.contains(&"r2".to_owned()), "{extended:?}");

    let (res, ahead) =
        pipelined_step(&queue, &store, None, &cfg, Some(ahead), Duration::ZERO).await;
    assert_eq!(res.unwrap().acked, 1);
    assert!(ahead.is_none(), "the queue is empty");
    assert!(log.lock().unwrap().contains(&"ack r2".to_owned()));
}

#[tokio::test]
async fn at_shutdown_the_drain_settles_every_batch_the_one_taken_ahead_included() {
    // Shut down before the first turn: the drain alone takes r1, applies it while taking
    // r2 ahead, then settles r2 while taking r3, then r3: all three acknowledged once.
    let log = Log::default();
    let queue: Arc<dyn EventQueue> = Arc::new(ListQueue::new(3, 100, &log));
    let store: Arc<dyn UsageStore> = Arc::new(logged_store(Duration::from_millis(5), &log));
    let cfg = batches(100, 100);
    let (_stop, stopped) = watch::channel(true);
    run(queue, store, None, cfg, stopped, Duration::from_secs(10)).await;
    let acks: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("ack"))
        .cloned()
        .collect();
    assert_eq!(acks, ["ack r1", "ack r2", "ack r3"]);
}

#[tokio::test]
async fn a_stopping_aggregator_releases_the_stores_writers_after_its_drain() {
    // DynamoDB's writer slots are leased: released at the end, another aggregator takes
    // them at once instead of waiting out the lease. Once, and after the last batch.
    let log = Log::default();
    let queue: Arc<dyn EventQueue> = Arc::new(ListQueue::new(2, 10, &log));
    let store: Arc<dyn UsageStore> = Arc::new(logged_store(Duration::ZERO, &log));
    let cfg = AggregatorConfig {
        max_events: 10,
        max_wait: Duration::ZERO,
        ..AggregatorConfig::default()
    };
    let (_stop, stopped) = watch::channel(true);
    run(queue, store, None, cfg, stopped, Duration::from_secs(10)).await;
    let log = log.lock().unwrap().clone();
    assert_eq!(log.iter().filter(|l| *l == "release").count(), 1, "{log:?}");
    assert!(
        position(&log, "ack r2") < position(&log, "release"),
        "{log:?}"
    );
}
