//! Item encoding and decoding, and the mapping of SDK errors to [`StoreError`].
//!
//! Nothing read from the table is trusted: a missing attribute, a wrong type or an
//! unparsable value is [`StoreError::Corrupt`] naming the item, never a panic.

use std::collections::HashMap;
use std::str::FromStr;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use tally_core::event::Event;
use tally_core::ids::{EventId, OrgId};
use tally_core::ports::StoreError;
use tally_core::tenant::KeyHash;

/// One DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// A string attribute.
pub fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// A number attribute.
pub fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Builds an item from (name, value) pairs.
pub fn item<const N: usize>(pairs: [(&str, AttributeValue); N]) -> Item {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn describe(item: &Item) -> String {
    let key = |name: &str| match item.get(name) {
        Some(AttributeValue::S(v)) => v.as_str(),
        _ => "?",
    };
    format!("{}/{}", key("pk"), key("sk"))
}

/// A required string attribute.
pub fn get_s<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v),
        Some(_) => Err(bad_attribute(item, name, "is not a string")),
        None => Err(bad_attribute(item, name, "is missing")),
    }
}

/// The error of an attribute of `item` that is missing or not what it should be.
fn bad_attribute(item: &Item, name: &str, problem: &str) -> StoreError {
    corrupt(format!(
        "item {}: attribute {name} {problem}",
        describe(item)
    ))
}

/// An optional string attribute (absent or NULL is `None`).
pub fn get_opt_s<'a>(item: &'a Item, name: &str) -> Result<Option<&'a str>, StoreError> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(_) => get_s(item, name).map(Some),
    }
}

/// A required number attribute, as an exact decimal.
pub fn get_decimal(item: &Item, name: &str) -> Result<Decimal, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => parse_decimal(v)
            .map_err(|e| corrupt(format!("item {}: attribute {name}: {e}", describe(item)))),
        Some(_) => Err(bad_attribute(item, name, "is not a number")),
        None => Err(bad_attribute(item, name, "is missing")),
    }
}

/// Parses a DynamoDB number into a decimal without floats. DynamoDB (and its emulators) may
/// write a number in exponent form (`2E-7`), so both forms are accepted.
pub fn parse_decimal(text: &str) -> Result<Decimal, String> {
    let parsed = if text.bytes().any(|b| b == b'e' || b == b'E') {
        Decimal::from_scientific(text)
    } else {
        Decimal::from_str(text)
    };
    parsed.map_err(|e| format!("number {text:?} is not a decimal Tally can hold: {e}"))
}

/// A timestamp as stored: RFC 3339, UTC, with as many fractional digits as it has.
pub fn ts_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Parses a stored timestamp.
pub fn parse_ts(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| corrupt(format!("timestamp {s:?}: {e}")))
}

/// A `latest` reading's time as a number that orders exactly like the instant: Unix
/// nanoseconds (an `i128`, so any `DateTime` fits; DynamoDB numbers hold 38 digits).
pub fn instant_number(t: DateTime<Utc>) -> String {
    (i128::from(t.timestamp()) * 1_000_000_000 + i128::from(t.timestamp_subsec_nanos())).to_string()
}

/// Parses a stored id.
pub fn parse_id<T, E: std::fmt::Display>(
    s: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, StoreError> {
    parse(s).map_err(|e| corrupt(format!("stored id {s:?}: {e}")))
}

/// A [`StoreError::Corrupt`].
pub fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// Encodes a ledger body (the same JSON the SQLite ledger stores).
pub fn encode_body(e: &Event) -> Result<String, StoreError> {
    crate::ledger_body::encode(e)
}

/// Decodes a ledger body back into the event.
pub fn decode_event(org: &OrgId, id: EventId, body: &str) -> Result<Event, StoreError> {
    crate::ledger_body::decode(org, id, body, "ledger record")
}

// ---------------------------------------------------------------------------------------
// Errors.

/// Error codes DynamoDB uses for "too much at once" (and, for a plain write, "a transaction
/// holds this item right now": `TransactionConflictException`); retrying later helps.
const THROTTLING_CODES: [&str; 8] = [
    "ProvisionedThroughputExceededException",
    "TransactionConflictException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TransactionInProgressException",
    "InternalServerError",
    "ServiceUnavailable",
    "LimitExceededException",
];

/// Cancellation reason codes of a `TransactWriteItems` that a retry may get past.
pub const RETRYABLE_REASONS: [&str; 4] = [
    "TransactionConflict",
    "ThrottlingError",
    "ProvisionedThroughputExceeded",
    "RequestLimitExceeded",
];

/// Whether an SDK error is worth retrying: throttling, 5xx, timeouts and network failures.
pub fn is_retryable<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    match err {
        SdkError::ServiceError(se) => {
            se.raw().status().is_server_error()
                || se
                    .err()
                    .code()
                    .is_some_and(|c| THROTTLING_CODES.contains(&c))
        }
        SdkError::ConstructionFailure(_) => false,
        // Timeouts, dispatch failures (network) and unparsable responses.
        _ => true,
    }
}

