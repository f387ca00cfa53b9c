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
    cell_map(events).into_iter().collect()
}

/// [`fold_cells`] before it is turned into a list: [`fold`] spreads the map directly.
fn cell_map<'a>(events: impl IntoIterator<Item = &'a Event>) -> HashMap<Cell<'a>, Delta, Hasher> {
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
    cells
}

/// Spreads cell deltas to the six counters each touches: org-wide and per project, at hour,
/// day and month granularity. The cells must be distinct (as [`fold_cells`] returns them,
/// and as stored cells are): each one *is* its project-hour counter.
///
/// Each level is folded from the one below rather than from every cell (project-hour →
/// project-day → project-month; project-hour → org-hour; project-day → org-day →
/// org-month), and the coarser levels are keyed by small integers: each distinct (org,
/// project, meter) of the cells is numbered once, with its (org, meter), so a cell costs one
/// hash of its strings instead of six.
pub fn spread<'a>(cells: impl IntoIterator<Item = (Cell<'a>, Delta)>) -> Deltas<'a> {
    let cells = cells.into_iter();
    let n = cells.size_hint().0;
    let mut out: Deltas<'a> = Vec::with_capacity(n * 2 + 16);
    let mut series = Series::with_capacity(n);
    // Buckets: (series or org-series number, bucket start in Unix seconds).
    let mut project_days: Buckets = HashMap::with_capacity_and_hasher(n, Hasher::default());
    let mut org_hours: Buckets = HashMap::with_capacity_and_hasher(n, Hasher::default());
    for (cell, delta) in cells {
        let (s, o) = series.number(cell);
        let day = cell.hour - cell.hour.rem_euclid(86_400);
        merge_into(&mut project_days, (s, day), &delta);
        merge_into(&mut org_hours, (o, cell.hour), &delta);
        out.push((project_key(cell, Granularity::Hour), delta));
    }
    let mut month_of = MonthOf::default();
    let mut project_months: Buckets =
        HashMap::with_capacity_and_hasher(project_days.len(), Hasher::default());
    let mut org_days: Buckets =
        HashMap::with_capacity_and_hasher(project_days.len(), Hasher::default());
    for ((s, day), delta) in project_days {
        let (cell, o) = series.cell(s, day);
        merge_into(&mut project_months, (s, month_of.get(day)), &delta);
        merge_into(&mut org_days, (o, day), &delta);
        out.push((project_key(cell, Granularity::Day), delta));
    }
    // Org months are at most as many as org days.
    out.reserve(2 * org_days.len() + project_months.len() + org_hours.len());
    let mut org_months: Buckets =
        HashMap::with_capacity_and_hasher(org_days.len(), Hasher::default());
    for ((o, day), delta) in org_days {
        merge_into(&mut org_months, (o, month_of.get(day)), &delta);
        out.push((series.org_key(o, day, Granularity::Day), delta));
    }
    for ((s, month), delta) in project_months {
        let (cell, _) = series.cell(s, month);
        out.push((project_key(cell, Granularity::Month), delta));
    }
    for (buckets, granularity) in [
        (org_hours, Granularity::Hour),
        (org_months, Granularity::Month),
    ] {
        out.extend(
            buckets
                .into_iter()
                .map(|((o, start), delta)| (series.org_key(o, start, granularity), delta)),
        );
    }
    out
}

/// Buckets of one level: (series number, bucket start in Unix seconds).
type Buckets = HashMap<(u32, i64), Delta, Hasher>;

