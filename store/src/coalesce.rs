//! [`CoalescingQueue`]: concurrent `publish` calls merged into one call of the queue below,
//! so `tally serve` over SQS or Kinesis fills its `SendMessageBatch` (10 entries, 256 KiB)
//! and `PutRecords` calls instead of making one call per ingest request.
//!
//! **Why.** Each ingest request publishes its own events and waits for them to be durable
//! before answering `202`. Without coalescing, a request of 100 events is one
//! `SendMessageBatch` of one entry: the call's fixed cost (a round trip, signing, a TLS
//! write) is paid per request, and the SQS path reached 40–50 % of the local queue's rate.
//!
//! **How.** Callers hand their events to a small pool of senders over a channel and wait.
//! A sender takes the first waiting call, then every call already waiting behind it (up to
//! [`MAX_COALESCED_EVENTS`]), publishes them together with one `publish` of the inner queue
//! (which packs them into as few messages and batch calls as its limits allow) and answers
//! each caller with its own part of the report: an event failed below is failed for the
//! caller that sent it, at its own index. Nothing waits on a timer: a lone request goes out
//! at once, as before; calls merge only when they arrive while the senders are busy, which
//! is exactly when merging pays. Each caller still hears back only after the inner
//! `publish` returned, so a `202` still means durable.
//!
//! Everything else (`receive`, `ack`, dead letters, depth, visibility) goes straight to the
//! inner queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tally_core::event::Event;
use tally_core::ports::{Delivery, EventQueue, PublishReport, QueueError};
use tokio::sync::{Mutex, mpsc, oneshot};

/// Most events one merged publish carries: ten full requests. More would only make the
/// first caller of a merge wait longer for the rest.
pub const MAX_COALESCED_EVENTS: usize = 10_000;
/// Senders working at once (merged publishes in flight).
pub const DEFAULT_SENDERS: usize = 4;

/// One caller's events and where its answer goes.
struct Call {
    events: Vec<Event>,
    done: oneshot::Sender<Result<PublishReport, QueueError>>,
}

/// An [`EventQueue`] whose `publish` merges concurrent calls; see the module doc.
pub struct CoalescingQueue<Q> {
    inner: Arc<Q>,
    calls: mpsc::Sender<Call>,
    /// `publish` calls of the inner queue, for tests and metrics.
    inner_publishes: Arc<AtomicU64>,
}

impl<Q: EventQueue + 'static> CoalescingQueue<Q> {
    /// Wraps `inner` with [`DEFAULT_SENDERS`] senders, spawned on the current Tokio runtime.
    pub fn new(inner: Q) -> Self {
        Self::with_senders(inner, DEFAULT_SENDERS)
    }

    /// Wraps `inner` with `senders` (at least 1) merged publishes in flight at most.
    pub fn with_senders(inner: Q, senders: usize) -> Self {
        let inner = Arc::new(inner);
        // Callers beyond this wait to hand over their events: a bound on memory, not on
        // callers (each holds at most one request's events).
        let (tx, rx) = mpsc::channel::<Call>(1024);
        let rx = Arc::new(Mutex::new(rx));
        let inner_publishes = Arc::new(AtomicU64::new(0));
        for _ in 0..senders.max(1) {
            tokio::spawn(send_loop(
                inner.clone(),
                rx.clone(),
                inner_publishes.clone(),
            ));
        }
        CoalescingQueue {
            inner,
            calls: tx,
            inner_publishes,
        }
    }

    /// How many `publish` calls reached the inner queue so far.
    pub fn inner_publishes(&self) -> u64 {
        self.inner_publishes.load(Ordering::Relaxed)
    }

    /// The queue below.
    pub fn inner(&self) -> &Q {
        &self.inner
    }
}

/// One sender: take a call and every call waiting behind it, publish them as one.
async fn send_loop<Q: EventQueue>(
    inner: Arc<Q>,
    calls: Arc<Mutex<mpsc::Receiver<Call>>>,
    inner_publishes: Arc<AtomicU64>,
) {
    loop {
        let merged = {
            let mut rx = calls.lock().await;
            let Some(first) = rx.recv().await else {
                return; // every handle dropped
            };
            let mut total = first.events.len();
            let mut merged = vec![first];
            while total < MAX_COALESCED_EVENTS {
                match rx.try_recv() {
                    Ok(call) => {
                        total += call.events.len();
                        merged.push(call);
                    }
                    Err(_) => break,
                }
            }
            merged
        };
        metrics::histogram!("tally_queue_coalesced_calls").record(merged.len() as f64);
        let events: Vec<Event> = merged
            .iter()
            .flat_map(|c| c.events.iter().cloned())
            .collect();
        inner_publishes.fetch_add(1, Ordering::Relaxed);
        let result = inner.publish(&events).await;
        let mut offset = 0;
        for call in merged {
            let len = call.events.len();
            let answer = match &result {
                Ok(report) => Ok(PublishReport {
                    failed: report
                        .failed
                        .iter()
                        .filter(|(i, _)| (offset..offset + len).contains(i))
                        .map(|(i, why)| (i - offset, why.clone()))
                        .collect(),
                }),
                Err(QueueError::Unavailable(why)) => Err(QueueError::Unavailable(why.clone())),
                Err(QueueError::Malformed(why)) => Err(QueueError::Malformed(why.clone())),
            };
            offset += len;
            // A caller that gave up (its request was cancelled) no longer listens.
            let _ = call.done.send(answer);
        }
    }
}

