//! The upcoming invoice: the current month so far, priced with month close's engine, and
//! projected to month end. Pure (no I/O): the API's `GET /v1/orgs/{org_id}/invoices/upcoming`
//! reads the counters and calls [`upcoming_invoice`], and billing's tests check it against
//! month close.
//!
//! # The same engine as month close
//!
//! The month so far is [`price_month`] over the month's quantities
//! ([`MonthUsage::from_counters`] of the stored counters) on the plan month close would bill
//! (`crate::plan::billed_plan`). So at the month's last instant the preview's `total` is the
//! closed report's (before any adjustment lines for late usage of earlier months, which
//! month close adds and the preview does not show).
//!
//! # The projection
//!
//! `projected_total` prices a projected month with the same engine. The month's fraction
//! gone by is `elapsed = now − month start` over `month length` (in seconds; at least one
//! hour is taken as elapsed, so a month's first minutes do not project one event into
//! millions). Per meter, by aggregation:
//!
//! - `sum` and `count`: usage grows with time, so `projected = quantity × month length /
//!   elapsed` (days_in_month / days_elapsed), rounded to 9 decimal places (the finest an
//!   event quantity may be), half away from zero.
//! - `max`, `latest` and `unique_count`: not scaled (`projected = quantity`): a peak or a
//!   latest reading is already the month's level, and a count of distinct values does not
//!   grow in proportion to time (the same users come back).
//! - `time_weighted_sum`: the value × hours so far plus the readings held now (summed over
//!   projects) for the rest of the month: a resource is taken to stay at its level, so
//!   `projected = so_far + held × hours left`, rounded once to 9 places, half to even.
//!   The month so far integrates readings up to now, never past it.
//!
//! The flat fee is the month's in both.

use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::catalogue::PlanSpec;
use crate::counter::checked_sum;
use crate::ids::{MeterName, OrgId};
use crate::meter::{Aggregation, MeterCatalogue};
use crate::overrides::PricedPlan;
use crate::period::Month;
use crate::ports::{CarryIns, ClosingReadings};
use crate::report::{MonthUsage, PricingError, UsageReport, price_month};
use crate::time_weighted::value_hours;

/// The least time taken as elapsed in a projection (see the module doc).
const MIN_ELAPSED_SECONDS: i64 = 3_600;
/// Decimal places a projected quantity is rounded to.
const PROJECTION_DP: u32 = 9;

/// One meter's line of the upcoming invoice: month close's line fields, plus the
/// projection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpcomingLine {
    /// The meter.
    pub meter: String,
    /// Month-to-date quantity, in the meter's unit.
    pub quantity: String,
    /// The plan's allowance.
    pub included: String,
    /// `max(0, quantity − included)`.
    pub billable: String,
    /// What the line comes to so far (after the plan's discount, rounded once to the cent).
    pub amount: String,
    /// The quantity projected to month end (see the module doc).
    pub projected_quantity: String,
    /// The line priced at the projected quantity.
    pub projected_amount: String,
    /// The catalogue version that priced the line (a number, `file` or `builtin`), as month
    /// close's report line records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalogue_version: Option<String>,
    /// The org's price overrides that changed the line; empty at list price.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<String>,
}

/// The answer of `GET /v1/orgs/{org_id}/invoices/upcoming`. Money is decimal strings in
/// `currency`'s major unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpcomingInvoice {
    /// The org.
    pub org_id: String,
    /// The month, `YYYY-MM`.
    pub period: String,
    /// The plan month close would bill the month on.
    pub plan: String,
    /// `usd`.
    pub currency: String,
    /// The time the figures are for (the server's clock).
    pub as_of: String,
    /// Days of the month gone by (decimal; at least 1/24).
    pub days_elapsed: String,
    /// Days in the month.
    pub days_in_month: u32,
    /// One line per meter the plan prices, in meter order.
    pub lines: Vec<UpcomingLine>,
    /// The plan's flat monthly fee.
    pub flat_fee: String,
    /// `flat_fee + Σ list amounts` so far.
    pub subtotal: String,
    /// The discount on usage so far.
    pub discount: String,
    /// `subtotal − discount`: the month so far.
    pub total: String,
    /// The total of the projected month.
    pub projected_total: String,
    /// The catalogue version that priced the month (a number, `file` or `builtin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalogue_version: Option<String>,
    /// Every price override that applied (fee, discount and lines); empty when none did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<String>,
}

