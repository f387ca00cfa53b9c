//! The fault-injection property test ([`tally_tests::faults`]) on the embedded backend:
//! SQLite store and local queue, 200 random fault schedules, several aggregators at once.
//!
//! Redelivery is real (a 150 ms visibility timeout on the local queue) and simulated (the
//! decorator hands out unacknowledged deliveries again). Three schedules run at once, each on
//! its own queue file, against one store.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use tally_core::ports::EventQueue;
use tally_store::local_queue::{LocalQueue, LocalQueueConfig};
use tally_store::sqlite::SqliteStore;
use tally_tests::faults::{Harness, run_property};

/// Schedules run at once, each on a local queue of its own (the store is shared; every
/// schedule uses fresh orgs).
const AT_ONCE: usize = 3;

#[test]
fn every_counter_is_exact_under_random_faults_on_sqlite() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("tally.db")).unwrap();
    let queues: Vec<LocalQueue> = (0..AT_ONCE)
        .map(|i| {
            LocalQueue::open_with(
                &dir.path().join(format!("queue-{i}.db")),
                LocalQueueConfig {
                    visibility_timeout: Duration::from_millis(150),
                    poll_interval: Duration::from_millis(5),
                    ..LocalQueueConfig::default()
                },
            )
            .unwrap()
        })
        .collect();
    let harness = Harness {
        store: Arc::new(store),
        new_store: None,
        queues: queues
            .iter()
            .map(|q| Arc::new(q.clone()) as Arc<dyn EventQueue>)
            .collect(),
        reoffer_after: Duration::from_millis(60),
        idle_wait: Duration::from_millis(10),
        drain_timeout: Duration::from_secs(30),
        use_depth: true,
        check_every: Duration::from_millis(20),
    };
    run_property(&rt, harness, 200, 20..61, "sqlite + local queue");
    // The poison events sit in the local queues' dead-letter tables with their reason.
    for queue in &queues {
        let dead = rt.block_on(queue.dead_letters()).unwrap();
        assert!(
            dead.iter()
                .all(|d| d.reason.contains("properties.user, which is missing")),
            "{dead:?}"
        );
    }
}
