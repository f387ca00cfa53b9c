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
//! - [`sqs::SqsQueue`]: the queue on Amazon SQS, events packed into the versioned JSON
//!   envelopes of [`tally_core::envelope`], up to 256 KiB each, undecodable messages moved to
//!   the dead-letter queue with the reason.
//! - [`kinesis::KinesisQueue`]: the queue on a Kinesis data stream (the same envelopes, one
//!   record per org-message) with a polling consumer whose per-shard checkpoints, and dead
//!   letters, are items in the DynamoDB table.
//! - [`coalesce::CoalescingQueue`]: merges concurrent `publish` calls into one call of the
//!   queue below, so `tally serve` fills SQS and Kinesis batch calls.
//!
//! - [`dynamodb::DynamoStore`]: tenants, the event ledger and the counters in one DynamoDB
//!   table, a batch applied as `TransactWriteItems` chunks with conditional ledger puts (the
//!   module doc lists every item type, the apply algorithm and its write cost).
//!
//! - [`memory::MemoryStore`]: every storage port in process memory, for tests and test
//!   doubles; it passes the same conformance suite as the SQLite and DynamoDB stores.
//!
//! - [`hooked::Hooked`]: a usage store whose batches go through a hook (faults, delays)
//!   and whose other calls go to the store it wraps; the fault-injecting test stores.
//!
//! - [`replay`]: moving dead letters of the local queue or SQS back onto the main queue
//!   once the fault is fixed (`tally replay`); Kinesis keeps only pointers, so not there.
//!
//! - [`derive`]: day, month and org-wide counters derived from hour cells when read; both
//!   stores keep cells rather than six counters per event (its module doc says why).
//! - [`aws`]: the SDK configuration, and what the AWS adapters share (error descriptions,
//!   retry pauses of core's one [`Backoff`](tally_core::backoff::Backoff) policy).
//!
//! Every adapter is checked by the same backend-agnostic conformance suites in `tally-tests`
//! (`tests/src/conformance/`).

pub mod aws;
pub mod coalesce;
mod conn;
pub mod derive;
pub mod dynamodb;
pub mod hooked;
pub mod kinesis;
mod ledger_body;
pub mod ledger_filter;
pub mod local_queue;
pub mod memory;
mod poll;
pub mod replay;
mod secs;
pub mod sqlite;
pub mod sqs;
#[cfg(test)]
mod test_fixtures;

pub use local_queue::{DeadLetter, LocalQueue, LocalQueueConfig};
pub use memory::MemoryStore;
pub use sqlite::{SqliteConfig, SqliteStore};
