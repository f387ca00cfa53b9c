//! Outgoing ports that capabilities call to hand something off: a plan-limit alert to the
//! org's webhook ([`AlertSender`]), a poison queue record to the dead-letter store
//! ([`PoisonSink`]).
//!
//! They sit in core, beside the storage and queue ports, so the adapters that implement
//! them (`tally-notify`'s signed webhooks, the Lambda's SQS dead-letter sink) depend on
//! core alone, never on the capability that calls them.

use async_trait::async_trait;

/// Why the sender could not deliver an alert (after all its attempts). The alert stays
/// pending and a later pass sends it again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("alert webhook not delivered: {0}")]
pub struct SendError(pub String);

/// Delivers one alert to the org's webhook endpoint (the HTTP adapter signs it and retries
/// with backoff). `Ok` means the endpoint acknowledged it (a 2xx).
#[async_trait]
pub trait AlertSender: Send + Sync {
    /// Sends `body` (JSON) as alert `id`.
    async fn send(&self, id: &str, body: &str) -> Result<(), SendError>;
}

/// Where a Lambda consumer sets poison records aside (the polling worker uses the queue's
/// own [`EventQueue::dead_letter`](crate::ports::EventQueue::dead_letter) instead).
#[async_trait]
pub trait PoisonSink: Send + Sync {
    /// Keeps `body` (the record as received) with `reason`; `id` is the message id or
    /// sequence number. An error (its text is logged) leaves the record to the queue's own
    /// failure handling: a redrive policy or an on-failure destination.
    async fn dead_letter(&self, id: &str, body: &[u8], reason: &str) -> Result<(), String>;
}
