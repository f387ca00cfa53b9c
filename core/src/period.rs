//! UTC periods: the calendar month that billing closes, and the hour/day/month buckets that
//! counters are kept in.
//!
//! Everything is UTC so that a counter's bucket never depends on where the aggregator runs.

use std::fmt;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};
use serde::{Deserialize, Serialize};

/// How wide a counter bucket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One UTC hour.
    Hour,
    /// One UTC day.
    Day,
    /// One calendar month in UTC.
    Month,
}

impl Granularity {
    /// All granularities, finest first.
    pub const ALL: [Granularity; 3] = [Granularity::Hour, Granularity::Day, Granularity::Month];

    /// The name used in URLs and storage (`hour`, `day`, `month`).
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Hour => "hour",
            Granularity::Day => "day",
            Granularity::Month => "month",
        }
    }

    /// Parses `hour`, `day` or `month`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hour" => Some(Granularity::Hour),
            "day" => Some(Granularity::Day),
            "month" => Some(Granularity::Month),
            _ => None,
        }
    }

    /// The start of the bucket holding `ts`.
    pub fn truncate(self, ts: DateTime<Utc>) -> DateTime<Utc> {
        let secs = ts.timestamp();
        match self {
            Granularity::Hour => from_secs(secs - secs.rem_euclid(3600)),
            Granularity::Day => from_secs(secs - secs.rem_euclid(86_400)),
            Granularity::Month => Month::of(ts).start(),
        }
    }

    /// The start of the bucket after the one starting at `start`.
    pub fn next(self, start: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Granularity::Hour => from_secs(start.timestamp() + 3600),
            Granularity::Day => from_secs(start.timestamp() + 86_400),
            Granularity::Month => Month::of(start).next().start(),
        }
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn from_secs(secs: i64) -> DateTime<Utc> {
    // Seconds here always come from a valid DateTime rounded down, so they are in range.
    DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Why a month could not be parsed; shown to the caller (`400`, or a CLI error) as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("period must be YYYY-MM with a year from 2000 to 9999, got {0:?}")]
pub struct MonthParseError(pub String);

/// The longest a month stays open to late events after it ends when billing has not closed
/// it sooner: a week, billing's longest grace period. Past it the month takes no events,
/// closed or not, so no month is left open forever.
pub const MAX_LATE_WINDOW: Duration = Duration::days(7);

/// How long every ledger keeps an event's record after writing it, in days: DynamoDB by
/// TTL, SQLite by pruning (`tally prune-ledger`, and `tally serve` on its own). See
/// [`LEDGER_RETENTION`].
pub const LEDGER_RETENTION_DAYS: i64 = 45;

/// How long every ledger keeps an event's record after writing it.
///
/// Why forgetting is safe: a record of an event stamped in month M is written no sooner
/// than M's start less [`crate::event::MAX_FUTURE_SKEW`] (a timestamp may lead the clock by
/// that much), so it is kept until at least M's start + 45 days − 5 minutes. By then M has
/// taken its last event: [`open_for_events`] refuses M from the next month's start plus
/// [`MAX_LATE_WINDOW`], at most 31 + 7 = 38 days after M began. So the same event sent
/// again once its record is gone is refused at ingest as `period_closed` before any
/// duplicate check, and the ledger need not remember it. (An id resent with another,
/// current timestamp is another event, and is counted once its first record is gone; the
/// ledger's promise is about resends of the same event.) Reconcile refuses a month from its
/// start − 5 minutes + 45 days on, before any of its records can be gone.
pub const LEDGER_RETENTION: Duration = Duration::days(LEDGER_RETENTION_DAYS);

// The argument above, checked by the compiler: the longest month plus the late window plus
// the skew ends before the first record of the month may be forgotten.
const _: () = assert!(31 + 7 < LEDGER_RETENTION_DAYS && MAX_LATE_WINDOW.num_days() == 7);

/// Whether an event stamped in `month` may still be recorded at `now`, billing's own
/// closing aside: the current month (and the next, which clock skew can reach), and the
/// previous month until [`MAX_LATE_WINDOW`] after it ended. Everything older is refused
/// at ingest, so a backdated event can neither land in a month nobody bills nor open a
/// fresh allowance.
pub fn open_for_events(month: Month, now: DateTime<Utc>) -> bool {
    let current = Month::of(now);
    month >= current || (month == current.prev() && now < current.start() + MAX_LATE_WINDOW)
}

