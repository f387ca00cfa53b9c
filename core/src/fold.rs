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

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::BuildHasher;

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
            // A time-weighted meter's counter keeps the reading held, as `latest` does; the
            // readings themselves are written to the `ReadingStore` before the batch.
            Aggregation::Latest | Aggregation::TimeWeightedSum => Delta::Latest {
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

/// One (org, project, meter, hour) cell: the first stage of the fold, and the unit the stores
/// keep instead of the six counters (both write cells and derive day, month and org-wide
/// values when they read; only `unique_count` keeps six explicit counters).
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
    keyed_cells(events, &Hasher::default())
        .into_iter()
        .map(|(keyed, delta)| (keyed.cell, delta))
        .collect()
}

/// Merges hour cells into one cell per (org, project, meter, day), whose `hour` is the
/// day's start, in no particular order: the day rows the SQLite store writes beside the
/// hours, so that a month is read from 30 rows per project rather than 720.
pub fn day_cells<'a>(cells: &[(Cell<'a>, Delta)]) -> Vec<(Cell<'a>, Delta)> {
    let mut index: HashMap<Cell<'a>, usize, Hasher> =
        HashMap::with_capacity_and_hasher(cells.len(), Hasher::default());
    let mut days: Vec<(Cell<'a>, Delta)> = Vec::with_capacity(cells.len());
    for (cell, delta) in cells {
        let day = Cell {
            hour: day_start(cell.hour),
            ..*cell
        };
        match index.entry(day) {
            Entry::Occupied(o) => {
                if let Some((_, d)) = days.get_mut(*o.get()) {
                    d.merge(delta);
                }
            }
            Entry::Vacant(v) => {
                v.insert(days.len());
                days.push((day, delta.clone()));
            }
        }
    }
    days
}

/// [`fold_cells`] with each cell's series hash (from `hasher`), which [`fold`] hands to the
/// spread.
fn keyed_cells<'a>(
    events: impl IntoIterator<Item = &'a Event>,
    hasher: &Hasher,
) -> HashMap<Keyed<'a>, Delta, Hasher> {
    let events = events.into_iter();
    let mut cells: HashMap<Keyed<'a>, Delta, Hasher> =
        HashMap::with_capacity_and_hasher(events.size_hint().0, Hasher::default());
    for e in events {
        let secs = e.timestamp.timestamp();
        let cell = Keyed::new(
            Cell {
                org: &e.org_id,
                project: &e.project_id,
                meter: &e.meter,
                hour: secs - secs.rem_euclid(3600),
            },
            hasher,
        );
        let d = Delta::of(e);
        match cells.entry(cell) {
            Entry::Occupied(mut o) => o.get_mut().merge(&d),
            Entry::Vacant(v) => {
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
/// No hash map per level: each distinct (org, project, meter) of the cells is numbered once,
/// with its (org, meter), by hashes of its ids that [`fold`] computed once per event. The
/// cells are then grouped by series number with a counting sort, each group ordered by hour,
/// and every coarser bucket is a run of consecutive cells: a project's days and months are
/// runs of its hours, an org's hours, days and months runs of its projects' cells. A batch
/// mostly holds one hour, so most runs are one cell long and cost a copy, not a merge.
pub fn spread<'a>(cells: impl IntoIterator<Item = (Cell<'a>, Delta)>) -> Deltas<'a> {
    let hasher = Hasher::default();
    spread_keyed(
        cells
            .into_iter()
            .map(|(cell, delta)| (Keyed::new(cell, &hasher), delta)),
    )
}

/// [`spread`] of cells whose series hashes are known.
fn spread_keyed<'a>(cells: impl IntoIterator<Item = (Keyed<'a>, Delta)>) -> Deltas<'a> {
    let cells = cells.into_iter();
    let mut series = Series::with_capacity(cells.size_hint().0);
    let cells: Vec<Numbered> = cells
        .map(|(keyed, delta)| (keyed.cell.hour, delta, series.number(&keyed)))
        .collect();
    let mut out: Deltas<'a> = Vec::with_capacity(cells.len() * 3 + series.orgs.len() * 3);
    let mut runs = Runs::default();

    let by_project = group_by(&cells, series.projects.len(), |c| c.0);
    runs.emit(
        &cells,
        &by_project,
        |c| c.0,
        &mut out,
        |s, start, g| {
            let (org, project, meter, _) = series.projects[s as usize];
            CounterKey {
                org,
                scope: CounterScope::Project(project),
                meter,
                granularity: g,
                start,
            }
        },
    );
    let by_org = group_by(&cells, series.orgs.len(), |c| c.1);
    runs.emit(
        &cells,
        &by_org,
        |c| c.1,
        &mut out,
        |o, start, g| {
            let (org, meter) = series.orgs[o as usize];
            CounterKey {
                org,
                scope: CounterScope::Org,
                meter,
                granularity: g,
                start,
            }
        },
    );
    out
}

