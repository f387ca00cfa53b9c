//! The pure batch fold: events in, counter deltas out.
//!
//! Every backend applies a batch the same way: drop repeats inside the batch
//! ([`dedupe_in_batch`]), find which events the ledger has not seen, and fold only those
//! ([`fold`]) into one delta per counter they touch: org-wide and per project, at hour, day
//! and month granularity. Folding first collapses events into per-(org, project, meter, hour)
//! cells, one hash update per event, and only then spreads each cell to its six counters, so
//! the cost per event stays flat however many granularities are kept.
//!
//! Every combination here is commutative and associative (addition, max, latest-by-(time,
//! value), set union), which is what makes the totals independent of event order and of how a
//! stream is split into batches; the property tests below check exactly that.

use std::collections::{BTreeSet, HashMap, HashSet};

/// The fold's hasher: keys are short ids, and SipHash (std's default) spent more time than
/// the rest of the fold. foldhash is seeded per process, so keys an outsider picks (event
/// ids) cannot be precomputed to collide.
type Hasher = foldhash::fast::RandomState;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::counter::{CounterKey, CounterScope};
use crate::event::Event;
use crate::ids::{EventId, MeterName, OrgId, ProjectId};
use crate::meter::Aggregation;
use crate::period::Granularity;

/// What a batch does to one counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    /// Add to the counter (`sum`, `count`).
    Add(Decimal),
    /// Raise the counter to at least this value (`max`).
    Max(Decimal),
    /// Replace the counter if this reading is later (`latest`). Ties on time go to the larger
    /// value so the outcome does not depend on arrival order.
    Latest {
        /// The reading's timestamp.
        at: DateTime<Utc>,
        /// The reading.
        value: Decimal,
    },
    /// Values seen for a `unique_count` meter; the store counts those it had not seen yet.
    Unique(BTreeSet<String>),
}

impl Delta {
    fn of(event: &Event) -> Delta {
        let q = event.quantity.value();
        match &event.aggregation {
            Aggregation::Sum => Delta::Add(q),
            Aggregation::Count => Delta::Add(Decimal::ONE),
            Aggregation::Max => Delta::Max(q),
            Aggregation::Latest => Delta::Latest {
                at: event.timestamp,
                value: q,
            },
            Aggregation::UniqueCount { .. } => Delta::Unique(
                event
                    .unique_value()
                    .map(|v| v.into_owned())
                    .into_iter()
                    .collect(),
            ),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Delta::Add(_) => 0,
            Delta::Max(_) => 1,
            Delta::Latest { .. } => 2,
            Delta::Unique(_) => 3,
        }
    }

    /// Combines another delta for the same counter into this one.
    ///
    /// Both deltas of one counter come from one meter and so have one kind. Should a meter's
    /// aggregation change under a running counter, the kind with the higher rank wins, which
    /// keeps the merge order-independent.
    pub fn merge(&mut self, other: &Delta) {
        match (&mut *self, other) {
            (Delta::Add(a), Delta::Add(b)) => *a = a.saturating_add(*b),
            (Delta::Max(a), Delta::Max(b)) => *a = (*a).max(*b),
            (Delta::Latest { at, value }, Delta::Latest { at: bt, value: bv }) => {
                if (*bt, *bv) > (*at, *value) {
                    *at = *bt;
                    *value = *bv;
                }
            }
            (Delta::Unique(a), Delta::Unique(b)) => a.extend(b.iter().cloned()),
            (me, other) => {
                if other.rank() > me.rank() {
                    *me = other.clone();
                }
            }
        }
    }
}

/// Keeps the first occurrence of each (org, event id) in a batch, in batch order.
pub fn dedupe_in_batch(events: &[Event]) -> Vec<&Event> {
    let mut seen: HashSet<(&OrgId, &EventId), Hasher> =
        HashSet::with_capacity_and_hasher(events.len(), Hasher::default());
    events
        .iter()
        .filter(|e| seen.insert((&e.org_id, &e.id)))
        .collect()
}

