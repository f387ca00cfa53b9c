//! `GET /v1/usage` for a `time_weighted_sum` meter: value × hours per bucket (GB-hours from
//! storage readings), integrated from the meter's readings through
//! [`tally_core::ports::period_usage`] rather than read from its counters (which hold only
//! the latest reading).
//!
//! Each bucket is integrated over `[start, min(end, to, now))`: a reading holds until the
//! next one, so without the clamp to now the bucket holding now would charge the current
//! reading for hours that have not happened yet (at 12:00 a day bucket would already hold
//! 24 hours of it). Buckets are read a month at a time (one readings read per month the
//! range touches, at most [`crate::usage::MAX_MONTHS`]); each takes the last earlier
//! reading of its month as carry-in. A month's carry-in from the month before is what
//! month close records with that month's report; the usage API does not read reports, so
//! a month integrates from its first reading (docs/meters-dimensions.md). Buckets whose
//! total is zero are omitted, as buckets without usage are for other meters.

use chrono::{DateTime, Utc};
use tally_core::ids::OrgId;
use tally_core::period::Month;
use tally_core::ports::{CarryIns, CounterValue, UsageStore, period_usage};

use crate::http::ApiError;
use crate::usage::UsageRequest;

/// The buckets of `req` with usage, in time order, for `usage_org` (the org, or its test
/// twin); `req.integrate_until` is now (a request for another meter reads nothing here).
pub(crate) async fn read(
    usage: &dyn UsageStore,
    usage_org: &OrgId,
    req: &UsageRequest,
) -> Result<Vec<CounterValue>, ApiError> {
    let Some(now) = req.integrate_until else {
        return Ok(Vec::new());
    };
    let store = usage
        .readings()
        .ok_or_else(|| ApiError::Unavailable("this server keeps no readings".into()))?;
    let mut out = Vec::new();
    let mut start = req.from;
    while start < req.to {
        let month = Month::of(start);
        let mut starts = Vec::new();
        let mut periods = Vec::new();
        while start < req.to && Month::of(start) == month {
            let end = req.granularity.next(start);
            periods.push((start, clamp(end, req.to, now, start)));
            starts.push(start);
            start = end;
        }
        let none = CarryIns::new();
        let totals = period_usage(
            store,
            usage_org,
            &req.meter,
            month,
            req.project.as_ref(),
            &none,
            &periods,
        )
        .await?;
        out.extend(
            starts
                .into_iter()
                .zip(totals)
                .filter(|(_, v)| !v.is_zero())
                .map(|(start, value)| CounterValue { start, value }),
        );
    }
    Ok(out)
}

/// A bucket's integration end: its end, but never past the range's end or now, and never
/// before its start (a bucket wholly in the future integrates nothing).
pub(crate) fn clamp(
    end: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
    start: DateTime<Utc>,
) -> DateTime<Utc> {
    end.min(to).min(now).max(start)
}

#[cfg(test)]
#[path = "usage_time_weighted_tests.rs"]
mod tests;