/// Sends one call (`send` builds and sends it afresh each time) until it answers, fails
/// for a reason retrying cannot help (a failed condition among them, for the caller to
/// read), or `policy`'s attempts run out, pausing between attempts as every store call
/// does. The last error is handed back either way.
pub async fn send_retrying<O, E, Fut>(
    policy: &tally_core::backoff::Backoff,
    mut send: impl FnMut() -> Fut,
) -> Result<O, SdkError<E>>
where
    E: ProvideErrorMetadata,
    Fut: std::future::Future<Output = Result<O, SdkError<E>>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match send().await {
            Err(e) if is_retryable(&e) && attempt < policy.max_attempts => {
                crate::aws::sleep_before_retry(policy, attempt).await;
            }
            done => return done,
        }
    }
}

/// The last error of a [`send_retrying`] call in words, for a caller that reports failures
/// as text: one retrying could not help as [`describe_sdk_error`] says it, one that was still
/// worth retrying when `policy`'s attempts ran out as `gave up after N attempts: …`.
pub fn describe_last_error<E>(
    policy: &tally_core::backoff::Backoff,
    op: &str,
    err: &SdkError<E>,
) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let why = describe_sdk_error(op, err);
    if is_retryable(err) {
        // `send_retrying` stops on a retryable error only at its last attempt.
        let attempts = policy.max_attempts.max(1);
        format!("gave up after {attempts} attempts: {why}")
    } else {
        why
    }
}