/// One delta per counter, in no particular order (callers that need an order sort by what
/// matters to them; sorting here cost more than the fold itself on workload W).
pub type Deltas<'a> = Vec<(CounterKey<'a>, Delta)>;

/// One (org, project, meter, hour) cell: the first stage of the fold, and the unit a store
/// may keep instead of the six counters (the DynamoDB store writes cells and derives day,
/// month and org-wide values when it reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cell<'a> {
    /// The org.
    pub org: &'a OrgId,
    /// The project.
    pub project: &'a ProjectId,
    /// The meter.
    pub meter: &'a MeterName,
    /// Start of the hour, Unix seconds.
    pub hour: i64,
}

/// Folds events (already known to be new) into one delta per (org, project, meter, hour)
/// cell, in no particular order.
pub fn fold_cells<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<(Cell<'a>, Delta)> {
    let events = events.into_iter();
    let mut cells: HashMap<Cell<'a>, Delta, Hasher> =
        HashMap::with_capacity_and_hasher(events.size_hint().0, Hasher::default());
    for e in events {
        let secs = e.timestamp.timestamp();
        let cell = Cell {
            org: &e.org_id,
            project: &e.project_id,
            meter: &e.meter,
            hour: secs - secs.rem_euclid(3600),
        };
        let d = Delta::of(e);
        match cells.entry(cell) {
            std::collections::hash_map::Entry::Occupied(mut o) => o.get_mut().merge(&d),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(d);
            }
        }
    }
    cells.into_iter().collect()
}

/// Spreads cell deltas to the six counters each touches: org-wide and per project, at hour,
/// day and month granularity.
pub fn spread<'a>(cells: impl IntoIterator<Item = (Cell<'a>, Delta)>) -> Deltas<'a> {
    let cells = cells.into_iter();
    let mut counters: HashMap<CounterKey<'a>, Delta, Hasher> =
        HashMap::with_capacity_and_hasher(cells.size_hint().0 * 4, Hasher::default());
    // Cells of a batch mostly share a day: remember the last day's month start instead of
    // asking the calendar for every cell.
    let mut month_of_day: Option<(i64, DateTime<Utc>)> = None;
    for (cell, delta) in cells {
        let hour = DateTime::from_timestamp(cell.hour, 0).unwrap_or(DateTime::<Utc>::MIN_UTC);
        let day_secs = cell.hour - cell.hour.rem_euclid(86_400);
        let day = DateTime::from_timestamp(day_secs, 0).unwrap_or(DateTime::<Utc>::MIN_UTC);
        let month = match month_of_day {
            Some((d, m)) if d == day_secs => m,
            _ => {
                let m = Granularity::Month.truncate(hour);
                month_of_day = Some((day_secs, m));
                m
            }
        };
        for (granularity, start) in [
            (Granularity::Hour, hour),
            (Granularity::Day, day),
            (Granularity::Month, month),
        ] {
            for scope in [CounterScope::Project(cell.project), CounterScope::Org] {
                let key = CounterKey {
                    org: cell.org,
                    scope,
                    meter: cell.meter,
                    granularity,
                    start,
                };
                match counters.entry(key) {
                    std::collections::hash_map::Entry::Occupied(mut o) => o.get_mut().merge(&delta),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(delta.clone());
                    }
                }
            }
        }
    }
    counters.into_iter().collect()
}

/// Folds events (already known to be new) into counter deltas for org and project at hour,
/// day and month granularity: [`fold_cells`], then [`spread`].
pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> Deltas<'a> {
    spread(fold_cells(events))
}

