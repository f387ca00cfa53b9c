//! The ledger, the counters and closed periods in memory: [`UsageStore`].
//!
//! A batch is applied under the store's lock, so it is atomic: the events the ledger has
//! not seen (the first copy per (org, event id); a later copy whose contents differ is
//! reported in [`ApplyReport::conflicts`]) are recorded, and
//! folded into (org, project, meter, hour) cells with [`fold::fold_cells`], each merged into
//! the stored cell with [`Delta::merge`]. Every counter is derived from those cells when it
//! is read, with the core's own [`fold::spread`] (`stored_counters`) and
//! [`crate::derive::derive_series`] (`counter_series`, as the other stores read theirs), so hour,
//! day and month, org-wide and per project, are by construction what a fold of the ledger
//! gives. Unlike the other stores, `unique_count` meters need no explicit counters here: a
//! cell keeps the set of values it saw, and sets merge by union across hours and projects,
//! which a database row or item could not afford.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::counter::OwnedCounterKey;
use tally_core::dimension::is_series_of;
use tally_core::event::Event;
use tally_core::fold::{self, Cell, Delta};
use tally_core::headroom::{self, TotalKey};
use tally_core::ids::{EventId, OrgId};
use tally_core::period::Month;
use tally_core::ports::{
    ApplyOutcome, ApplyReport, CounterQuery, CounterValue, LedgerPage, LedgerPageQuery,
    ReadingStore, StoreError, UsageStore,
};

use super::{MemoryStore, Op};
use crate::derive;
use crate::secs::{bucket_start, ceil_secs};

/// Most ledger events one [`UsageStore::ledger_page`] call returns (as on SQLite and
/// DynamoDB).
pub const MAX_LEDGER_PAGE: usize = 10_000;

/// The value a counter holding `delta` has: [`fold::apply_delta`] on an absent counter, with
/// every value of a `unique_count` delta new (as a fold of the ledger counts them).
fn value_of(delta: &Delta) -> Decimal {
    let distinct = match delta {
        Delta::Unique(values) => values.len() as u64,
        _ => 0,
    };
    fold::apply_delta(None, None, delta, distinct).0
}

/// The stored month total of an adding meter ([`TotalKey`]): its cells' values over the
/// month's hours, every project and every series of the meter (`meter{dim=value}` keys
/// sort after the bare name, past any longer meter name sharing its prefix).
fn month_total(cells: &HashMap<OrgId, super::Cells>, key: &TotalKey) -> Decimal {
    let Some(series) = cells.get(&key.org) else {
        return Decimal::ZERO;
    };
    let (from, to) = (key.month.start().timestamp(), key.month.end().timestamp());
    let meter = key.meter.as_str();
    series
        .range((key.meter.clone(), i64::MIN)..)
        .take_while(|((m, _), _)| m.as_str().starts_with(meter))
        .filter(|((m, hour), _)| is_series_of(m.as_str(), meter) && (from..to).contains(hour))
        .flat_map(|(_, by_project)| by_project.values())
        .map(|d| match d {
            Delta::Add(v) => *v,
            _ => Decimal::ZERO,
        })
        .fold(Decimal::ZERO, |acc, v| acc.saturating_add(v))
}

/// Opaque ledger cursor: the hex of the last event id returned.
fn encode_cursor(id: &EventId) -> String {
    hex::encode(id.as_str().as_bytes())
}

fn decode_cursor(c: &str) -> Result<EventId, StoreError> {
    hex::decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| EventId::parse(&s).ok())
        .ok_or_else(|| {
            StoreError::Corrupt(format!("ledger cursor {c:?} was not issued by this store"))
        })
}

#[async_trait]
impl UsageStore for MemoryStore {
    /// The ledger is kept as long as the store.
    fn readings(&self) -> Option<&dyn ReadingStore> {
        Some(self)
    }

    fn ledger_retention(&self) -> Option<chrono::Duration> {
        None
    }

