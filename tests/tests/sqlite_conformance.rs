//! The storage and queue conformance suites against the embedded backend: every storage test
//! on a fresh `SqliteStore` file, every queue test on a fresh `LocalQueue` file (100 ms
//! visibility timeout), each in its own temporary directory.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tally_store::{LocalQueue, LocalQueueConfig, SqliteStore};
use tally_tests::conformance::queue::QueueFactory;
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
        self.open_queue(false)
            .dead_letters()
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.body, d.reason))
            .collect()
    }

    fn body_of(items: &[String]) -> String {
        format!("[{}]", items.join(","))
    }
}

mod storage {
    use super::*;
    tally_tests::storage_conformance!(Files::new());
}

mod queue {
    use super::*;
    tally_tests::queue_conformance!(Files::new());
}

mod replay {
    use super::*;
    tally_tests::replay_conformance!(Files::new());
}