/// Applies a delta to a counter's current value, as every store does: the value a counter
/// holds after the delta, given what it held before (`None` if it did not exist). For
/// `Unique` the caller passes how many of the values were new, since only the store knows.
pub fn apply_delta(
    current: Option<Decimal>,
    current_latest_at: Option<DateTime<Utc>>,
    delta: &Delta,
    new_unique: u64,
) -> (Decimal, Option<DateTime<Utc>>) {
    let cur = current.unwrap_or(Decimal::ZERO);
    match delta {
        Delta::Add(d) => (cur.saturating_add(*d), None),
        Delta::Max(d) => (if current.is_some() { cur.max(*d) } else { *d }, None),
        Delta::Latest { at, value } => match (current, current_latest_at) {
            (Some(v), Some(t)) if (t, v) >= (*at, *value) => (v, Some(t)),
            _ => (*value, Some(*at)),
        },
        Delta::Unique(_) => (cur.saturating_add(Decimal::from(new_unique)), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Quantity;
    use crate::ids::ProjectId;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn event(
        org: u8,
        project: u8,
        meter: &str,
        agg: Aggregation,
        q: Decimal,
        secs: i64,
        id: u32,
    ) -> Event {
        Event {
            org_id: OrgId::parse(&format!("org_{org}")).unwrap(),
            id: EventId::parse(&format!("e{id}")).unwrap(),
            project_id: ProjectId::parse(&format!("prj_{project}")).unwrap(),
            meter: MeterName::parse(meter).unwrap(),
            aggregation: agg,
            quantity: Quantity::new(q).unwrap(),
            timestamp: DateTime::from_timestamp(1_790_000_000 + secs, 0).unwrap(),
            properties: serde_json::Map::new(),
        }
    }

    /// Applies deltas to an in-memory "store", as a backend would.
    type Memory = BTreeMap<
        crate::counter::OwnedCounterKey,
        (Decimal, Option<DateTime<Utc>>, BTreeSet<String>),
    >;

    fn apply_all(store: &mut Memory, deltas: &Deltas<'_>) {
        for (k, d) in deltas {
            let entry = store.entry(k.to_owned_key());
            let slot = entry.or_insert((Decimal::ZERO, None, BTreeSet::new()));
            let existed = slot.0 != Decimal::ZERO || slot.1.is_some() || !slot.2.is_empty();
            let new_unique = match d {
                Delta::Unique(vals) => {
                    vals.iter().filter(|v| slot.2.insert((*v).clone())).count() as u64
                }
                _ => 0,
            };
            let (v, at) = apply_delta(existed.then_some(slot.0), slot.1, d, new_unique);
            slot.0 = v;
            slot.1 = at;
        }
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        (
            0u8..3,
            0u8..3,
            0usize..3,
            0u64..1_000_000_000,
            0u32..6,
            -200_000i64..200_000,
            0u32..500,
        )
            .prop_map(|(org, project, meter, q, scale, secs, id)| {
                let (name, agg) = [
                    ("api_calls", Aggregation::Sum),
                    ("storage_bytes", Aggregation::Max),
                    ("temp", Aggregation::Latest),
                ][meter]
                    .clone();
                event(
                    org,
                    project,
                    name,
                    agg,
                    Decimal::new(q as i64, scale),
                    secs,
                    id,
                )
            })
    }

    #[test]
    fn dedupe_keeps_first_per_org_and_id() {
        let a = event(1, 1, "api_calls", Aggregation::Sum, Decimal::ONE, 0, 1);
        let mut b = a.clone();
        b.quantity = Quantity::new(Decimal::TEN).unwrap();
        let c = event(2, 1, "api_calls", Aggregation::Sum, Decimal::ONE, 0, 1);
        let batch = [a.clone(), b, c];
        let kept = dedupe_in_batch(&batch);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0], &a);
    }

    #[test]
    fn one_event_touches_six_counters() {
        let e = event(
            1,
            1,
            "api_calls",
            Aggregation::Sum,
            Decimal::new(25, 1),
            0,
            1,
        );
        let d = fold([&e]);
        assert_eq!(d.len(), 6);
        assert!(d.iter().all(|(_, d)| *d == Delta::Add(Decimal::new(25, 1))));
    }

    #[test]
    fn count_ignores_quantity_and_latest_breaks_ties_by_value() {
        let a = event(1, 1, "calls", Aggregation::Count, Decimal::new(99, 0), 0, 1);
        let d = fold([&a]);
        assert_eq!(d[0].1, Delta::Add(Decimal::ONE));
        let x = event(1, 1, "t", Aggregation::Latest, Decimal::ONE, 10, 1);
        let y = event(1, 1, "t", Aggregation::Latest, Decimal::TWO, 10, 2);
        let (mut xy, mut yx) = (fold([&x, &y]), fold([&y, &x]));
        xy.sort_by(|a, b| a.0.cmp(&b.0));
        yx.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(xy, yx);
        assert_eq!(
            fold([&x, &y])[0].1,
            Delta::Latest {
                at: y.timestamp,
                value: Decimal::TWO
            }
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// The same events give the same counters whatever their order and however the
        /// stream is cut into batches (with a ledger dropping repeats across batches).
        #[test]
        fn totals_ignore_order_and_batching(mut events in proptest::collection::vec(arb_event(), 0..120), resends in 0usize..40, cuts in proptest::collection::vec(0usize..160, 0..6), seed in any::<u64>()) {
            // Unique ids per event, then exact resends of some of them (a client retrying).
            for (i, e) in events.iter_mut().enumerate() {
                e.id = EventId::parse(&format!("e{i}")).unwrap();
            }
            let resent: Vec<Event> = events.iter().take(resends).cloned().collect();
            events.extend(resent);
            // Ground truth: one batch, in the given order.
            let mut expected = BTreeMap::new();
            let once = dedupe_in_batch(&events);
            apply_all(&mut expected, &fold(once.iter().copied()));

            // Shuffle deterministically and split into batches.
            let mut s = seed;
            for i in (1..events.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                events.swap(i, (s >> 33) as usize % (i + 1));
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(events.len())).collect();
            cuts.push(0);
            cuts.push(events.len());
            cuts.sort_unstable();
            let mut ledger: HashSet<(OrgId, EventId)> = HashSet::new();
            let mut actual = BTreeMap::new();
            for w in cuts.windows(2) {
                let batch = &events[w[0]..w[1]];
                let fresh: Vec<&Event> = dedupe_in_batch(batch).into_iter().filter(|e| ledger.insert((e.org_id.clone(), e.id.clone()))).collect();
                apply_all(&mut actual, &fold(fresh));
            }
            prop_assert_eq!(actual, expected);
        }

        /// Resending a batch (a redelivery) changes nothing once the ledger has it.
        #[test]
        fn redelivery_is_a_no_op(events in proptest::collection::vec(arb_event(), 0..80)) {
            let mut ledger: HashSet<(OrgId, EventId)> = HashSet::new();
            let mut store = BTreeMap::new();
            for _ in 0..2 {
                let fresh: Vec<&Event> = dedupe_in_batch(&events).into_iter().filter(|e| ledger.insert((e.org_id.clone(), e.id.clone()))).collect();
                apply_all(&mut store, &fold(fresh));
            }
            let mut once = BTreeMap::new();
            apply_all(&mut once, &fold(dedupe_in_batch(&events)));
            prop_assert_eq!(store, once);
        }

        /// Sums are exact decimals: the month counter equals the decimal sum of quantities.
        #[test]
        fn sums_are_exact(qs in proptest::collection::vec((0u64..1_000_000_000_000, 0u32..8), 1..50)) {
            let events: Vec<Event> = qs.iter().enumerate().map(|(i, (m, s))| event(1, 1, "api_calls", Aggregation::Sum, Decimal::new(*m as i64, *s), 0, i as u32)).collect();
            let total: Decimal = qs.iter().map(|(m, s)| Decimal::new(*m as i64, *s)).sum();
            let d = fold(events.iter());
            let month = d.iter().find(|(k, _)| k.granularity == Granularity::Month && k.scope == CounterScope::Org).unwrap();
            prop_assert_eq!(&month.1, &Delta::Add(total));
        }
    }
}
