//! Counter keys: (org, project or all projects, meter, granularity, bucket start), and the
//! checked arithmetic every reader of counters sums them with.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::ids::{MeterName, OrgId, ProjectId};
use crate::period::Granularity;

/// Whether a counter covers one project or the whole org.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CounterScope<'a> {
    /// All projects of the org.
    Org,
    /// One project.
    Project(&'a ProjectId),
}

/// A counter's identity, borrowing from the events it was folded from so the fold allocates
/// nothing per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey<'a> {
    /// The tenant; every storage key starts with it.
    pub org: &'a OrgId,
    /// Org-wide or one project.
    pub scope: CounterScope<'a>,
    /// The meter.
    pub meter: &'a MeterName,
    /// Bucket width.
    pub granularity: Granularity,
    /// Bucket start, UTC.
    pub start: DateTime<Utc>,
}

impl CounterKey<'_> {
    /// An owned copy, for results that outlive the events.
    pub fn to_owned_key(&self) -> OwnedCounterKey {
        OwnedCounterKey {
            org: self.org.clone(),
            project: match self.scope {
                CounterScope::Org => None,
                CounterScope::Project(p) => Some(p.clone()),
            },
            meter: self.meter.clone(),
            granularity: self.granularity,
            start: self.start,
        }
    }
}

/// A counter's identity, owning its parts (query results, reconcile reports).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OwnedCounterKey {
    /// The tenant.
    pub org: OrgId,
    /// `None` for the org-wide counter.
    pub project: Option<ProjectId>,
    /// The meter.
    pub meter: MeterName,
    /// Bucket width.
    pub granularity: Granularity,
    /// Bucket start, UTC.
    pub start: DateTime<Utc>,
}

impl OwnedCounterKey {
    /// The six counters `event` counts in: its hour, day and month bucket, each for its
    /// project and org-wide. The plain definition, which test oracles and benchmarks
    /// compute their expected counters with, independently of the fold.
    pub fn all_of(event: &Event) -> impl Iterator<Item = OwnedCounterKey> + '_ {
        Granularity::ALL.into_iter().flat_map(move |granularity| {
            [Some(event.project_id.clone()), None]
                .into_iter()
                .map(move |project| OwnedCounterKey {
                    org: event.org_id.clone(),
                    project,
                    meter: event.meter.clone(),
                    granularity,
                    start: granularity.truncate(event.timestamp),
                })
        })
    }

    /// A borrowed view.
    pub fn as_key(&self) -> CounterKey<'_> {
        CounterKey {
            org: &self.org,
            scope: match &self.project {
                None => CounterScope::Org,
                Some(p) => CounterScope::Project(p),
            },
            meter: &self.meter,
            granularity: self.granularity,
            start: self.start,
        }
    }
}

/// Counter values too large to add up exactly: their sum is past what `rust_decimal` holds
/// (about 7.9 × 10^28). Ingest's quantity bounds keep honest usage far below it, so this
/// names a tenant sending the largest quantities it may, or a corrupt counter; whoever
/// meets it reports an error for that org alone, never a rounded or saturated figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("usage is too large to sum exactly (past 7.9e28)")]
pub struct Overflow;

/// The exact sum of counter values, or [`Overflow`]: `Decimal`'s `Sum` and `+` panic past
/// its range, which would end a billing run or an alert pass for every tenant.
///
/// A value of exactly `Decimal::MAX` is an overflow too: the stores' folds saturate there
/// rather than fail an apply, and no exact sum reaches it (ingest's bounds keep sums below
/// 10^19), so a counter holding it is a counter that overflowed and must not be billed.
pub fn checked_sum(values: impl IntoIterator<Item = Decimal>) -> Result<Decimal, Overflow> {
    values.into_iter().try_fold(Decimal::ZERO, |acc, v| {
        if v == Decimal::MAX {
            return Err(Overflow);
        }
        acc.checked_add(v)
            .filter(|s| *s != Decimal::MAX)
            .ok_or(Overflow)
    })
}

/// `part` as a percentage of `whole` to two decimal places; `None` for a zero or negative
/// `whole`, and [`Overflow`] when the quotient is past `Decimal`'s range.
pub fn checked_percent(part: Decimal, whole: Decimal) -> Result<Option<Decimal>, Overflow> {
    if whole <= Decimal::ZERO {
        return Ok(None);
    }
    let ratio = part.checked_div(whole).ok_or(Overflow)?;
    let pct = ratio.checked_mul(Decimal::ONE_HUNDRED).ok_or(Overflow)?;
    Ok(Some(pct.round_dp(2)))
}

#[cfg(test)]
mod checked_tests {
    use super::*;

    #[test]
    fn sums_and_percentages_refuse_to_overflow_instead_of_panicking() {
        let huge = Decimal::MAX / Decimal::TWO;
        assert_eq!(
            checked_sum([Decimal::ONE, Decimal::TWO]),
            Ok(Decimal::from(3))
        );
        assert_eq!(checked_sum([huge, huge, huge]), Err(Overflow));
        assert_eq!(checked_sum([]), Ok(Decimal::ZERO));
        assert_eq!(checked_sum([Decimal::MAX]), Err(Overflow));
        assert_eq!(
            checked_percent(Decimal::from(5), Decimal::from(8)),
            Ok(Some(Decimal::new(6250, 2)))
        );
        assert_eq!(checked_percent(Decimal::ONE, Decimal::ZERO), Ok(None));
        assert_eq!(checked_percent(huge, Decimal::new(1, 3)), Err(Overflow));
    }
}
