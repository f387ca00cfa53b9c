//! [`ReadingStore`]: the hour cells of time-weighted meters (`time_weighted_sum`), each the
//! set of readings taken in its hour ([`HourReadings`]); see [`crate::time_weighted`] and
//! `docs/meters-dimensions.md` ("Time-weighted sums").
//!
//! Writing a reading is idempotent and commutative: a cell keeps one reading per second and,
//! on a tie, the larger value. So the aggregator writes the readings of a batch *outside*
//! the ledger transaction, like `unique_count`'s markers, and the exactly-once protocol of
//! [`UsageStore::apply_batch`](super::UsageStore) is untouched. It writes them *after* the
//! apply, and only those of events the ledger counted ([`put_counted_readings`]): newly
//! applied ones, and identical resends of counted ones (the same ledger body, so the same
//! reading). A resend of a counted id with other contents (a `duplicate_conflict`) writes
//! nothing, so a duplicate changes nothing. A crash between the apply and the readings
//! leaves the readings unwritten and the batch unacknowledged; its redelivery is all
//! identical duplicates and writes them, exactly as one clean run does.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::{ApplyOutcome, ApplyReport, StoreError, UsageStore};
use crate::event::Event;
use crate::ids::{MeterName, OrgId, ProjectId};
use crate::meter::{Aggregation, Meter, MeterCatalogue};
use crate::period::Month;
use crate::report::MonthUsage;
use crate::time_weighted::{HourReadings, MonthTotal, month_total, period_totals};

/// Most readings one [`ReadingStore::put_readings`] call may carry: a batch's worth (the
/// aggregator applies at most this many events at once).
pub const MAX_READINGS_PER_PUT: usize = 10_000;

/// One reading of a time-weighted meter: `value` holds for (`org`, `project`, `meter`) from
/// `at` until the next reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// The org.
    pub org: OrgId,
    /// The project the resource belongs to.
    pub project: ProjectId,
    /// The meter (a bare name: time-weighted meters have no dimensions).
    pub meter: MeterName,
    /// When it was read; stores keep it to the second.
    pub at: DateTime<Utc>,
    /// The reading (an event's quantity: non-negative, at most 9 decimal places).
    pub value: Decimal,
}

/// Refuses what a store must never write: more than [`MAX_READINGS_PER_PUT`] readings, a
/// series key as the meter, or a negative value. A caller's bug: [`StoreError::Corrupt`]
/// (`500`).
pub fn check_readings(readings: &[Reading]) -> Result<(), StoreError> {
    if readings.len() > MAX_READINGS_PER_PUT {
        return Err(StoreError::Corrupt(format!(
            "{} readings in one write; at most {MAX_READINGS_PER_PUT}",
            readings.len()
        )));
    }
    for r in readings {
        if r.meter.is_series() {
            return Err(StoreError::Corrupt(format!(
                "{} is a series key; time-weighted meters have no dimensions",
                r.meter
            )));
        }
        if r.value.is_sign_negative() {
            return Err(StoreError::Corrupt(format!(
                "a negative reading {} of {}",
                r.value, r.meter
            )));
        }
    }
    Ok(())
}

/// The hour cells of time-weighted meters. See the [module docs](self).
#[async_trait]
pub trait ReadingStore: Send + Sync {
    /// Adds each reading to its hour cell: one per second (the timestamp truncated to the
    /// second), the larger value on a tie. Idempotent and order-free, so a caller may
    /// repeat a write after any failure; a failed call may have written some readings.
    async fn put_readings(&self, readings: &[Reading]) -> Result<(), StoreError>;

    /// The non-empty hour cells the query asks for, in (project, hour) order. At most 744
    /// cells per project.
    async fn month_readings(
        &self,
        q: &MonthReadingsQuery<'_>,
    ) -> Result<Vec<(ProjectId, HourReadings)>, StoreError>;
}

/// Which hour cells [`ReadingStore::month_readings`] reads: those of `meter` for `org` in
/// `month`, of one project or (`None`) of every project.
#[derive(Debug, Clone, Copy)]
pub struct MonthReadingsQuery<'a> {
    /// The org.
    pub org: &'a OrgId,
    /// The meter (a bare name).
    pub meter: &'a MeterName,
    /// The month whose hours are read.
    pub month: Month,
    /// One project, or `None` for every project of the org.
    pub project: Option<&'a ProjectId>,
}

