//! Time-weighted sums (GB-hours from storage readings): how hour cells hold readings so the
//! period total is exact and independent of arrival order, and the integral over a period.
//!
//! This is the arithmetic, the cell format and the month carry ([`month_total`]: how a
//! reading is carried into the months after it). The stores persist [`HourReadings`]
//! through [`crate::ports::ReadingStore`]; `docs/meters-dimensions.md` says what else the
//! wiring takes.
//!
//! # The rule
//!
//! A meter of this kind receives readings ("the resource is 30 GB now"). A reading holds
//! from its timestamp until the next reading; the period total is the integral of that
//! step function over the period, in value × seconds, and is shown in value × hours.
//!
//! # How hour cells hold it
//!
//! An hour cell holds the *set of readings* taken in its hour, one per second: the
//! timestamp truncated to the second, and on a tie the larger value (as `latest` does).
//! Merging two cells is set union with that tie rule, which is commutative, associative and
//! idempotent, so the cell is the same whatever order the events arrive in and however
//! often a batch is replayed; nothing in a cell depends on another cell. The integral is
//! computed at read time from the readings of the period's cells plus the *carry-in*: the
//! last reading before the period starts (the last entry of the latest earlier non-empty
//! cell). A cell holds at most [`MAX_READINGS_PER_HOUR`] readings by construction.
//!
//! Exactness: a reading's value has at most 9 decimal places and seconds are whole, so
//! every value × seconds product and their sum are exact `Decimal`s (a month of readings
//! below 10^18 stays below 3 × 10^24, far inside `Decimal`'s 7.9 × 10^28). Converting to
//! hours divides by 3,600 and rounds once, half to even, to 9 decimal places
//! ([`value_hours`]); that rounding is a function of the exact total only, so it too is
//! independent of order.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};

use crate::counter::Overflow;
use crate::period::Month;

/// Most readings one hour cell can hold: one per second.
pub const MAX_READINGS_PER_HOUR: usize = 3_600;

/// Decimal places of a total in value × hours.
pub const HOURS_DP: u32 = 9;

/// A reading offered to a cell of another hour: the caller picked the wrong cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a reading at {at} does not belong to the hour starting {hour}")]
pub struct OutsideHour {
    /// The reading's timestamp.
    pub at: DateTime<Utc>,
    /// The cell's hour.
    pub hour: DateTime<Utc>,
}

/// The readings taken in one hour, keyed by Unix second; only that hour's seconds, so at
/// most [`MAX_READINGS_PER_HOUR`] of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourReadings {
    hour: DateTime<Utc>,
    readings: BTreeMap<i64, Decimal>,
}

impl HourReadings {
    /// An empty cell for the hour containing `at`.
    pub fn new(at: DateTime<Utc>) -> HourReadings {
        HourReadings {
            hour: crate::period::Granularity::Hour.truncate(at),
            readings: BTreeMap::new(),
        }
    }

    /// The hour's start.
    pub fn hour(&self) -> DateTime<Utc> {
        self.hour
    }

    /// Adds a reading of this hour. Its timestamp is truncated to the second; on a tie
    /// the larger value stays, so the result does not depend on which arrived first.
    pub fn insert(&mut self, at: DateTime<Utc>, value: Decimal) -> Result<(), OutsideHour> {
        if crate::period::Granularity::Hour.truncate(at) != self.hour {
            return Err(OutsideHour {
                at,
                hour: self.hour,
            });
        }
        keep_larger(&mut self.readings, at.timestamp(), value);
        Ok(())
    }

    /// Union with another cell of the same hour, by the same tie rule as
    /// [`HourReadings::insert`].
    pub fn merge(&mut self, other: &HourReadings) -> Result<(), OutsideHour> {
        if other.hour != self.hour {
            return Err(OutsideHour {
                at: other.hour,
                hour: self.hour,
            });
        }
        for (&second, &value) in &other.readings {
            keep_larger(&mut self.readings, second, value);
        }
        Ok(())
    }

    /// The last reading of the hour (the carry-in of the hours after it).
    pub fn last(&self) -> Option<Decimal> {
        self.readings.last_key_value().map(|(_, v)| *v)
    }