/// The upcoming invoice of `org_id` at `now`: `usage` (the month's quantities so far)
/// priced on `plan` with [`price_month`], and the projection of the module doc priced the
/// same way. Pure.
pub fn upcoming_invoice(
    org_id: &OrgId,
    plan: &PlanSpec,
    meters: &MeterCatalogue,
    usage: &MonthUsage,
    now: DateTime<Utc>,
) -> Result<UpcomingInvoice, PricingError> {
    priced_upcoming(
        org_id,
        plan,
        None,
        meters,
        usage,
        &ClosingReadings::new(),
        now,
    )
}

/// [`upcoming_invoice`] on a plan with the org's overrides applied
/// ([`crate::overrides::apply_overrides`], as month close does), recording on the invoice
/// and its lines the catalogue version and the overrides that priced them.
pub fn upcoming_invoice_priced(
    org_id: &OrgId,
    priced: &PricedPlan,
    meters: &MeterCatalogue,
    usage: &MonthUsage,
    now: DateTime<Utc>,
) -> Result<UpcomingInvoice, PricingError> {
    let held = ClosingReadings::new();
    priced_upcoming(
        org_id,
        &priced.spec,
        Some(priced),
        meters,
        usage,
        &held,
        now,
    )
}

/// [`upcoming_invoice_priced`] with the readings held now of the `time_weighted_sum`
/// meters (what [`crate::ports::time_weighted_month`] returns at now), which the
/// projection holds to month end (see the module doc).
pub fn upcoming_invoice_held(
    org_id: &OrgId,
    priced: &PricedPlan,
    meters: &MeterCatalogue,
    usage: &MonthUsage,
    held: &ClosingReadings,
    now: DateTime<Utc>,
) -> Result<UpcomingInvoice, PricingError> {
    priced_upcoming(org_id, &priced.spec, Some(priced), meters, usage, held, now)
}

/// A time-weighted meter's projection: the value × hours so far plus the readings held
/// now (summed over projects) for the rest of the month, rounded once ([`value_hours`]).
fn held_to_month_end(
    meter: &MeterName,
    so_far: Decimal,
    held: Option<&CarryIns>,
    seconds_left: i64,
) -> Result<Decimal, PricingError> {
    let out_of_range = || PricingError::Invalid {
        meter: meter.clone(),
        reason: "the projected quantity is out of range".into(),
    };
    let level = checked_sum(held.into_iter().flat_map(|h| h.values().copied()))
        .map_err(|_| out_of_range())?;
    let rest = level
        .checked_mul(Decimal::from(seconds_left))
        .ok_or_else(out_of_range)?;
    so_far
        .checked_add(value_hours(rest))
        .ok_or_else(out_of_range)
}