/// The readings of a batch's `time_weighted_sum` events, in batch order: each event's
/// quantity is a reading of its (org, project, meter) at its timestamp.
pub fn batch_readings(events: &[Event]) -> Vec<Reading> {
    events.iter().filter_map(reading_of).collect()
}

/// The reading an event is, if it is of a `time_weighted_sum` meter.
fn reading_of(e: &Event) -> Option<Reading> {
    (e.aggregation == Aggregation::TimeWeightedSum).then(|| Reading {
        org: e.org_id.clone(),
        project: e.project_id.clone(),
        meter: e.meter.clone(),
        at: e.timestamp,
        value: e.quantity.value(),
    })
}

/// Writes the readings of `events` ([`batch_readings`]) to `usage`'s [`ReadingStore`], in
/// writes of at most [`MAX_READINGS_PER_PUT`], whatever the ledger says of them: for
/// events known to be counted (a test's fixture). What callers of
/// [`UsageStore::apply_batch`] use is [`put_counted_readings`]. Idempotent. A batch without
/// such events writes nothing. A store that keeps no readings is refused for a batch that
/// has some ([`StoreError::Corrupt`], `500`): dropping them would bill the meter as free.
pub async fn put_batch_readings(
    usage: &dyn UsageStore,
    events: &[Event],
) -> Result<(), StoreError> {
    put_readings_of(usage, batch_readings(events)).await
}

/// Writes the readings of the events of `events` that `report` (what
/// [`UsageStore::apply_batch`] answered for them) says the ledger counted: each one
/// [`Applied`](ApplyOutcome::Applied), and each [`Duplicate`](ApplyOutcome::Duplicate)
/// not listed in [`ApplyReport::conflicts`] (the same contents as the counted copy, so the
/// same reading: this repairs a crash between an earlier apply and its readings). Never a
/// conflicting resend's, nor a failed, overflowing or unreported event's (a report shorter
/// than the batch). What every caller of `apply_batch` does right after it; a caller that
/// fails here must not acknowledge the batch (its redelivery writes the readings). A store
/// that keeps no readings is refused for a batch that has some (as
/// [`put_batch_readings`]); callers check that before the apply
/// ([`check_keeps_readings`]).
pub async fn put_counted_readings(
    usage: &dyn UsageStore,
    events: &[Event],
    report: &ApplyReport,
) -> Result<(), StoreError> {
    let readings = counted_readings(events, report);
    put_readings_of(usage, readings).await
}

/// The readings [`put_counted_readings`] writes: those of the events `report` says the
/// ledger counted. A `Duplicate` counts only when it is not a conflict **and** no copy of
/// its id in the batch failed or overflowed: a repeat of an id whose first copy's write
/// failed is reported `Duplicate` without being compared with anything (nothing of the id
/// was counted yet), so its contents are unknown to match; the redelivery of the batch
/// counts one copy and writes its reading then.
fn counted_readings(events: &[Event], report: &ApplyReport) -> Vec<Reading> {
    let conflicts: BTreeSet<usize> = report.conflicts.iter().copied().collect();
    let uncounted: BTreeSet<(&OrgId, &str)> = events
        .iter()
        .zip(&report.outcomes)
        .filter(|(_, o)| matches!(o, ApplyOutcome::Failed(_) | ApplyOutcome::Overflow))
        .map(|(e, _)| (&e.org_id, e.id.as_str()))
        .collect();
    events
        .iter()
        .zip(&report.outcomes)
        .enumerate()
        .filter(|(i, (e, o))| match o {
            ApplyOutcome::Applied => true,
            ApplyOutcome::Duplicate => {
                !conflicts.contains(i) && !uncounted.contains(&(&e.org_id, e.id.as_str()))
            }
            ApplyOutcome::Failed(_) | ApplyOutcome::Overflow => false,
        })
        .filter_map(|(_, (e, _))| reading_of(e))
        .collect()
}

/// Refuses `events` when some are of `time_weighted_sum` meters and `usage` keeps no
/// readings ([`StoreError::Corrupt`], `500`): what a caller checks *before*
/// [`UsageStore::apply_batch`], so such a batch is never counted with its readings dropped
/// (which would bill the meter as free).
pub fn check_keeps_readings(usage: &dyn UsageStore, events: &[Event]) -> Result<(), StoreError> {
    let readings = events
        .iter()
        .filter(|e| e.aggregation == Aggregation::TimeWeightedSum)
        .count();
    if readings > 0 && usage.readings().is_none() {
        return Err(no_readings(readings));
    }
    Ok(())
}