    /// The readings, by Unix second.
    pub fn readings(&self) -> impl Iterator<Item = (i64, Decimal)> + '_ {
        self.readings.iter().map(|(s, v)| (*s, *v))
    }

    /// How many readings the cell holds.
    pub fn len(&self) -> usize {
        self.readings.len()
    }

    /// Whether the cell holds no reading.
    pub fn is_empty(&self) -> bool {
        self.readings.is_empty()
    }
}

fn keep_larger(readings: &mut BTreeMap<i64, Decimal>, second: i64, value: Decimal) {
    readings
        .entry(second)
        .and_modify(|v| *v = (*v).max(value))
        .or_insert(value);
}

/// The integral over `[start, end)`, in value × seconds, of the step function the readings
/// define: `carry_in` (the last reading before `start`; `None`: nothing held) until the
/// first reading, then each reading until the next. Readings outside the period are
/// ignored (the caller passes the period's cells). An `end` not after `start` gives zero.
pub fn value_seconds<'a>(
    carry_in: Option<Decimal>,
    cells: impl IntoIterator<Item = &'a HourReadings>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Decimal, Overflow> {
    let (start, end) = (start.timestamp(), end.timestamp());
    if end <= start {
        return Ok(Decimal::ZERO);
    }
    integrate(&merged(cells), carry_in, start, end)
}

/// The readings of `cells` by second, merged so the same second in two cells (a caller
/// passing overlapping cells) counts once, by the tie rule.
fn merged<'a>(cells: impl IntoIterator<Item = &'a HourReadings>) -> BTreeMap<i64, Decimal> {
    let mut all = BTreeMap::new();
    for cell in cells {
        for (second, value) in cell.readings() {
            keep_larger(&mut all, second, value);
        }
    }
    all
}

/// The integral over `[start, end)` (Unix seconds, `start < end`) of the step function of
/// `all`, holding `carry_in` until the first reading.
fn integrate(
    all: &BTreeMap<i64, Decimal>,
    carry_in: Option<Decimal>,
    start: i64,
    end: i64,
) -> Result<Decimal, Overflow> {
    let mut total = Decimal::ZERO;
    let mut held = carry_in.unwrap_or(Decimal::ZERO);
    let mut since = start;
    for (second, value) in all.range(start..end) {
        total = add_product(total, held, second - since)?;
        held = *value;
        since = *second;
    }
    add_product(total, held, end - since)
}

/// The time-weighted totals of several periods of one month, in value × hours
/// ([`value_hours`]), from the month's cells of one series and `month_carry_in` (the
/// closing reading of the month before, if any): what `GET /v1/usage` answers per hour, day
/// or month bucket. Each period's carry-in is the last reading of the month before its
/// start, else `month_carry_in`. A period not after its start is zero. The caller keeps
/// the periods inside the month (readings of other months among the cells would otherwise
/// be taken as carry-ins).
pub fn period_totals<'a>(
    month_carry_in: Option<Decimal>,
    cells: impl IntoIterator<Item = &'a HourReadings>,
    periods: &[(DateTime<Utc>, DateTime<Utc>)],
) -> Result<Vec<Decimal>, Overflow> {
    let all = merged(cells);
    periods
        .iter()
        .map(|(start, end)| {
            let (start, end) = (start.timestamp(), end.timestamp());
            if end <= start {
                return Ok(Decimal::ZERO);
            }
            let carry = all
                .range(..start)
                .next_back()
                .map(|(_, v)| *v)
                .or(month_carry_in);
            integrate(&all, carry, start, end).map(value_hours)
        })
        .collect()
}

fn add_product(total: Decimal, value: Decimal, seconds: i64) -> Result<Decimal, Overflow> {
    value
        .checked_mul(Decimal::from(seconds))
        .and_then(|p| total.checked_add(p))
        .ok_or(Overflow)
}

/// A total in value × seconds as value × hours: divided by 3,600 and rounded once, half to
/// even, to [`HOURS_DP`] places.
pub fn value_hours(value_seconds: Decimal) -> Decimal {
    (value_seconds / Decimal::from(3_600))
        .round_dp_with_strategy(HOURS_DP, RoundingStrategy::MidpointNearestEven)
        .normalize()
}

