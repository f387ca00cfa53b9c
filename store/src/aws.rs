//! What the AWS adapters share: building the SDK configuration once per process, and the
//! small helpers the SQS and Kinesis adapters both use (error descriptions, retry pauses,
//! bounded reason strings), so neither reaches into the other's internals.
//!
//! Every AWS adapter takes ready clients; [`sdk_config`] is where the binary and the tests
//! make them. An explicit endpoint (`--aws-endpoint`, `TALLY_AWS_ENDPOINT`) points every
//! client at an emulator; without one the SDK's usual chain (environment, profile, instance
//! role) decides credentials, and the region falls back to `us-east-1` when none is
//! configured.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
// Every SDK crate re-exports the same smithy `SdkError` and metadata trait; the SQS crate's
// path is as good as any.
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use tally_core::backoff::Backoff;

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

/// Cuts `s` to at most `max` bytes on a character boundary (message attributes and items
/// have byte limits; a reason is worth keeping even when cut).
pub(crate) fn truncate_utf8(s: &str, max: usize) -> &str {
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
