//! Tally's storage and queue adapters: the implementations of the ports in
//! [`tally_core::ports`].
//!
//! This crate is the only place that knows a database or a queue service. The capability
//! crates (ingest, aggregator, billing, api) are written against the ports and never see it;
//! the `tally` binary picks an adapter and hands it over.
//!
//! - [`sqlite::SqliteStore`]: tenants, the event ledger and the counters in one SQLite file,
//!   for the embedded `tally serve` (the module doc explains the ledger's key layout).
//! - [`local_queue::LocalQueue`]: the durable queue between ingest and the aggregator in its
//!   own SQLite file, so publishing and applying never contend for one write lock.
//!
//! The DynamoDB, SQS and Kinesis adapters will live here too. Every adapter is checked by the
//! same backend-agnostic conformance suites in `tally-tests` (`tests/src/conformance/`).

mod conn;
pub mod local_queue;
pub mod sqlite;

pub use local_queue::{DeadLetter, LocalQueue, LocalQueueConfig};
pub use sqlite::{SqliteConfig, SqliteStore};