fn no_readings(n: usize) -> StoreError {
    StoreError::Corrupt(format!(
        "{n} readings of time_weighted_sum meters, and this store keeps no readings"
    ))
}

async fn put_readings_of(usage: &dyn UsageStore, readings: Vec<Reading>) -> Result<(), StoreError> {
    if readings.is_empty() {
        return Ok(());
    }
    let Some(store) = usage.readings() else {
        return Err(no_readings(readings.len()));
    };
    for chunk in readings.chunks(MAX_READINGS_PER_PUT) {
        store.put_readings(chunk).await?;
    }
    Ok(())
}

/// The closing readings of a month per project (the carry-ins of the month after), as
/// month close records them with the month's report.
pub type CarryIns = BTreeMap<ProjectId, Decimal>;

/// [`CarryIns`] per `time_weighted_sum` meter: a report's `closing_readings`.
pub type ClosingReadings = BTreeMap<MeterName, CarryIns>;

/// Prices-ready quantities of the `time_weighted_sum` meters of `meters` for `org` over
/// `month` up to `until` (month close: the month's end; the upcoming invoice: now): each
/// such meter's month quantity in `usage`, org-wide and per project, becomes its value ×
/// hours from [`month_totals`] (the counters hold only the latest reading, which is left
/// out), with `carry` ([`month_carry_ins`] of the month before) as carry-ins.
/// Returns the closing readings at `until` (an entry per such meter, empty when nothing
/// was read or carried), which month close records with the report. A catalogue without
/// such meters reads nothing.
pub async fn time_weighted_month(
    usage_store: &dyn UsageStore,
    meters: &MeterCatalogue,
    org: &OrgId,
    month: Month,
    carry: &ClosingReadings,
    until: DateTime<Utc>,
    usage: &mut MonthUsage,
) -> Result<ClosingReadings, StoreError> {
    let mut closing = ClosingReadings::new();
    for each in time_weighted_meters(usage_store, meters, carry) {
        let (meter, store, carry_ins) = each?;
        let totals = month_totals(store, org, &meter.name, month, carry_ins, until).await?;
        usage.meters.remove(&meter.name);
        for per_meter in usage.projects.values_mut() {
            per_meter.remove(&meter.name);
        }
        let mut sum = Decimal::ZERO;
        let mut closes = CarryIns::new();
        for (project, total) in totals {
            sum = sum
                .checked_add(total.value_hours)
                .ok_or_else(|| overflow(org, &meter.name))?;
            if !total.value_hours.is_zero() {
                usage
                    .projects
                    .entry(project.clone())
                    .or_default()
                    .insert(meter.name.clone(), total.value_hours);
            }
            if let Some(c) = total.closing {
                closes.insert(project, c);
            }
        }
        if !sum.is_zero() {
            usage.meters.insert(meter.name.clone(), sum);
        }
        closing.insert(meter.name.clone(), closes);
    }
    Ok(closing)
}

/// Months [`carry_ins_after`] reads back from the month it is asked about, that month
/// included, before it trusts a report's recorded closing reading: as far back as month
/// close looks for late usage to adjust (`tally_billing`'s `ADJUSTMENT_LOOKBACK_MONTHS`,
/// 3) plus the month itself, so a reading applied late to any month still adjusted is also
/// the carry-in of every month after it, not only of the next one.
pub const CARRY_LOOKBACK_MONTHS: usize = 4;

/// The carry-ins of the month after `month` of `meter` for `org`, per project: the last
/// reading at or before `month`'s end in `store`, so a reading applied after its month
/// closed counts. A project of `recorded` (the closing readings month close stored with
/// `month`'s report) without a reading in `month` is looked up in the months before it, up
/// to [`CARRY_LOOKBACK_MONTHS`] in all, and only past that is its recorded closing taken,
/// since that was fixed when `month` closed and misses a reading applied late to an earlier
/// month since. (A project `recorded` does not name had no carry when `month` closed; one
/// whose first reading lands more than a month late is not looked for, so a month without
/// such a project's readings costs no extra read.) One read of `month`'s cells, and one
/// more per earlier month while a project of `recorded` is still unresolved.
pub async fn carry_ins_after(
    store: &dyn ReadingStore,
    org: &OrgId,
    meter: &MeterName,
    month: Month,
    recorded: &CarryIns,
) -> Result<CarryIns, StoreError> {
    let mut carry = CarryIns::new();
    let every_project = MonthReadingsQuery {
        org,
        meter,
        month,
        project: None,
    };
    let mut at = month;
    for step in 0..CARRY_LOOKBACK_MONTHS {
        if step > 0 && recorded.keys().all(|p| carry.contains_key(p)) {
            break;
        }
        // Cells come in (project, hour) order: the last one of a project holds its last
        // reading in `at`; a later month's reading, found first, wins over it.
        let mut last_of_month = CarryIns::new();
        let q = MonthReadingsQuery {
            month: at,
            ..every_project
        };
        for (project, cell) in store.month_readings(&q).await? {
            if let Some(last) = cell.last() {
                last_of_month.insert(project, last);
            }
        }
        for (project, last) in last_of_month {
            carry.entry(project).or_insert(last);
        }
        at = at.prev();
    }
    for (project, last) in recorded {
        carry.entry(project.clone()).or_insert(*last);
    }
    Ok(carry)
}

