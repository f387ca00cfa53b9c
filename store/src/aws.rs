//! What the AWS adapters share: building the SDK configuration once per process, and the
//! small helpers the SQS and Kinesis adapters both use (error descriptions, retry pauses,
//! bounded reason strings), so neither reaches into the other's internals.
//!
//! Every AWS adapter takes ready clients; [`sdk_config`] is where the binary and the tests
//! make them. An explicit endpoint (`--aws-endpoint`, `TALLY_AWS_ENDPOINT`) points every
//! client at an emulator; without one the SDK's usual chain (environment, profile, instance
//! role) decides credentials, and the region falls back to `us-east-1` when none is
//! configured.

use std::collections::HashMap;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
// Every SDK crate re-exports the same smithy `SdkError` and metadata trait; the SQS crate's
// path is as good as any.
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use tally_core::backoff::Backoff;
use tally_core::envelope::{Packed, PackedMessage};
use tally_core::ports::PublishReport;

/// Loads the shared SDK configuration, optionally pointed at `endpoint`.
pub async fn sdk_config(endpoint: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    let config = loader.load().await;
    if config.region().is_some() {
        return config;
    }
    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).region(Region::new("us-east-1"));
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}

/// A one-line description of an SDK error: `code: message` for a service error (without
/// the raw response), the error chain otherwise.
pub(crate) fn describe_sdk_error<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            format!(
                "{}: {}",
                err.code().unwrap_or("unknown error"),
                err.message().unwrap_or("(no message)")
            )
        }
        other => DisplayErrorContext(other).to_string(),
    }
}

/// How the SQS and Kinesis adapters retry the entries of a batch call that failed for a
/// reason of the service's own (throttling, an internal error): 5 attempts, 50 ms doubling,
/// at most 2 s.
pub const ENTRY_RETRY: Backoff = Backoff::new(5, Duration::from_millis(50), Duration::from_secs(2));

/// The jittered pause of `policy` after failed attempt `attempt` (1-based), with the
/// randomness core leaves to its callers.
pub(crate) fn jittered(policy: &Backoff, attempt: u32) -> Duration {
    policy.delay(attempt, rand::random::<f64>())
}

/// Sleeps the jittered pause of `policy` after failed attempt `attempt` (1-based).
pub(crate) async fn sleep_before_retry(policy: &Backoff, attempt: u32) {
    tokio::time::sleep(jittered(policy, attempt)).await;
}

/// One batch call of [`publish_packed`] under way: the messages of the batch that failed.
pub(crate) type BatchSend<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Vec<(usize, String)>> + Send + 'a>>;

/// Publishes the envelopes `packed` ([`pack`]), sent in batch calls of at most `max_entries`
/// messages and `max_bytes` bytes (a message's bytes by `size`; a batch holds at least one
/// message). `send(batch, bytes)` sends one batch and returns the messages of it (indexes
/// into `batch`) that failed, with the reason; the report names each event of those, and
/// of the envelopes that could not be made, in event order.
///
/// [`pack`]: tally_core::envelope::pack
pub(crate) async fn publish_packed<'m>(
    packed: &'m Packed,
    (max_entries, max_bytes): (usize, usize),
    size: impl Fn(&PackedMessage) -> usize,
    mut send: impl FnMut(&'m [PackedMessage], usize) -> BatchSend<'m>,
) -> PublishReport {
    let messages = &packed.messages;
    let mut failed = packed.failed.clone();
    let mut start = 0;
    while start < messages.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < messages.len()
            && end - start < max_entries
            && (end == start || bytes + size(&messages[end]) <= max_bytes)
        {
            bytes += size(&messages[end]);
            end += 1;
        }
        let batch = &messages[start..end];
        for (k, reason) in send(batch, bytes).await {
            failed.extend(batch[k].indexes.iter().map(|&i| (i, reason.clone())));
        }
        start = end;
    }
    failed.sort_by_key(|(i, _)| *i);
    PublishReport { failed }
}

/// How one attempt of a batch call went for one of its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntryResult {
    /// Accepted.
    Sent,
    /// Failed for a reason of the service's own (throttling, an internal error): sent again
    /// in the next attempt.
    Retry(String),
    /// Refused for good (the sender's fault, or the entry could not be built): not sent again.
    Refused(String),
}