/// The distinct (org, project, meter) series of a spread, numbered in order of appearance,
/// each with the number of its (org, meter).
struct Series<'a> {
    index: HashMap<(&'a OrgId, &'a ProjectId, &'a MeterName), (u32, u32), Hasher>,
    projects: Vec<(&'a OrgId, &'a ProjectId, &'a MeterName, u32)>,
    org_index: HashMap<(&'a OrgId, &'a MeterName), u32, Hasher>,
    orgs: Vec<(&'a OrgId, &'a MeterName)>,
}

impl<'a> Series<'a> {
    fn with_capacity(n: usize) -> Self {
        Series {
            index: HashMap::with_capacity_and_hasher(n, Hasher::default()),
            projects: Vec::with_capacity(n),
            org_index: HashMap::default(),
            orgs: Vec::new(),
        }
    }

    /// The numbers of a cell's series and org series.
    fn number(&mut self, cell: Cell<'a>) -> (u32, u32) {
        if let Some(&found) = self.index.get(&(cell.org, cell.project, cell.meter)) {
            return found;
        }
        let o = match self.org_index.get(&(cell.org, cell.meter)) {
            Some(&o) => o,
            None => {
                let o = self.orgs.len() as u32;
                self.orgs.push((cell.org, cell.meter));
                self.org_index.insert((cell.org, cell.meter), o);
                o
            }
        };
        let s = self.projects.len() as u32;
        self.projects.push((cell.org, cell.project, cell.meter, o));
        self.index
            .insert((cell.org, cell.project, cell.meter), (s, o));
        (s, o)
    }

    /// Series `s` as a cell starting at `start`, with its org series.
    fn cell(&self, s: u32, start: i64) -> (Cell<'a>, u32) {
        let (org, project, meter, o) = self.projects[s as usize];
        (
            Cell {
                org,
                project,
                meter,
                hour: start,
            },
            o,
        )
    }

    fn org_key(&self, o: u32, start: i64, granularity: Granularity) -> CounterKey<'a> {
        let (org, meter) = self.orgs[o as usize];
        CounterKey {
            org,
            scope: CounterScope::Org,
            meter,
            granularity,
            start: instant(start),
        }
    }
}

fn merge_into<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Delta, Hasher>, key: K, delta: &Delta) {
    match map.entry(key) {
        std::collections::hash_map::Entry::Occupied(mut o) => o.get_mut().merge(delta),
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(delta.clone());
        }
    }
}

fn instant(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn project_key(cell: Cell<'_>, granularity: Granularity) -> CounterKey<'_> {
    CounterKey {
        org: cell.org,
        scope: CounterScope::Project(cell.project),
        meter: cell.meter,
        granularity,
        start: instant(cell.hour),
    }
}

/// The month start of a day start, remembering the last answer: a batch's days are few.
#[derive(Default)]
struct MonthOf(Option<(i64, i64)>);

impl MonthOf {
    fn get(&mut self, day: i64) -> i64 {
        match self.0 {
            Some((d, m)) if d == day => m,
            _ => {
                let m = Granularity::Month.truncate(instant(day)).timestamp();
                self.0 = Some((day, m));
                m
            }
        }
    }
}

/// Folds events (already known to be new) into counter deltas for org and project at hour,
/// day and month granularity: [`fold_cells`], then [`spread`].
pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> Deltas<'a> {
    spread(cell_map(events))
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

        /// The fold equals the definition: every event merged into each of its six
        /// counters one by one, with each counter appearing once in the fold's output.
        #[test]
        fn fold_equals_six_counters_per_event(events in proptest::collection::vec(arb_event(), 0..150)) {
            let mut expected: BTreeMap<crate::counter::OwnedCounterKey, Delta> = BTreeMap::new();
            for e in dedupe_in_batch(&events) {
                for g in Granularity::ALL {
                    for project in [None, Some(e.project_id.clone())] {
                        let key = crate::counter::OwnedCounterKey {
                            org: e.org_id.clone(),
                            project,
                            meter: e.meter.clone(),
                            granularity: g,
                            start: g.truncate(e.timestamp),
                        };
                        let d = Delta::of(e);
                        expected.entry(key).and_modify(|x| x.merge(&d)).or_insert(d);
                    }
                }
            }
            let folded = fold(dedupe_in_batch(&events));
            let actual: BTreeMap<_, _> = folded.iter().map(|(k, d)| (k.to_owned_key(), d.clone())).collect();
            prop_assert_eq!(actual.len(), folded.len(), "a counter appears twice in the fold");
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