/// Waits for every task of `tasks` and keeps the first error: a task's own, or `what`
/// failed (panicked or was cancelled). Every task is awaited, so none is left writing
/// after the caller reports.
pub async fn join_all_or_first_error(
    mut tasks: tokio::task::JoinSet<Result<(), String>>,
    what: &str,
) -> Result<(), String> {
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.map_err(|e| format!("{what} failed: {e}"));
        if let Err(e) = result.and_then(|r| r) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Describes an SDK error in one line, with its code and the whole cause chain.
pub fn describe_sdk_error<E>(op: &str, err: &SdkError<E>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err.code() {
        Some(code) => format!(
            "DynamoDB {op}: {code}: {}",
            err.message().unwrap_or("no message")
        ),
        None => format!("DynamoDB {op}: {}", DisplayErrorContext(err)),
    }
}

/// Maps an SDK error the caller has no special meaning for: everything is
/// [`StoreError::Unavailable`] (the port's "the backend failed"), with a message saying
/// what failed and how.
pub fn sdk_error<E>(op: &str, err: SdkError<E>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    StoreError::Unavailable(describe_sdk_error(op, &err))
}

/// The write errors whose condition can fail, so [`unless_condition_failed`] reads the
/// three operations' errors alike.
pub trait ConditionalWriteError {
    /// Whether the write was refused because its condition expression was false.
    fn is_condition_failed(&self) -> bool;
}

impl ConditionalWriteError for PutItemError {
    fn is_condition_failed(&self) -> bool {
        matches!(self, PutItemError::ConditionalCheckFailedException(_))
    }
}

impl ConditionalWriteError for UpdateItemError {
    fn is_condition_failed(&self) -> bool {
        matches!(self, UpdateItemError::ConditionalCheckFailedException(_))
    }
}

impl ConditionalWriteError for DeleteItemError {
    fn is_condition_failed(&self) -> bool {
        matches!(self, DeleteItemError::ConditionalCheckFailedException(_))
    }
}

/// A conditional write's result with the failed condition split out: `Some(output)` when
/// it wrote, `None` when its condition was false (an expected answer for every caller),
/// any other failure as [`sdk_error`] for `op`.
pub fn unless_condition_failed<T, E>(
    op: &str,
    sent: Result<T, SdkError<E>>,
) -> Result<Option<T>, StoreError>
where
    E: ConditionalWriteError + ProvideErrorMetadata + std::error::Error + 'static,
{
    match sent {
        Ok(out) => Ok(Some(out)),
        Err(e) if condition_failed(&e) => Ok(None),
        Err(e) => Err(sdk_error(op, e)),
    }
}

/// Whether a conditional write was refused because its condition was false.
pub fn condition_failed<E: ConditionalWriteError>(err: &SdkError<E>) -> bool {
    err.as_service_error()
        .is_some_and(ConditionalWriteError::is_condition_failed)
}

/// A conditional write whose failed condition needs nothing more from the caller (the
/// write was done before, or is no longer this caller's to do): `Ok` then as when it
/// wrote; any other failure described for `op`.
pub fn written_or_condition_failed<T, E>(
    op: &str,
    sent: Result<T, SdkError<E>>,
) -> Result<(), String>
where
    E: ConditionalWriteError + ProvideErrorMetadata + std::error::Error + 'static,
{
    match sent {
        Err(e) if !condition_failed(&e) => Err(describe_sdk_error(op, &e)),
        _ => Ok(()),
    }
}

/// A request that could not be built (a missing required field: a bug in this module).
pub fn build_error(err: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Unavailable(format!("building a DynamoDB request: {err}"))
}

/// The `hash` attribute of a key, invitation or id guard item; `what` names it in the
/// `Corrupt` error a malformed one gives.
pub fn hash_of(it: &Item, what: &'static str) -> Result<KeyHash, StoreError> {
    KeyHash::from_hex(get_s(it, "hash")?).ok_or_else(|| corrupt(what))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn numbers_parse_exactly_in_both_forms() {
        assert_eq!(parse_decimal("3.75").unwrap(), Decimal::new(375, 2));
        assert_eq!(parse_decimal("2E-7").unwrap(), Decimal::new(2, 7));
        assert_eq!(parse_decimal("1.5E+3").unwrap(), Decimal::new(1500, 0));
        assert_eq!(
            parse_decimal("123456789012345678.123456789")
                .unwrap()
                .to_string(),
            "123456789012345678.123456789"
        );
        assert!(parse_decimal("x").is_err());
        assert!(parse_decimal("1E+40").is_err());
    }

    #[test]
    fn throttles_and_transaction_conflicts_of_plain_writes_are_retried() {
        use aws_sdk_dynamodb::config::http::HttpResponse;
        use aws_sdk_dynamodb::error::ErrorMetadata;
        use aws_sdk_dynamodb::operation::put_item::PutItemError;
        use aws_smithy_types::body::SdkBody;
        let answer = |status: u16, code: &str| -> SdkError<PutItemError, HttpResponse> {
            SdkError::service_error(
                PutItemError::generic(ErrorMetadata::builder().code(code).build()),
                HttpResponse::new(status.try_into().unwrap(), SdkBody::empty()),
            )
        };
        assert!(is_retryable(&answer(400, "TransactionConflictException")));
        assert!(is_retryable(&answer(400, "ThrottlingException")));
        assert!(is_retryable(&answer(
            400,
            "ProvisionedThroughputExceededException"
        )));
        assert!(is_retryable(&answer(500, "InternalFailure")));
        assert!(!is_retryable(&answer(400, "ValidationException")));
        assert!(!is_retryable(&answer(
            400,
            "ConditionalCheckFailedException"
        )));
    }

    #[test]
    fn instants_order_like_time() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let a = instant_number(t("2026-11-26T12:00:00Z"));
        let b = instant_number(t("2026-11-26T12:00:00.001Z"));
        assert_eq!(a, "1795694400000000000");
        assert!(a.parse::<i128>().unwrap() < b.parse::<i128>().unwrap());
    }
}