#[async_trait]
impl<Q: EventQueue + 'static> EventQueue for CoalescingQueue<Q> {
    async fn publish(&self, events: &[Event]) -> Result<PublishReport, QueueError> {
        if events.is_empty() {
            return Ok(PublishReport::default());
        }
        let (done, answer) = oneshot::channel();
        let call = Call {
            events: events.to_vec(),
            done,
        };
        let stopped = || QueueError::Unavailable("the queue's senders have stopped".to_owned());
        self.calls.send(call).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    async fn receive(
        &self,
        max_events: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        self.inner.receive(max_events, wait).await
    }

    async fn ack(&self, receipts: &[String]) -> Result<(), QueueError> {
        self.inner.ack(receipts).await
    }

    async fn depth(&self) -> Result<u64, QueueError> {
        self.inner.depth().await
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), QueueError> {
        self.inner.dead_letter(delivery, reason).await
    }

    async fn extend_visibility(&self, receipts: &[String], by: Duration) -> Result<(), QueueError> {
        self.inner.extend_visibility(receipts, by).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::sync::Mutex as StdMutex;
    use tally_core::ports::{PublishOnly, Publisher};
    use tokio::sync::Semaphore;

    /// A queue that records each publish's event ids, fails events whose id starts with
    /// `fail`, and holds each publish until the test lets it through.
    struct Gated {
        published: StdMutex<Vec<Vec<String>>>,
        gate: Arc<Semaphore>,
    }

    #[async_trait]
    impl Publisher for Gated {
        async fn publish(&self, events: &[Event]) -> Result<PublishReport, QueueError> {
            self.published
                .lock()
                .unwrap()
                .push(events.iter().map(|e| e.id.to_string()).collect());
            let permit = self.gate.acquire().await.unwrap();
            permit.forget();
            let failed = events
                .iter()
                .enumerate()
                .filter(|(_, e)| e.id.as_str().starts_with("fail"))
                .map(|(i, e)| (i, format!("refused {}", e.id)))
                .collect();
            Ok(PublishReport { failed })
        }
    }

    fn ev(id: &str) -> Event {
        tally_core::envelope::test_event("org_a", id, chrono::Utc::now())
    }

    #[tokio::test]
    async fn calls_waiting_behind_a_publish_go_out_together_and_failures_find_their_caller() {
        let gate = Arc::new(Semaphore::new(0));
        let queue = Arc::new(CoalescingQueue::with_senders(
            PublishOnly::new(Gated {
                published: StdMutex::new(Vec::new()),
                gate: gate.clone(),
            }),
            1,
        ));
        // The first call goes out alone and is held below.
        let first = tokio::spawn({
            let q = queue.clone();
            async move { q.publish(&[ev("a-0")]).await }
        });
        for _ in 0..10_000 {
            if queue.inner_publishes() == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            queue.inner_publishes(),
            1,
            "the first call reached the inner queue"
        );
        // Five more arrive while it is held: they wait, then go out as one publish.
        let mut later = Vec::new();
        for i in 0..5 {
            let q = queue.clone();
            let events = vec![
                ev(&format!("b{i}-0")),
                ev(&format!("fail-{i}")),
                ev(&format!("b{i}-2")),
            ];
            later.push(tokio::spawn(async move { q.publish(&events).await }));
        }
        // Let every caller reach the channel before the first publish returns.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(2);
        assert_eq!(first.await.unwrap().unwrap(), PublishReport::default());
        for (i, call) in later.into_iter().enumerate() {
            let report = call.await.unwrap().unwrap();
            assert_eq!(
                report.failed,
                vec![(1, format!("refused fail-{i}"))],
                "each caller hears of its own failed event, at its own index"
            );
        }
        let published = queue.inner().published.lock().unwrap().clone();
        assert_eq!(
            published.len(),
            2,
            "one publish alone, then one for the five: {published:?}"
        );
        assert_eq!(published[1].len(), 15);
    }
}
