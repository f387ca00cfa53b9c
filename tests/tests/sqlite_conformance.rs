//! The storage and queue conformance suites against the embedded backend: every storage test
//! on a fresh `SqliteStore` file, every queue test on a fresh `LocalQueue` file (100 ms
//! visibility timeout), each in its own temporary directory.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tally_store::{LocalQueue, LocalQueueConfig, SqliteStore};
use tally_tests::conformance::queue::{QueueFactory, bodies_and_reasons};
use tally_tests::conformance::storage::StoreFactory;
use tempfile::TempDir;

/// The queue's visibility timeout: short, as the suite waits for it to pass.
const VISIBILITY: Duration = Duration::from_millis(100);

/// A temporary directory holding one store file and one queue file; every `open` is a new
/// handle (like a new process) on its file.
struct Files {
    dir: TempDir,
}

impl Files {
    fn new() -> Self {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn queue_path(&self) -> PathBuf {
        self.dir.path().join("queue.db")
    }

    /// `redeliver_on_open` is off for the side handles the harness opens to inject or
    /// inspect, so they do not disturb messages in flight on the handle under test.
    fn open_queue(&self, redeliver_on_open: bool) -> LocalQueue {
        LocalQueue::open_with(
            &self.queue_path(),
            LocalQueueConfig {
                visibility_timeout: VISIBILITY,
                redeliver_on_open,
                ..LocalQueueConfig::default()
            },
        )
        .unwrap()
    }
}

#[async_trait]
impl StoreFactory for Files {
    type Store = SqliteStore;

    async fn open(&self) -> SqliteStore {
        SqliteStore::open(&self.dir.path().join("tally.db")).unwrap()
    }
}

#[async_trait]
impl QueueFactory for Files {
    type Queue = LocalQueue;

    async fn open(&self) -> LocalQueue {
        self.open_queue(true)
    }

    fn visibility_timeout(&self) -> Duration {
        VISIBILITY
    }

    async fn inject_malformed(&self, body: &str) {
        self.open_queue(false)
            .publish_raw(body.to_owned())
            .await
            .unwrap();
    }

    async fn dead_letters(&self) -> Vec<(String, String)> {
        bodies_and_reasons(self.open_queue(false).dead_letters().await, |d| {
            (d.body, d.reason)
        })
    }

    fn body_of(items: &[String]) -> String {
        format!("[{}]", items.join(","))
    }
}

tally_tests::store_conformance!(Files::new());

mod queue {
    use super::*;
    tally_tests::queue_conformance!(Files::new());
}

mod replay {
    use super::*;
    tally_tests::replay_conformance!(Files::new());
}

/// Reconcile on SQLite judges a month while its ledger is all there (until 45 days after the
/// month began, less the 5 minutes of clock skew) and refuses it afterwards with a sentence
/// saying why, exactly as on DynamoDB: the SQLite ledger is pruned 45 days after each row
/// is written. Written in October, pruned at the refusal time, the counters still stand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_refuses_a_month_past_the_ledger_retention() {
    use std::sync::Arc;
    use tally_core::period::{LEDGER_RETENTION, Month};
    use tally_core::ports::{FixedClock, UsageStore};
    use tally_tests::conformance::fixtures::{assert_reconcile_retention, fresh_event};

    let files = Files::new();
    let month = Month::parse("2026-10").unwrap();
    let clock = Arc::new(FixedClock::at(month.start()));
    let store = StoreFactory::open(&files).await.with_clock(clock);
    assert_eq!(store.ledger_retention(), Some(LEDGER_RETENTION));
    let (org, _, e) = fresh_event("r1", "compute_minutes", "3", "2026-10-01T00:00:00Z");
    store.apply_batch(&[e]).await.unwrap();
    let within = month.start() + LEDGER_RETENTION - chrono::Duration::minutes(6);
    // Nothing of the month is pruned while reconcile still judges it.
    assert_eq!(store.prune_ledger(within, false).await.unwrap().deleted, 0);
    let past = month.start() + LEDGER_RETENTION;
    assert_reconcile_retention(&store, &org, month, within, past).await;
    let counters = store.stored_counters(&org, month).await.unwrap();
    let pruned = store
        .prune_ledger(past + chrono::Duration::seconds(1), false)
        .await
        .unwrap();
    assert_eq!(pruned.deleted, 1, "{pruned:?}");
    assert_eq!(store.stored_counters(&org, month).await.unwrap(), counters);
    assert!(!counters.is_empty());
}