fn priced_upcoming(
    org_id: &OrgId,
    plan: &PlanSpec,
    priced: Option<&PricedPlan>,
    meters: &MeterCatalogue,
    usage: &MonthUsage,
    held: &ClosingReadings,
    now: DateTime<Utc>,
) -> Result<UpcomingInvoice, PricingError> {
    let period = Month::of(now);
    let mut so_far = price_month(org_id.clone(), period, plan, usage)?;
    if let Some(p) = priced {
        p.stamp(&mut so_far);
    }
    let month_seconds = (period.end() - period.start()).num_seconds();
    let elapsed_seconds = (now - period.start())
        .num_seconds()
        .clamp(MIN_ELAPSED_SECONDS, month_seconds);
    let factor = Decimal::from(month_seconds) / Decimal::from(elapsed_seconds);
    let mut projected = MonthUsage::default();
    let seconds_left = (period.end() - now).num_seconds().max(0);
    for meter in held.keys() {
        let so_far = usage.meters.get(meter).copied().unwrap_or_default();
        let q = held_to_month_end(meter, so_far, held.get(meter), seconds_left)?;
        projected.meters.insert(meter.clone(), q);
    }
    for (meter, quantity) in &usage.meters {
        if held.contains_key(meter) {
            continue;
        }
        let scales = meters
            .get(meter.as_str())
            .is_some_and(|m| matches!(m.aggregation, Aggregation::Sum | Aggregation::Count));
        let q = if scales {
            quantity
                .checked_mul(factor)
                .ok_or_else(|| PricingError::Invalid {
                    meter: meter.clone(),
                    reason: "the projected quantity is out of range".into(),
                })?
                .round_dp_with_strategy(PROJECTION_DP, RoundingStrategy::MidpointAwayFromZero)
                .normalize()
        } else {
            *quantity
        };
        projected.meters.insert(meter.clone(), q);
    }
    let projection = price_month(org_id.clone(), period, plan, &projected)?;
    Ok(shape(
        &so_far,
        &projection,
        now,
        elapsed_seconds,
        month_seconds,
    ))
}

