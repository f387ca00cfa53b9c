//! Whole Unix seconds, as every store keys bucket starts and compares expiries: one rounding
//! rule and one way back, so the memory, SQLite and DynamoDB stores cannot drift apart.

use chrono::{DateTime, Utc};
use tally_core::ports::StoreError;

/// Unix seconds, rounded up: the first whole second at or after `t` (bucket starts are whole
/// seconds, so `start >= ceil(from)` is `start >= from` and `start < ceil(to)` is
/// `start < to`; an invitation is expired once `now >= expires_at`).
pub(crate) fn ceil_secs(t: DateTime<Utc>) -> i64 {
    let s = t.timestamp();
    if t.timestamp_subsec_nanos() > 0 {
        s.saturating_add(1)
    } else {
        s
    }
}

/// The instant `secs` says, or the earliest one for a number no instant has: for figures
/// only shown or compared (a cut-off, a scan range), where a stored bucket start would use
/// [`bucket_start`] and report the bad number instead.
pub(crate) fn secs_ts(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The bucket start `secs` stored; `Corrupt` for a number no instant has.
pub(crate) fn bucket_start(secs: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp(secs, 0)
        .ok_or_else(|| StoreError::Corrupt(format!("bucket start {secs}")))
}