/// [`carry_ins_after`] for every `time_weighted_sum` meter of `meters`: the carry-ins month
/// close and the upcoming invoice price the month after `month` with, from `recorded` (the
/// `closing_readings` of `month`'s report, empty without one).
pub async fn month_carry_ins(
    usage_store: &dyn UsageStore,
    meters: &MeterCatalogue,
    org: &OrgId,
    month: Month,
    recorded: &ClosingReadings,
) -> Result<ClosingReadings, StoreError> {
    let mut carry = ClosingReadings::new();
    for each in time_weighted_meters(usage_store, meters, recorded) {
        let (meter, store, recorded) = each?;
        let ins = carry_ins_after(store, org, &meter.name, month, recorded).await?;
        carry.insert(meter.name.clone(), ins);
    }
    Ok(carry)
}

/// Each `time_weighted_sum` meter of `meters`, with `usage_store`'s [`ReadingStore`]
/// ([`keeps_readings`]) and the meter's entry of `readings` (empty when it has none): what
/// month close and the carry-ins walk, one meter at a time.
fn time_weighted_meters<'a>(
    usage_store: &'a dyn UsageStore,
    meters: &'a MeterCatalogue,
    readings: &'a ClosingReadings,
) -> impl Iterator<Item = Result<(&'a Meter, &'a dyn ReadingStore, &'a CarryIns), StoreError>> + 'a
{
    static NONE: CarryIns = CarryIns::new();
    meters
        .meters()
        .filter(|m| m.aggregation == Aggregation::TimeWeightedSum)
        .map(move |meter| {
            let store = keeps_readings(usage_store, &meter.name)?;
            Ok((meter, store, readings.get(&meter.name).unwrap_or(&NONE)))
        })
}

/// `usage_store`'s [`ReadingStore`], which a `time_weighted_sum` meter needs
/// ([`StoreError::Corrupt`], `500`, for a store that keeps none).
pub fn keeps_readings<'a>(
    usage_store: &'a dyn UsageStore,
    meter: &MeterName,
) -> Result<&'a dyn ReadingStore, StoreError> {
    usage_store.readings().ok_or_else(|| {
        StoreError::Corrupt(format!(
            "{meter} is a time_weighted_sum meter, and this store keeps no readings"
        ))
    })
}

fn overflow(org: &OrgId, meter: &MeterName) -> StoreError {
    StoreError::Corrupt(format!(
        "the time-weighted total of {meter} for {org} is past the exact range"
    ))
}

/// The month's cells of `meter` for `org` grouped by project, with an empty entry for
/// every project that has only a carry-in: every series the month has.
async fn series_cells(
    store: &dyn ReadingStore,
    org: &OrgId,
    meter: &MeterName,
    month: Month,
    project: Option<&ProjectId>,
    carry_ins: &CarryIns,
) -> Result<BTreeMap<ProjectId, Vec<HourReadings>>, StoreError> {
    let mut by_project: BTreeMap<ProjectId, Vec<HourReadings>> = BTreeMap::new();
    let q = MonthReadingsQuery {
        org,
        meter,
        month,
        project,
    };
    for (p, cell) in store.month_readings(&q).await? {
        by_project.entry(p).or_default().push(cell);
    }
    for p in carry_ins.keys() {
        if project.is_none_or(|want| want == p) {
            by_project.entry(p.clone()).or_default();
        }
    }
    Ok(by_project)
}