/// A calendar month in UTC: the billing period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Month {
    year: i32,
    /// 1–12.
    month: u32,
}

impl Month {
    /// The month holding `ts`.
    pub fn of(ts: DateTime<Utc>) -> Self {
        Month {
            year: ts.year(),
            month: ts.month(),
        }
    }

    /// Builds a month; `None` when out of range.
    pub fn new(year: i32, month: u32) -> Option<Self> {
        ((2000..=9999).contains(&year) && (1..=12).contains(&month))
            .then_some(Month { year, month })
    }

    /// Parses `YYYY-MM`.
    pub fn parse(s: &str) -> Result<Self, MonthParseError> {
        let err = || MonthParseError(s.to_owned());
        let (y, m) = s.split_once('-').ok_or_else(err)?;
        if y.len() != 4 || m.len() != 2 || !y.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let year: i32 = y.parse().map_err(|_| err())?;
        let month: u32 = m.parse().map_err(|_| err())?;
        Month::new(year, month).ok_or_else(err)
    }

    /// The year.
    pub fn year(self) -> i32 {
        self.year
    }

    /// The month number, 1–12.
    pub fn month(self) -> u32 {
        self.month
    }

    /// The first instant of the month.
    pub fn start(self) -> DateTime<Utc> {
        let date = NaiveDate::from_ymd_opt(self.year, self.month, 1).unwrap_or(NaiveDate::MIN);
        Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).unwrap_or_default())
    }

    /// The first instant after the month.
    pub fn end(self) -> DateTime<Utc> {
        self.next().start()
    }

    /// The month after this one.
    pub fn next(self) -> Self {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// The month before this one.
    pub fn prev(self) -> Self {
        if self.month == 1 {
            Month {
                year: self.year - 1,
                month: 12,
            }
        } else {
            Month {
                year: self.year,
                month: self.month - 1,
            }
        }
    }

    /// Whether `ts` falls inside the month.
    pub fn contains(self, ts: DateTime<Utc>) -> bool {
        ts >= self.start() && ts < self.end()
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

string_conversions!(Month, MonthParseError, Month::parse, |m: Month| m
    .to_string());

/// Seconds since the hour started; exposed for callers that bucket by hand.
pub fn seconds_into_hour(ts: DateTime<Utc>) -> u32 {
    ts.minute() * 60 + ts.second()
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_current_and_previous_month_take_events() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let m = |s: &str| Month::parse(s).unwrap();
        let now = at("2026-12-05T10:00:00Z");
        assert!(open_for_events(m("2026-12"), now));
        assert!(open_for_events(m("2027-01"), now));
        assert!(open_for_events(m("2026-11"), now));
        assert!(!open_for_events(m("2026-10"), now));
        assert!(!open_for_events(m("2001-01"), now));
        // The previous month closes to events a week after it ended, billed or not.
        assert!(open_for_events(m("2026-11"), at("2026-12-07T23:59:59Z")));
        assert!(!open_for_events(m("2026-11"), at("2026-12-08T00:00:00Z")));
    }

    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn truncation_is_utc() {
        let ts = t("2026-11-26T10:42:17+02:00");
        assert_eq!(Granularity::Hour.truncate(ts), t("2026-11-26T08:00:00Z"));
        assert_eq!(Granularity::Day.truncate(ts), t("2026-11-26T00:00:00Z"));
        assert_eq!(Granularity::Month.truncate(ts), t("2026-11-01T00:00:00Z"));
        assert_eq!(
            Granularity::Month.next(t("2026-12-01T00:00:00Z")),
            t("2027-01-01T00:00:00Z")
        );
    }

    #[test]
    fn months_parse_strictly() {
        assert_eq!(
            Month::parse("2026-02").unwrap().end(),
            t("2026-03-01T00:00:00Z")
        );
        for bad in [
            "2026-13", "2026-1", "26-01", "2026/01", "1999-12", "", "2026-00",
        ] {
            assert!(Month::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Month::parse("2026-01").unwrap().prev().to_string(),
            "2025-12"
        );
    }
}