/// One series' time-weighted total over a month, or over its first part (the upcoming
/// invoice), with the reading it ends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonthTotal {
    /// The integral over the span in value × hours, rounded once ([`value_hours`]).
    pub value_hours: Decimal,
    /// The reading held when the span ends: the last reading inside it, else the carry-in.
    /// Month close records it per series so that it is the next month's carry-in.
    pub closing: Option<Decimal>,
}

/// The time-weighted total of one series over `month` up to `until` (the month's end for
/// month close, now for the upcoming invoice; clamped to the month), from its hour cells
/// and `carry_in`, the closing reading of the month before.
///
/// # Across months
///
/// A reading holds until the next one, into the months after it: a resource reported at
/// 10 GB on 31 October and not again is charged 10 GB for every hour of November. Month
/// close does not look back through earlier months' cells for that reading; it carries it
/// forward: closing month M records each series' [`MonthTotal::closing`] with M's report,
/// and closing M + 1 takes it as `carry_in`. A month with no readings at all is therefore
/// charged the carry-in for its whole length, and its closing reading is the carry-in
/// again, so a resource silent for a year is still charged each month. Month close runs
/// only after M's late window has closed (events for M are refused from then on), so the
/// closing reading it records is final. A series with no earlier report (a new org or a new
/// meter) has no carry-in: nothing is charged before its first reading.
pub fn month_total<'a>(
    carry_in: Option<Decimal>,
    cells: impl IntoIterator<Item = &'a HourReadings> + Clone,
    month: Month,
    until: DateTime<Utc>,
) -> Result<MonthTotal, Overflow> {
    let (start, end) = (month.start(), until.clamp(month.start(), month.end()));
    let seconds = value_seconds(carry_in, cells.clone(), start, end)?;
    let (start_s, end_s) = (start.timestamp(), end.timestamp());
    let last = cells
        .into_iter()
        .flat_map(HourReadings::readings)
        .filter(|(s, _)| (start_s..end_s).contains(s))
        .max_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    Ok(MonthTotal {
        value_hours: value_hours(seconds),
        closing: last.map(|(_, v)| v).or(carry_in),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone, Timelike};

    fn ts(y: i32, mo: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, 0, 0).single().unwrap()
    }

    fn month_cells(readings: &[(DateTime<Utc>, i64)]) -> Vec<HourReadings> {
        let mut by_hour: BTreeMap<DateTime<Utc>, HourReadings> = BTreeMap::new();
        for (t, v) in readings {
            by_hour
                .entry(crate::period::Granularity::Hour.truncate(*t))
                .or_insert_with(|| HourReadings::new(*t))
                .insert(*t, Decimal::from(*v))
                .unwrap();
        }
        by_hour.into_values().collect()
    }

    /// A storage meter priced $0.0001 per GB-hour, over three months:
    /// - October 2026 (31 days): 10 GB from 31 Oct 18:00 only: 10 × 6 h = 60 GB-hours, $0.006;
    ///   closes on 10 GB.
    /// - November (30 days, no readings): the 10 GB carried forward holds all month:
    ///   10 × 720 h = 7,200 GB-hours, $0.72; closes on 10 GB again.
    /// - December: 10 GB carried in until 10 Dec 00:00 (9 days), 40 GB until 20 Dec 12:00
    ///   (10.5 days), then 0: 10 × 216 + 40 × 252 = 12,240 GB-hours, $1.224.
    #[test]
    fn a_reading_carried_across_months_is_charged_per_gb_hour() {
        use crate::pricing::Pricing;
        let price = Pricing::PerUnit {
            unit_price: Decimal::new(1, 4),
        };
        let oct = Month::new(2026, 10).unwrap();
        let oct_cells = month_cells(&[(ts(2026, 10, 31, 18), 10)]);
        let o = month_total(None, &oct_cells, oct, oct.end()).unwrap();
        assert_eq!(o.value_hours, Decimal::from(60));
        assert_eq!(o.closing, Some(Decimal::from(10)));
        assert_eq!(
            price.price(o.value_hours).unwrap().amount,
            Decimal::new(6, 3)
        );

        let nov = oct.next();
        let n = month_total(o.closing, &[], nov, nov.end()).unwrap();
        assert_eq!(n.value_hours, Decimal::from(7_200));
        assert_eq!(n.closing, Some(Decimal::from(10)));
        assert_eq!(
            price.price(n.value_hours).unwrap().amount,
            Decimal::new(72, 2)
        );
        // Without the carried reading November would be free: the carry is what charges it.
        let lost = month_total(None, &[], nov, nov.end()).unwrap();
        assert_eq!(lost.value_hours, Decimal::ZERO);
        assert_eq!(lost.closing, None);

        let dec = nov.next();
        let dec_cells = month_cells(&[(ts(2026, 12, 10, 0), 40), (ts(2026, 12, 20, 12), 0)]);
        let d = month_total(n.closing, &dec_cells, dec, dec.end()).unwrap();
        assert_eq!(d.value_hours, Decimal::from(10 * 216 + 40 * 252));
        assert_eq!(d.closing, Some(Decimal::ZERO));
        assert_eq!(
            price.price(d.value_hours).unwrap().amount,
            Decimal::new(1224, 3)
        );

        // The upcoming invoice on 15 Dec 00:00: 10 × 216 + 40 × 120, and the reading held.
        let so_far = month_total(n.closing, &dec_cells, dec, ts(2026, 12, 15, 0)).unwrap();
        assert_eq!(so_far.value_hours, Decimal::from(10 * 216 + 40 * 120));
        assert_eq!(so_far.closing, Some(Decimal::from(40)));
        // A reading of another month among the cells changes nothing (readings outside the
        // span are ignored), and `until` past the month is the month's end.
        let mut mixed = dec_cells.clone();
        mixed.extend(month_cells(&[(ts(2027, 1, 2, 0), 99)]));
        let later = month_total(n.closing, &mixed, dec, ts(2027, 2, 1, 0)).unwrap();
        assert_eq!(later, d);
    }

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, h, m, s)
            .single()
            .unwrap()
    }

    /// Cells by hour, as a store would hold them.
    fn cells(readings: &[(DateTime<Utc>, i64)]) -> BTreeMap<u32, HourReadings> {
        let mut cells: BTreeMap<u32, HourReadings> = BTreeMap::new();
        for (t, v) in readings {
            cells
                .entry(t.hour())
                .or_insert_with(|| HourReadings::new(*t))
                .insert(*t, Decimal::from(*v))
                .unwrap();
        }
        cells
    }

    fn day_total(readings: &[(DateTime<Utc>, i64)], carry_in: Option<i64>) -> Decimal {
        let c = cells(readings);
        let s = value_seconds(
            carry_in.map(Decimal::from),
            c.values(),
            at(0, 0, 0),
            at(0, 0, 0) + Duration::days(1),
        )
        .unwrap();
        value_hours(s)
    }

    /// 10 GB from 00:00, 30 GB from 06:00, 0 from 18:00: 10·6 + 30·12 + 0·6 = 420 GB-hours.
    #[test]
    fn a_hand_worked_day_is_420_gb_hours() {
        let readings = [(at(0, 0, 0), 10), (at(6, 0, 0), 30), (at(18, 0, 0), 0)];
        assert_eq!(day_total(&readings, None), Decimal::from(420));
        // With nothing at 00:00, the carry-in from the day before holds until 06:00.
        let later = [(at(6, 0, 0), 30), (at(18, 0, 0), 0)];
        assert_eq!(day_total(&later, Some(10)), Decimal::from(420));
        assert_eq!(day_total(&later, None), Decimal::from(360));
    }

    #[test]
    fn order_and_replays_do_not_change_the_total() {
        let readings = [
            (at(0, 0, 0), 10),
            (at(6, 0, 0), 30),
            (at(6, 30, 15), 25),
            (at(6, 30, 15), 20), // same second: the larger, 25, stays
            (at(18, 0, 0), 0),
            (at(23, 59, 59), 7),
        ];
        // 10·6h + 30·(30m15s) + 25·(11h29m45s) + 0·(5h59m59s) + 7·1s, in seconds:
        let want_seconds = 10 * 6 * 3600 + 30 * 1815 + 25 * 41_385 + 7;
        let want = value_hours(Decimal::from(want_seconds));
        let mut permuted = readings.to_vec();
        for round in 0..readings.len() {
            permuted.rotate_left(1);
            if round % 2 == 0 {
                permuted.reverse();
            }
            // A replay: the whole batch again.
            let mut replayed = permuted.clone();
            replayed.extend_from_slice(&permuted);
            assert_eq!(day_total(&permuted, None), want, "{permuted:?}");
            assert_eq!(day_total(&replayed, None), want, "{replayed:?}");
        }
        // Merging cells built apart is the same as one cell built from everything.
        let (a, b) = readings.split_at(3);
        let mut left = cells(a);
        for (h, cell) in cells(b) {
            match left.get_mut(&h) {
                Some(l) => l.merge(&cell).unwrap(),
                None => {
                    left.insert(h, cell);
                }
            }
        }
        assert_eq!(left, cells(&readings));
    }

    #[test]
    fn exact_to_the_second_and_rounded_once() {
        // 1 GB for one second is 1/3600 GB-hour: rounded once, to 9 places.
        let one = [(at(12, 0, 0), 1), (at(12, 0, 1), 0)];
        assert_eq!(day_total(&one, None), Decimal::new(277_778, 9));
        // Readings outside the period do not count, and an empty period is zero.
        let c = cells(&[(at(1, 0, 0), 5)]);
        let s = value_seconds(None, c.values(), at(2, 0, 0), at(3, 0, 0)).unwrap();
        assert_eq!(s, Decimal::ZERO);
        let s = value_seconds(Some(Decimal::ONE), c.values(), at(3, 0, 0), at(2, 0, 0));
        assert_eq!(s, Ok(Decimal::ZERO));
        // A cell holds one reading a second of its own hour, at most.
        let mut cell = HourReadings::new(at(5, 17, 0));
        assert_eq!(cell.hour(), at(5, 0, 0));
        for s in 0..4000 {
            let t = at(5, 0, 0) + Duration::seconds(s);
            assert_eq!(cell.insert(t, Decimal::ONE).is_ok(), s < 3600, "{t}");
        }
        assert_eq!(cell.len(), MAX_READINGS_PER_HOUR);
        assert_eq!(cell.last(), Some(Decimal::ONE));
        let other = HourReadings::new(at(6, 0, 0));
        assert!(cell.merge(&other).is_err());
    }

    #[test]
    fn a_total_past_decimal_range_is_an_overflow_not_a_panic() {
        let huge = Decimal::MAX / Decimal::TWO;
        let c = cells(&[]);
        let s = value_seconds(Some(huge), c.values(), at(0, 0, 0), at(1, 0, 0));
        assert_eq!(s, Err(Overflow));
    }

    /// The hand-worked day (10 GB from 00:00, 30 GB from 06:00, 0 from 18:00) in 6-hour
    /// periods: 60, 180, 180, 0 GB-hours. Each period's carry-in is the last reading before
    /// it (30 GB into 12:00–18:00); with no reading before 00:00 the month's carry-in (5 GB)
    /// holds until the first one.
    #[test]
    fn periods_take_the_last_earlier_reading_as_carry_in() {
        let quarters: Vec<_> = (0..4)
            .map(|q| (at(6 * q, 0, 0), at(6 * q, 0, 0) + Duration::hours(6)))
            .collect();
        let day = cells(&[(at(0, 0, 0), 10), (at(6, 0, 0), 30), (at(18, 0, 0), 0)]);
        let got = period_totals(None, day.values(), &quarters).unwrap();
        assert_eq!(got, [60, 180, 180, 0].map(Decimal::from));
        let late = cells(&[(at(6, 0, 0), 30), (at(18, 0, 0), 0)]);
        let got = period_totals(Some(Decimal::from(5)), late.values(), &quarters).unwrap();
        assert_eq!(got, [30, 180, 180, 0].map(Decimal::from));
        let empty = period_totals(
            Some(Decimal::ONE),
            late.values(),
            &[(at(3, 0, 0), at(2, 0, 0))],
        );
        assert_eq!(empty, Ok(vec![Decimal::ZERO]));
    }
}