/// A cell with the hash of its (org, project, meter), computed once from its ids. The ids
/// live in the events, scattered over memory, and hashing them again for every level cost
/// more than the rest of the spread; keyed cells compare ids only when the hashes match.
#[derive(Debug, Clone, Copy)]
struct Keyed<'a> {
    cell: Cell<'a>,
    series: u64,
}

impl<'a> Keyed<'a> {
    fn new(cell: Cell<'a>, hasher: &Hasher) -> Self {
        Keyed {
            cell,
            series: hasher.hash_one((cell.org, cell.meter, cell.project)),
        }
    }
}

impl std::hash::Hash for Keyed<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.series);
        state.write_i64(self.cell.hour);
    }
}

impl PartialEq for Keyed<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.series == other.series && self.cell == other.cell
    }
}

impl Eq for Keyed<'_> {}

/// A key that carries its own hash, its [`Keyed::series`].
#[derive(Debug, PartialEq, Eq)]
struct Prehashed<T>(u64, T);

impl<T> std::hash::Hash for Prehashed<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
    }
}

/// Cell indexes grouped by `group` (numbers below `groups`; a stable counting sort), each
/// group in ascending hour order.
fn group_by(cells: &[Numbered], groups: usize, group: impl Fn((u32, u32)) -> u32) -> Vec<u32> {
    let mut offsets = vec![0u32; groups + 1];
    for c in cells {
        offsets[group(c.2) as usize + 1] += 1;
    }
    for g in 0..groups {
        offsets[g + 1] += offsets[g];
    }
    let mut order = vec![0u32; cells.len()];
    let mut next = offsets.clone();
    for (i, c) in cells.iter().enumerate() {
        let slot = &mut next[group(c.2) as usize];
        order[*slot as usize] = i as u32;
        *slot += 1;
    }
    for g in 0..groups {
        let members = &mut order[offsets[g] as usize..offsets[g + 1] as usize];
        if members.len() > 1 {
            members.sort_unstable_by_key(|&i| cells[i as usize].0);
        }
    }
    order
}

/// A cell as its hour, its delta, and its series and org series numbers (which name its ids).
type Numbered = (i64, Delta, (u32, u32));

/// The granularities a cell spreads to, finest first.
const GRANULARITIES: [Granularity; 3] = [Granularity::Hour, Granularity::Day, Granularity::Month];

/// Scratch space for [`Runs::emit`], kept across its calls.
#[derive(Default)]
struct Runs {
    /// One group's buckets of the level being built: (start, delta).
    level: Vec<(i64, Delta)>,
    month_of: MonthOf,
    /// The last bucket start turned into a time, per granularity: a batch's starts are few,
    /// and chrono's conversion showed in profiles.
    instants: [Option<(i64, DateTime<Utc>)>; 3],
}

impl Runs {
    /// Emits each group's hour, day and month buckets, each level folded from the one below.
    /// `order` is [`group_by`]'s output for the same `group`.
    fn emit<'a>(
        &mut self,
        cells: &[Numbered],
        order: &[u32],
        group: impl Fn((u32, u32)) -> u32,
        out: &mut Deltas<'a>,
        key: impl Fn(u32, DateTime<Utc>, Granularity) -> CounterKey<'a>,
    ) {
        let mut rest = order;
        while let Some(&first) = rest.first() {
            let g = group(cells[first as usize].2);
            let len = rest
                .iter()
                .position(|&i| group(cells[i as usize].2) != g)
                .unwrap_or(rest.len());
            let (members, tail) = rest.split_at(len);
            rest = tail;
            if let [only] = members {
                // The common case: one cell is its own hour, day and month.
                let (hour, delta, _) = &cells[*only as usize];
                let day = day_start(*hour);
                let month = self.month_of.get(day);
                let ats = [self.at(0, *hour), self.at(1, day), self.at(2, month)];
                // `extend` over a range writes each counter straight into the list; `push`
                // assembled it on the stack first and stalled copying it over.
                out.extend((0..3).map(|n| (key(g, ats[n], GRANULARITIES[n]), delta.clone())));
                continue;
            }
            self.level.clear();
            for &i in members {
                let (hour, delta, _) = &cells[i as usize];
                push_run(&mut self.level, *hour, delta);
            }
            for (n, granularity) in GRANULARITIES.into_iter().enumerate() {
                if granularity != Granularity::Hour {
                    let month_of = &mut self.month_of;
                    fold_level(&mut self.level, |start| match granularity {
                        Granularity::Day => day_start(start),
                        _ => month_of.get(start),
                    });
                }
                for i in 0..self.level.len() {
                    let at = self.at(n, self.level[i].0);
                    out.push((key(g, at, granularity), self.level[i].1.clone()));
                }
            }
        }
    }

    /// Bucket start `secs` of the `n`th granularity as a time.
    fn at(&mut self, n: usize, secs: i64) -> DateTime<Utc> {
        match self.instants[n] {
            Some((s, at)) if s == secs => at,
            _ => {
                let at = instant(secs);
                self.instants[n] = Some((secs, at));
                at
            }
        }
    }
}

