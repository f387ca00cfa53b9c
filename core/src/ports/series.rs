//! [`SeriesRegistry`]: the series of each dimensioned meter an org has made in a month, and
//! the bound on how many it may make (see [`crate::dimension`] and
//! `docs/meters-dimensions.md`).
//!
//! Ingest registers a series before it queues the first event that makes it, because a
//! `202` promises the event will be counted: the aggregator must never refuse what ingest
//! accepted. Registration is one conditional write per new series, so the bound holds
//! exactly across any number of ingest instances: of two instances registering the same
//! series one makes it and the other finds it known; past the bound both are refused.

use std::collections::BTreeSet;

use async_trait::async_trait;
use rust_decimal::Decimal;

use super::{CounterQuery, StoreError, UsageStore};
use crate::counter::{OwnedCounterKey, checked_sum};
use crate::dimension::MAX_MAX_SERIES;
use crate::ids::{MeterName, OrgId, ProjectId};
use crate::period::{Granularity, Month};

/// What [`SeriesRegistry::register_series`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// This call registered the series; it counts toward the bound from now on.
    New,
    /// The series was registered already (by this or another instance).
    Known,
    /// The series is new and the org already has `bound` series of the meter this month:
    /// not registered. Ingest refuses the event (`dimension_cardinality_exceeded`).
    Full,
}

/// Refuses a registration a store must never write: a bare meter (it has no series), or a
/// bound out of `1..=`[`MAX_MAX_SERIES`]. A caller's bug: [`StoreError::Corrupt`] (`500`).
pub fn check_registration(series: &MeterName, bound: u32) -> Result<(), StoreError> {
    if !series.is_series() {
        return Err(StoreError::Corrupt(format!(
            "{series} is a meter, not a series key"
        )));
    }
    if !(1..=MAX_MAX_SERIES).contains(&bound) {
        return Err(StoreError::Corrupt(format!(
            "series bound {bound} is outside 1..={MAX_MAX_SERIES}"
        )));
    }
    Ok(())
}

/// The series registry. See the [module docs](self).
#[async_trait]
pub trait SeriesRegistry: Send + Sync {
    /// Registers the request's series of its meter for its org and month, unless the org
    /// has `bound` series of that meter in that month already. Atomic: the count and the
    /// series are written together or not at all.
    async fn register_series(&self, req: &NewSeries<'_>) -> Result<Registration, StoreError>;

    /// The registered series of `of.meter` (a bare meter name) for `of.org` and `of.month`,
    /// in key order; at most [`MAX_MAX_SERIES`].
    async fn list_series(&self, of: &MeterMonth<'_>) -> Result<Vec<MeterName>, StoreError>;
}

/// A series [`SeriesRegistry::register_series`] is asked to register.
#[derive(Debug, Clone, Copy)]
pub struct NewSeries<'a> {
    /// The org that makes the series.
    pub org: &'a OrgId,
    /// The month it is made in (the bound counts per month).
    pub month: Month,
    /// The series key ([`MeterName::is_series`]); its meter is [`MeterName::base`].
    pub series: &'a MeterName,
    /// How many series of the meter the org may have in the month
    /// (`1..=`[`MAX_MAX_SERIES`], [`check_registration`]).
    pub bound: u32,
}

impl<'a> NewSeries<'a> {
    /// `series` of `org` in `month`, under `bound`.
    #[must_use]
    pub const fn new(org: &'a OrgId, month: Month, series: &'a MeterName, bound: u32) -> Self {
        Self {
            org,
            month,
            series,
            bound,
        }
    }
}

/// One meter of one org in one month: whose series [`SeriesRegistry::list_series`] lists.
#[derive(Debug, Clone, Copy)]
pub struct MeterMonth<'a> {
    /// The org.
    pub org: &'a OrgId,
    /// The meter (a bare name).
    pub meter: &'a MeterName,
    /// The month.
    pub month: Month,
}

impl<'a> MeterMonth<'a> {
    /// `meter` of `org` in `month`.
    #[must_use]
    pub const fn new(org: &'a OrgId, meter: &'a MeterName, month: Month) -> Self {
        Self { org, meter, month }
    }
}

/// The org's stored counters of `period` (`UsageStore::stored_counters`), with every
/// dimensioned meter's series (`meter{dim=value}`) replaced by the
/// meter's month total, org-wide and per project: a series is never billed as a meter of
/// its own, and never escapes the bill. The total is the store's own fold over the series
/// (`counter_series` of the bare meter: sums add, a max takes the largest), not a sum here,
/// which would be wrong for a max.
pub async fn month_counters(
    usage: &dyn UsageStore,
    org: &OrgId,
    period: Month,
) -> Result<Vec<(OwnedCounterKey, Decimal)>, StoreError> {
    let counters = usage.stored_counters(org, period).await?;
    let split: BTreeSet<(Option<ProjectId>, MeterName)> = counters
        .iter()
        .filter(|(k, _)| k.granularity == Granularity::Month && k.meter.is_series())
        .map(|(k, _)| (k.project.clone(), k.meter.base_meter()))
        .collect();
    if split.is_empty() {
        return Ok(counters);
    }
    let mut out: Vec<(OwnedCounterKey, Decimal)> = counters
        .into_iter()
        .filter(|(k, _)| {
            k.granularity != Granularity::Month
                || !split.contains(&(k.project.clone(), k.meter.base_meter()))
        })
        .collect();
    for (project, meter) in split {
        let series = usage
            .counter_series(&CounterQuery {
                org: org.clone(),
                project: project.clone(),
                meter: meter.clone(),
                granularity: Granularity::Month,
                from: period.start(),
                to: period.end(),
            })
            .await?;
        let total = checked_sum(series.iter().map(|c| c.value)).map_err(|e| {
            StoreError::Corrupt(format!("the month counters of {org} for {meter}: {e}"))
        })?;
        out.push((
            OwnedCounterKey {
                org: org.clone(),
                project,
                meter,
                granularity: Granularity::Month,
                start: period.start(),
            },
            total,
        ));
    }
    Ok(out)
}