/// The time-weighted totals of `meter` for `org` over `month` up to `until` (month close:
/// the month's end; the upcoming invoice: now), one per project that has readings in the
/// month or a carry-in (`carry_ins`: the closing readings month close recorded for the
/// month before), each with the reading it closes on ([`month_total`]). Month close sums
/// the projects' totals (integration is linear) and records the closing readings as the
/// next month's carry-ins.
pub async fn month_totals(
    store: &dyn ReadingStore,
    org: &OrgId,
    meter: &MeterName,
    month: Month,
    carry_ins: &CarryIns,
    until: DateTime<Utc>,
) -> Result<BTreeMap<ProjectId, MonthTotal>, StoreError> {
    let cells = series_cells(store, org, meter, month, None, carry_ins).await?;
    cells
        .into_iter()
        .map(|(p, cells)| {
            let carry = carry_ins.get(&p).copied();
            let total =
                month_total(carry, &cells, month, until).map_err(|_| overflow(org, meter))?;
            Ok((p, total))
        })
        .collect()
}

/// The time-weighted usage of `meter` for `org` in each of `periods` (all inside `month`),
/// in value × hours: of one project, or (`None`) summed over every project. Each period's
/// carry-in is the project's last reading of the month before the period, else its
/// month carry-in. What `GET /v1/usage` answers per hour, day or month bucket.
pub async fn period_usage(
    store: &dyn ReadingStore,
    org: &OrgId,
    meter: &MeterName,
    month: Month,
    project: Option<&ProjectId>,
    carry_ins: &CarryIns,
    periods: &[(DateTime<Utc>, DateTime<Utc>)],
) -> Result<Vec<Decimal>, StoreError> {
    let cells = series_cells(store, org, meter, month, project, carry_ins).await?;
    let mut sums = vec![Decimal::ZERO; periods.len()];
    for (p, cells) in cells {
        let totals = period_totals(carry_ins.get(&p).copied(), &cells, periods)
            .map_err(|_| overflow(org, meter))?;
        for (sum, t) in sums.iter_mut().zip(totals) {
            *sum = sum.checked_add(t).ok_or_else(|| overflow(org, meter))?;
        }
    }
    Ok(sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Quantity;
    use crate::ids::EventId;

    fn reading_event(id: &str, q: &str, at: &str) -> Event {
        Event {
            org_id: OrgId::from_random([7; 16]),
            id: EventId::parse(id).unwrap(),
            project_id: ProjectId::from_random([8; 16]),
            meter: MeterName::parse("storage_gb").unwrap(),
            aggregation: Aggregation::TimeWeightedSum,
            quantity: Quantity::parse(q).unwrap(),
            timestamp: DateTime::parse_from_rfc3339(at)
                .unwrap()
                .with_timezone(&Utc),
            properties: serde_json::Map::new(),
        }
    }

    fn values(readings: &[Reading]) -> Vec<String> {
        readings.iter().map(|r| r.value.to_string()).collect()
    }

    /// A repeat of an id whose first copy failed in the same batch is reported `Duplicate`
    /// without any comparison; its reading (here 0 GB, a tenant's attempt to lower the
    /// held amount) must wait for the redelivery that counts one copy.
    #[test]
    fn a_repeat_of_a_failed_copy_writes_no_reading() {
        let events = [
            reading_event("a", "500", "2026-10-31T00:00:00Z"),
            reading_event("a", "0", "2026-10-31T01:00:00Z"),
            reading_event("b", "40", "2026-10-31T02:00:00Z"),
            reading_event("b", "40", "2026-10-31T02:00:00Z"),
            reading_event("c", "7", "2026-10-31T03:00:00Z"),
            reading_event("c", "9", "2026-10-31T04:00:00Z"),
            reading_event("d", "3", "2026-10-31T05:00:00Z"),
            reading_event("d", "3", "2026-10-31T05:00:00Z"),
        ];
        let report = ApplyReport {
            outcomes: vec![
                ApplyOutcome::Failed("throttled".into()),
                ApplyOutcome::Duplicate,
                ApplyOutcome::Applied,
                ApplyOutcome::Duplicate,
                ApplyOutcome::Applied,
                ApplyOutcome::Duplicate,
                ApplyOutcome::Overflow,
                ApplyOutcome::Duplicate,
            ],
            conflicts: vec![5],
        };
        // a: failed + unchecked repeat -> none; b: applied + identical repeat -> both (one
        // value); c: applied + conflicting repeat -> the applied one only; d: overflowed +
        // repeat -> none.
        assert_eq!(
            values(&counted_readings(&events, &report)),
            ["40", "40", "7"]
        );
    }
}