/// Appends a bucket to a level in ascending start order, merging it into the last one if it
/// has the same start.
fn push_run(level: &mut Vec<(i64, Delta)>, start: i64, delta: &Delta) {
    match level.last_mut() {
        Some((last, d)) if *last == start => d.merge(delta),
        _ => level.push((start, delta.clone())),
    }
}

/// Rebuckets a level (ascending starts) into the next coarser one, in place: `coarser` maps a
/// bucket start to the start of the coarser bucket holding it.
fn fold_level(level: &mut Vec<(i64, Delta)>, mut coarser: impl FnMut(i64) -> i64) {
    let mut kept = 0;
    for i in 0..level.len() {
        let start = coarser(level[i].0);
        if kept > 0 && level[kept - 1].0 == start {
            let delta = std::mem::replace(&mut level[i].1, Delta::Add(Decimal::ZERO));
            level[kept - 1].1.merge(&delta);
        } else {
            level.swap(kept, i);
            level[kept].0 = start;
            kept += 1;
        }
    }
    level.truncate(kept);
}

/// The distinct (org, project, meter) series of a spread, numbered in order of appearance,
/// each with the number of its (org, meter).
struct Series<'a> {
    index: HashMap<Prehashed<SeriesIds<'a>>, (u32, u32), Hasher>,
    projects: Vec<(&'a OrgId, &'a ProjectId, &'a MeterName, u32)>,
    /// Consulted once per series, so it hashes the ids itself.
    org_index: HashMap<(&'a OrgId, &'a MeterName), u32, Hasher>,
    orgs: Vec<(&'a OrgId, &'a MeterName)>,
}

type SeriesIds<'a> = (&'a OrgId, &'a ProjectId, &'a MeterName);

impl<'a> Series<'a> {
    fn with_capacity(n: usize) -> Self {
        Series {
            index: HashMap::with_capacity_and_hasher(n, Hasher::default()),
            projects: Vec::with_capacity(n),
            org_index: HashMap::with_capacity_and_hasher(n, Hasher::default()),
            orgs: Vec::with_capacity(n),
        }
    }

    /// The numbers of a cell's series and org series.
    fn number(&mut self, keyed: &Keyed<'a>) -> (u32, u32) {
        let Cell {
            org,
            project,
            meter,
            ..
        } = keyed.cell;
        let new = match self
            .index
            .entry(Prehashed(keyed.series, (org, project, meter)))
        {
            Entry::Occupied(found) => return *found.get(),
            Entry::Vacant(new) => new,
        };
        let next = self.orgs.len() as u32;
        let o = *self.org_index.entry((org, meter)).or_insert(next);
        if o == next {
            self.orgs.push((org, meter));
        }
        let s = self.projects.len() as u32;
        self.projects.push((org, project, meter, o));
        *new.insert((s, o))
    }
}

fn instant(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The start of the UTC day holding `secs` (as [`Granularity::Day`] truncates).
fn day_start(secs: i64) -> i64 {
    secs - secs.rem_euclid(86_400)
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
    spread_keyed(keyed_cells(events, &Hasher::default()))
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
            timestamp: DateTime::from_timestamp(1_790_812_800 + secs, 0).unwrap(),
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
                for key in crate::counter::OwnedCounterKey::all_of(e) {
                    let d = Delta::of(e);
                    expected.entry(key).and_modify(|x| x.merge(&d)).or_insert(d);
                }
            }
            let folded = fold(dedupe_in_batch(&events));
            let actual: BTreeMap<_, _> = folded.iter().map(|(k, d)| (k.to_owned_key(), d.clone())).collect();
            prop_assert_eq!(actual.len(), folded.len(), "a counter appears twice in the fold");
            prop_assert_eq!(actual, expected);
        }

        /// Day cells are exactly the projects' day counters of the six-counter fold, each once.
        #[test]
        fn day_cells_are_the_projects_days(events in proptest::collection::vec(arb_event(), 0..150)) {
            let kept = dedupe_in_batch(&events);
            let expected: BTreeMap<_, _> = fold(kept.iter().copied())
                .into_iter()
                .filter(|(k, _)| k.granularity == Granularity::Day && k.scope != CounterScope::Org)
                .map(|(k, d)| (k.to_owned_key(), d))
                .collect();
            let days = day_cells(&fold_cells(kept.iter().copied()));
            let actual: BTreeMap<_, _> = days
                .iter()
                .map(|(c, d)| {
                    let key = crate::counter::OwnedCounterKey {
                        org: c.org.clone(),
                        project: Some(c.project.clone()),
                        meter: c.meter.clone(),
                        granularity: Granularity::Day,
                        start: DateTime::from_timestamp(c.hour, 0).unwrap(),
                    };
                    (key, d.clone())
                })
                .collect();
            prop_assert_eq!(actual.len(), days.len(), "a day appears twice");
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