fn shape(
    so_far: &UsageReport,
    projection: &UsageReport,
    now: DateTime<Utc>,
    elapsed_seconds: i64,
    month_seconds: i64,
) -> UpcomingInvoice {
    let lines = so_far
        .lines
        .iter()
        .map(|l| {
            let p = projection.lines.iter().find(|p| p.meter == l.meter);
            UpcomingLine {
                meter: l.meter.to_string(),
                quantity: l.quantity.normalize().to_string(),
                included: l.included.normalize().to_string(),
                billable: l.billable.normalize().to_string(),
                amount: l.amount.to_string(),
                projected_quantity: p.map_or_else(
                    || l.quantity.normalize().to_string(),
                    |p| p.quantity.normalize().to_string(),
                ),
                projected_amount: p.map_or_else(|| l.amount.to_string(), |p| p.amount.to_string()),
                catalogue_version: l.catalogue_version.clone(),
                overrides: l.overrides.iter().map(ToString::to_string).collect(),
            }
        })
        .collect();
    UpcomingInvoice {
        org_id: so_far.org_id.to_string(),
        period: so_far.period.to_string(),
        plan: so_far.plan.as_str().to_owned(),
        currency: so_far.currency.clone(),
        as_of: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        days_elapsed: (Decimal::from(elapsed_seconds) / Decimal::from(86_400))
            .round_dp(6)
            .normalize()
            .to_string(),
        days_in_month: u32::try_from(month_seconds / 86_400).unwrap_or(31),
        lines,
        flat_fee: so_far.flat_fee.to_string(),
        subtotal: so_far.subtotal.to_string(),
        discount: so_far.discount.to_string(),
        total: so_far.total.to_string(),
        projected_total: projection.total.to_string(),
        catalogue_version: so_far.catalogue_version.clone(),
        overrides: so_far.overrides.iter().map(ToString::to_string).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::Catalogue;
    use crate::ids::MeterName;
    use crate::plan::PlanId;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// Hand-worked: the starter plan ($29 fee, 10 % off usage) on 2026-11-16T00:00:00Z,
    /// 15 of November's 30 days gone, so sum meters project ×2.
    ///
    /// | meter | so far | billable | list | amount (−10 %) | projected | projected amount |
    /// |---|---|---|---|---|---|---|
    /// | api_calls (100,000 incl., $0.50/1,000) | 150,000 | 50,000 = 50 × 0.50 | 25.00 | 22.50 | 300,000 → 200 × 0.50 = 100 | 90.00 |
    /// | bandwidth_bytes ($0.08/GB) | 5 GB | 5 × 0.08 | 0.40 | 0.36 | 10 GB → 0.80 | 0.72 |
    /// | compute_minutes (1,000 incl., $0.10) | 700 | 0 | 0.00 | 0.00 | 1,400 → 400 × 0.10 = 40 | 36.00 |
    /// | storage_bytes (max, 10 GiB incl., $0.10/GB) | 12 GiB | 2,147,483,648 B = 2.147483648 GB → 0.2147483648 | 0.21 | 0.19327… → 0.19 | not scaled: 12 GiB | 0.19 |
    ///
    /// subtotal = 29 + 25.00 + 0.40 + 0 + 0.21 = 54.61; discount = 2.50 + 0.04 + 0.02 = 2.56;
    /// total = 52.05 (= 29 + 22.50 + 0.36 + 0.19); projected = 29 + 90 + 0.72 + 36 + 0.19 =
    /// 155.91.
    #[test]
    fn mid_month_figures_match_the_hand_worked_ones() {
        let catalogue = Catalogue::builtin().unwrap();
        let mut usage = MonthUsage::default();
        for (m, q) in [
            ("api_calls", Decimal::from(150_000)),
            ("compute_minutes", Decimal::from(700)),
            ("storage_bytes", Decimal::from(12_u64 << 30)),
            ("bandwidth_bytes", Decimal::from(5_000_000_000_u64)),
        ] {
            usage.meters.insert(MeterName::parse(m).unwrap(), q);
        }
        let org = OrgId::parse("org_hand").unwrap();
        let inv = upcoming_invoice(
            &org,
            catalogue.plan(PlanId::Starter),
            &catalogue.meter_catalogue(),
            &usage,
            at("2026-11-16T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(inv.period, "2026-11");
        assert_eq!((inv.days_elapsed.as_str(), inv.days_in_month), ("15", 30));
        let lines: Vec<_> = inv
            .lines
            .iter()
            .map(|l| {
                (
                    l.meter.as_str(),
                    l.billable.as_str(),
                    l.amount.as_str(),
                    l.projected_quantity.as_str(),
                    l.projected_amount.as_str(),
                )
            })
            .collect();
        assert_eq!(
            lines,
            [
                ("api_calls", "50000", "22.50", "300000", "90.00"),
                (
                    "bandwidth_bytes",
                    "5000000000",
                    "0.36",
                    "10000000000",
                    "0.72"
                ),
                ("compute_minutes", "0", "0.00", "1400", "36.00"),
                ("storage_bytes", "2147483648", "0.19", "12884901888", "0.19"),
            ]
        );
        assert_eq!(
            (
                inv.flat_fee.as_str(),
                inv.subtotal.as_str(),
                inv.discount.as_str(),
                inv.total.as_str(),
                inv.projected_total.as_str()
            ),
            ("29.00", "54.61", "2.56", "52.05", "155.91")
        );
    }

    /// At the month's last second the projection is (almost) the month itself, and before
    /// an hour has passed it is bounded by the one-hour floor.
    #[test]
    fn projection_is_bounded_at_both_ends_of_the_month() {
        let catalogue = Catalogue::builtin().unwrap();
        let mut usage = MonthUsage::default();
        usage.meters.insert(
            MeterName::parse("compute_minutes").unwrap(),
            Decimal::from(10),
        );
        let org = OrgId::parse("org_hand").unwrap();
        let free = catalogue.plan(PlanId::Free);
        let meters = catalogue.meter_catalogue();
        // 1 minute in: 10 minutes × 720 h / 1 h (the floor) = 7,200.
        let early =
            upcoming_invoice(&org, free, &meters, &usage, at("2026-11-01T00:01:00Z")).unwrap();
        let cm = early
            .lines
            .iter()
            .find(|l| l.meter == "compute_minutes")
            .unwrap();
        assert_eq!(cm.projected_quantity, "7200");
        let late =
            upcoming_invoice(&org, free, &meters, &usage, at("2026-11-30T23:59:59Z")).unwrap();
        let cm = late
            .lines
            .iter()
            .find(|l| l.meter == "compute_minutes")
            .unwrap();
        // 10 × 2,592,000 / 2,591,999, rounded to 9 places.
        assert_eq!(cm.projected_quantity, "10.000003858");
    }
}
