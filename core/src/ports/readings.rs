//! [`ReadingStore`]: the hour cells of time-weighted meters (`time_weighted_sum`), each the
//! set of readings taken in its hour ([`HourReadings`]); see [`crate::time_weighted`] and
//! `docs/meters-dimensions.md` ("Time-weighted sums").
//!
//! Writing a reading is idempotent and commutative: a cell keeps one reading per second and,
//! on a tie, the larger value. So the aggregator writes the readings of a batch *outside*
//! the ledger transaction, before it applies the batch, like `unique_count`'s markers: a
//! replay or a crash between the two writes the same readings again and changes nothing,
//! and the exactly-once protocol of [`UsageStore::apply_batch`](super::UsageStore) is
//! untouched.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::StoreError;
use crate::ids::{MeterName, OrgId, ProjectId};
use crate::period::Month;
use crate::time_weighted::HourReadings;

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

    /// The non-empty hour cells of `meter` for `org` in `month`, of one project or (`None`)
    /// of every project, in (project, hour) order. At most 744 cells per project.
    async fn month_readings(
        &self,
        org: &OrgId,
        meter: &MeterName,
        month: Month,
        project: Option<&ProjectId>,
    ) -> Result<Vec<(ProjectId, HourReadings)>, StoreError>;
}