    async fn apply_batch(&self, events: &[Event]) -> Result<ApplyReport, StoreError> {
        let mut st = self.lock();
        // The first copy of each (org, id) in the batch, and whether the ledger lacks it.
        let mut first: HashMap<(&OrgId, &EventId), usize> = HashMap::new();
        let mut new = Vec::new();
        for (i, e) in events.iter().enumerate() {
            if let std::collections::hash_map::Entry::Vacant(slot) = first.entry((&e.org_id, &e.id))
            {
                slot.insert(i);
                if !st
                    .ledger
                    .get(&e.org_id)
                    .is_some_and(|l| l.contains_key(&e.id))
                {
                    new.push(i);
                }
            }
        }
        // Under the lock, checking the totals and counting are one step, as in SQLite's
        // write transaction.
        let admission = headroom::admit(new.iter().map(|&i| (i, &events[i])), |key| {
            headroom::room_under_limit(month_total(&st.cells, key))
        });
        let refused: HashSet<usize> = admission.refused.into_iter().collect();
        let mut fresh: Vec<&Event> = Vec::with_capacity(new.len());
        let mut outcomes = Vec::with_capacity(events.len());
        let mut conflicts = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let copy_of = first.get(&(&e.org_id, &e.id)).copied().unwrap_or(i);
            if refused.contains(&copy_of) {
                // A repeat of a refused first copy was not counted either.
                outcomes.push(ApplyOutcome::Overflow);
                continue;
            }
            match st
                .ledger
                .entry(e.org_id.clone())
                .or_default()
                .entry(e.id.clone())
            {
                Entry::Vacant(slot) => {
                    slot.insert(e.clone());
                    fresh.push(e);
                    outcomes.push(ApplyOutcome::Applied);
                }
                Entry::Occupied(counted) => {
                    if counted.get() != e {
                        conflicts.push(i);
                    }
                    outcomes.push(ApplyOutcome::Duplicate);
                }
            }
        }
        for (cell, delta) in fold::fold_cells(fresh) {
            let series = st.cells.entry(cell.org.clone()).or_default();
            let hour = series.entry((cell.meter.clone(), cell.hour)).or_default();
            match hour.entry(cell.project.clone()) {
                Entry::Occupied(mut stored) => stored.get_mut().merge(&delta),
                Entry::Vacant(slot) => {
                    slot.insert(delta);
                }
            }
        }
        Ok(ApplyReport {
            outcomes,
            conflicts,
        })
    }

    async fn counter_series(&self, q: &CounterQuery) -> Result<Vec<CounterValue>, StoreError> {
        self.lock().observe(Op::CounterSeries)?;
        let (from, to) = (ceil_secs(q.from), ceil_secs(q.to));
        if from >= to {
            return Ok(Vec::new());
        }
        let buckets = {
            let st = self.lock();
            let Some(cells) = st.cells.get(&q.org) else {
                return Ok(Vec::new());
            };
            // The meter's cells from `from` on (a bucket holding an earlier cell starts
            // before `from`); `derive_series` drops those of buckets outside the range.
            // A bare meter's total takes in its series (`meter{dim=value}`, which sort
            // after it, past any longer meter name sharing its prefix).
            let of_meter = cells
                .range((q.meter.clone(), from)..)
                .take_while(|((meter, _), _)| meter.as_str().starts_with(q.meter.as_str()))
                .filter(|((meter, _), _)| is_series_of(meter.as_str(), q.meter.as_str()))
                .flat_map(|((_, hour), projects)| {
                    projects
                        .iter()
                        .filter(|(project, _)| q.project.as_ref().is_none_or(|p| p == *project))
                        .map(|(_, delta)| (*hour, delta.clone()))
                });
            derive::derive_series(of_meter, q.granularity, from, to)
        };
        buckets
            .into_iter()
            .map(|(start, delta)| {
                Ok(CounterValue {
                    start: bucket_start(start)?,
                    value: value_of(&delta),
                })
            })
            .collect()
    }

    async fn ledger_page(&self, q: &LedgerPageQuery<'_>) -> Result<LedgerPage, StoreError> {
        let (org, month, cursor, limit) = (q.org, q.month, &q.cursor, q.limit);
        let after = cursor.as_deref().map(decode_cursor).transpose()?;
        let limit = limit.clamp(1, MAX_LEDGER_PAGE);
        let st = self.lock();
        let Some(ledger) = st.ledger.get(org) else {
            return Ok(LedgerPage::default());
        };
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        // One more than asked, to learn whether another page exists.
        let mut events: Vec<Event> = ledger
            .range((lower, Bound::Unbounded))
            .map(|(_, e)| e)
            .filter(|e| month.contains(e.timestamp))
            .take(limit + 1)
            .cloned()
            .collect();
        let next = if events.len() > limit {
            events.truncate(limit);
            events.last().map(|e| encode_cursor(&e.id))
        } else {
            None
        };
        Ok(LedgerPage { events, next })
    }

    async fn stored_counters(
        &self,
        org: &OrgId,
        month: Month,
    ) -> Result<Vec<(OwnedCounterKey, Decimal)>, StoreError> {
        let (from, to) = (month.start().timestamp(), month.end().timestamp());
        let st = self.lock();
        let Some(cells) = st.cells.get(org) else {
            return Ok(Vec::new());
        };
        let in_month = cells
            .iter()
            .filter(|((_, hour), _)| (from..to).contains(hour))
            .flat_map(|((meter, hour), projects)| {
                projects.iter().map(|(project, delta)| {
                    (
                        Cell {
                            org,
                            project,
                            meter,
                            hour: *hour,
                        },
                        delta.clone(),
                    )
                })
            });
        let counters: BTreeMap<OwnedCounterKey, Decimal> = fold::spread(in_month)
            .into_iter()
            .map(|(key, delta)| (key.to_owned_key(), value_of(&delta)))
            .collect();
        Ok(counters.into_iter().collect())
    }

    async fn is_period_closed(&self, month: Month) -> Result<bool, StoreError> {
        let mut st = self.lock();
        st.observe(Op::IsPeriodClosed)?;
        Ok(st.closed.contains_key(&month))
    }

    async fn close_period(&self, month: Month, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.lock().closed.entry(month).or_insert(at);
        Ok(())
    }
}
