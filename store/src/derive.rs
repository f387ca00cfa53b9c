//! Counters derived from cells when they are read, shared by both stores.
//!
//! Neither store writes the six counters an event touches (org-wide and per project × hour,
//! day, month) for `sum`, `count`, `max` and `latest` meters. Each writes cells per (org,
//! project, meter): DynamoDB one item per day holding an attribute per hour, SQLite one row
//! per hour and one per day. Coarser and org-wide values are derived here when read: a batch
//! costs one or two writes per distinct project-hour instead of six per event, and a month
//! read merges ~30 cells per project. `unique_count` cannot be derived this way (distinct
//! values do not add up across hours or projects), so both stores keep its six counters
//! explicitly, with one marker per value.
//!
//! Derivation uses the core's own fold ([`tally_core::fold::spread`] and
//! [`tally_core::fold::Delta::merge`]), so a derived counter is by construction what
//! applying the same events to six explicit counters would hold.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use chrono::DateTime;
use rust_decimal::Decimal;
use tally_core::counter::OwnedCounterKey;
use tally_core::fold::{self, Cell, Delta};
use tally_core::ids::{MeterName, OrgId, ProjectId};
use tally_core::period::Granularity;

/// Stored cells read back: a (project, meter) and the delta of each hour stored for it (a
/// DynamoDB day item holds up to 24 hours, a SQLite row one).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCell {
    /// The project.
    pub project: ProjectId,
    /// The meter.
    pub meter: MeterName,
    /// (start in Unix seconds, what the cell holds) for every stored hour; SQLite's day
    /// rows put their day's start here, and then only day and month counters derived from
    /// them are meaningful.
    pub hours: Vec<(i64, Delta)>,
}

/// The value a counter holds after one delta from nothing (every derived counter's value).
pub fn value_of(delta: &Delta) -> Decimal {
    fold::apply_delta(None, None, delta, 0).0
}

/// The six counters (org-wide and per project × hour, day, month) that stored cells add up
/// to: what `stored_counters` reports and `reconcile` compares with the ledger.
pub fn derive_counters(org: &OrgId, cells: &[StoredCell]) -> Vec<(OwnedCounterKey, Decimal)> {
    let flat = cells.iter().flat_map(|c| {
        c.hours.iter().map(move |(hour, delta)| {
            (
                Cell {
                    org,
                    project: &c.project,
                    meter: &c.meter,
                    hour: *hour,
                },
                delta.clone(),
            )
        })
    });
    fold::spread(flat)
        .into_iter()
        .map(|(key, delta)| (key.to_owned_key(), value_of(&delta)))
        .collect()
}

/// One series' buckets from stored cell values (already narrowed to one meter, and to one
/// project when the series is a project's), each given as (the start of the hour or day it
/// holds, its delta): bucket start → merged delta, for bucket starts in `[from, to)`.
pub fn derive_series(
    cells: impl IntoIterator<Item = (i64, Delta)>,
    granularity: Granularity,
    from: i64,
    to: i64,
) -> BTreeMap<i64, Delta> {
    let mut buckets: BTreeMap<i64, Delta> = BTreeMap::new();
    for (at, delta) in cells {
        let Some(t) = DateTime::from_timestamp(at, 0) else {
            continue;
        };
        let start = granularity.truncate(t).timestamp();
        if start < from || start >= to {
            continue;
        }
        match buckets.entry(start) {
            Entry::Occupied(mut e) => e.get_mut().merge(&delta),
            Entry::Vacant(e) => {
                e.insert(delta);
            }
        }
    }
    buckets
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::test_fixtures::{DAY as day, org_a, two_hour_cell};

    #[test]
    fn cells_derive_like_the_fold() {
        let (org, cell) = (org_a(), two_hour_cell());
        let counters = derive_counters(&org, std::slice::from_ref(&cell));
        // 2 hours × 2 scopes + 1 day × 2 + 1 month × 2.
        assert_eq!(counters.len(), 8);
        let day_total: Vec<_> = counters
            .iter()
            .filter(|(k, _)| k.granularity == Granularity::Day)
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(day_total, vec![Decimal::new(45, 1); 2]);
        let series = derive_series(cell.hours.clone(), Granularity::Hour, day, day + 6 * 3600);
        assert_eq!(series.len(), 1);
        assert_eq!(value_of(&series[&(day + 5 * 3600)]), Decimal::from(3));
        // A bucket that starts before `from` is left out even though its hours are after it.
        let days = derive_series(cell.hours, Granularity::Day, day + 1, day + 86_400);
        assert!(days.is_empty(), "{days:?}");
    }
}