/// Names a batch call in the logs and metrics of [`send_with_retries`].
pub(crate) struct BatchNames {
    /// The `backend` label of the queue metrics: `sqs`, `kinesis`.
    pub backend: &'static str,
    /// One attempt, in logs: `SQS send`, `Kinesis put`.
    pub call: &'static str,
    /// One entry, in logs: `SQS message`, `Kinesis record`.
    pub entry: &'static str,
}

/// Sends the entries `0..count` of a batch call (SQS `SendMessageBatch`, Kinesis
/// `PutRecords`) in up to `policy.max_attempts` attempts, each after a jittered pause,
/// sending again only the entries that failed for a reason of the service's own: one call
/// makes both adapters' publish retry alike.
///
/// `build(k)` builds entry `k` (an error refuses it for good), `send` makes one call with the
/// entries built, and `judge(out, sent)` says how each sent entry went, in the order of
/// `sent`. A call that fails as a whole is retried for all it carried. Returns the entries
/// that were refused or still failed after the last attempt, with the reason (the last one
/// seen, and the attempt count). Counts sent and failed entries in the queue metrics.
pub(crate) async fn send_with_retries<E, O, Fut>(
    policy: &Backoff,
    names: &BatchNames,
    count: usize,
    build: impl Fn(usize) -> Result<E, String>,
    send: impl Fn(Vec<E>) -> Fut,
    judge: impl Fn(&O, &[usize]) -> Vec<EntryResult>,
) -> Vec<(usize, String)>
where
    Fut: std::future::Future<Output = Result<O, String>>,
{
    let mut pending: Vec<usize> = (0..count).collect();
    let mut last_reason: HashMap<usize, String> = HashMap::new();
    let mut failed: Vec<(usize, String)> = Vec::new();
    for attempt in 0..policy.max_attempts.max(1) {
        if pending.is_empty() {
            break;
        }
        if attempt > 0 {
            sleep_before_retry(policy, attempt).await;
            tracing::warn!(attempt, entries = pending.len(), "retrying {}s", names.call);
        }
        let mut entries = Vec::with_capacity(pending.len());
        let mut sent = Vec::with_capacity(pending.len());
        for k in pending.drain(..) {
            match build(k) {
                Ok(e) => {
                    entries.push(e);
                    sent.push(k);
                }
                Err(reason) => failed.push((k, reason)),
            }
        }
        if entries.is_empty() {
            break;
        }
        let results = match send(entries).await {
            Ok(out) => judge(&out, &sent),
            Err(reason) => {
                tracing::warn!(%reason, "{} call failed", names.call);
                vec![EntryResult::Retry(reason); sent.len()]
            }
        };
        let mut results = results.into_iter();
        for k in sent {
            let unreported = || EntryResult::Retry(format!("{} not reported on", names.entry));
            match results.next().unwrap_or_else(unreported) {
                EntryResult::Sent => {}
                EntryResult::Retry(reason) => {
                    last_reason.insert(k, reason);
                    pending.push(k);
                }
                EntryResult::Refused(reason) => failed.push((k, reason)),
            }
        }
    }
    for k in pending {
        let reason = last_reason
            .remove(&k)
            .unwrap_or_else(|| format!("{} failed", names.call));
        failed.push((
            k,
            format!("{reason} (after {} attempts)", policy.max_attempts),
        ));
    }
    metrics::counter!("tally_queue_messages_sent_total", "backend" => names.backend)
        .increment((count - failed.len()) as u64);
    if !failed.is_empty() {
        metrics::counter!("tally_queue_messages_failed_total", "backend" => names.backend)
            .increment(failed.len() as u64);
        tracing::error!(failed = failed.len(), "{}s not sent", names.entry);
    }
    failed
}

/// Cuts `s` to at most `max` bytes on a character boundary (message attributes and items
/// have byte limits; a reason is worth keeping even when cut).
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_utf8("h\u{e9}llo", 2), "h");
        assert_eq!(truncate_utf8("abc", 10), "abc");
    }
}
