//! Pricing one organization's month into a [`UsageReport`]: the one pricing engine.
//!
//! [`price_month`] is pure: a [`PlanSpec`] and the month's quantities in, a report out. It
//! lives in core (no I/O) so that month close (`tally-billing`'s `close`) and the upcoming
//! invoice of the API (`tally-api`'s `invoices`), two capability crates that may not
//! depend on each other, price a month with the same code: the closed month's total is
//! what the preview said at the month's last instant. [`MonthUsage::from_counters`] is the
//! other half both share: which stored counters make up a month's quantities.
//!
//! # How a line is priced, and where rounding happens
//!
//! For each meter the plan prices (every catalogue meter, in name order; a meter without
//! usage gets a line with quantity 0):
//!
//! 1. `billable = max(0, quantity − included)`, in the meter's unit (bytes, calls).
//! 2. `billable_price_units = billable / price_unit_size`, exact (the size is a power of
//!    ten): bytes become GB, calls become thousands of calls.
//! 3. The price model turns that into `tiers` (the breakdown) whose amounts add up to
//!    `exact_amount`. Nothing is rounded so far.
//! 4. `list_amount = round(exact_amount)` and
//!    `amount = round(exact_amount × (1 − discount_percent / 100))`, each rounded once to
//!    the cent, half away from zero. The discount applies to the exact amount, before the
//!    line's one rounding, as the design asks; `amount` is what is invoiced for the line.
//! 5. `discount = list_amount − amount`, a difference of two cent amounts, so it needs no
//!    rounding of its own and `list_amount − discount = amount` holds to the cent.
//!
//! The flat monthly fee is not a line: it is the report's `flat_fee` field (whole cents,
//! never discounted), so every entry of `lines` is a meter with the contract's fields. The
//! totals are sums of cent amounts, so they are exact and consistent:
//!
//! - `subtotal = flat_fee + Σ lines.list_amount + Σ adjustments.list_amount`
//! - `discount = Σ lines.discount + Σ adjustments.discount`
//! - `total = subtotal − discount = flat_fee + Σ lines.amount + Σ adjustments.amount`
//!
//! # Per-project allocation
//!
//! Each line's `amount` is split across the org's projects in proportion to each project's
//! quantity of that meter, by the largest-remainder method on cents
//! ([`crate::allocate::allocate_cents`]), so a line's allocations add up to its amount
//! exactly. For a `max` meter such as storage the weights are the projects' own peaks (the
//! org's peak is not their sum, but the shares are still proportional). The flat fee,
//! adjustment lines, and any line whose projects all show zero quantity are not
//! allocated: they make up `unallocated`, so `Σ projects.amount + unallocated = total`.
//!
//! # Adjustments
//!
//! Events already in flight when a period closed are applied to that period's counters but
//! never edit its sent invoice: they become [`AdjustmentLine`]s on the next open report
//! (added by month close with [`UsageReport::add_adjustment`]). An adjustment is the closed
//! period's line recomputed with the corrected quantity, minus the line as invoiced
//! ([`adjustment_line`]), so it is exactly what the invoice would have said.

use std::collections::BTreeMap;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::allocate::allocate_cents;
use crate::catalogue::{CURRENCY, MeterPrice, PlanSpec};
use crate::counter::{Overflow, OwnedCounterKey, checked_sum};
use crate::ids::OverrideId;
use crate::period::Granularity;
use crate::pricing::{PriceError, Pricing, TierCharge};
use crate::{MeterName, Money, Month, OrgId, PlanId, ProjectId};

/// Why an org's month could not be priced. Every variant names the meter, so the report
/// that failed can be traced to its input. Month close reports it per org (the run goes on
/// with the others); the API answers it as a `500` (a catalogue that cannot price usage it
/// accepted is the operator's to fix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    /// Usage arrived for a meter the plan does not price; billing refuses to drop it.
    #[error("plan {plan} has no price for meter {meter}")]
    UnpricedMeter {
        /// The plan.
        plan: PlanId,
        /// The meter.
        meter: MeterName,
    },
    /// A month or project quantity was negative.
    #[error("meter {meter}: quantity {quantity} is negative")]
    NegativeQuantity {
        /// The meter.
        meter: MeterName,
        /// The quantity.
        quantity: Decimal,
    },
    /// The meter's price could not be applied.
    #[error("meter {meter}: {source}")]
    Price {
        /// The meter.
        meter: MeterName,
        /// What went wrong.
        #[source]
        source: PriceError,
    },
    /// A discount outside 0–100 %, or an amount out of the decimal range.
    #[error("meter {meter}: {reason}")]
    Invalid {
        /// The meter.
        meter: MeterName,
        /// What is wrong.
        reason: String,
    },
}

/// One org's month of usage: what [`price_month`] prices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonthUsage {
    /// The org's month quantity per meter (the all-projects month counter). Meters left
    /// out had no usage.
    pub meters: BTreeMap<MeterName, Decimal>,
    /// Each project's month quantity per meter; only used to allocate amounts to projects.
    pub projects: BTreeMap<ProjectId, BTreeMap<MeterName, Decimal>>,
}

impl MonthUsage {
    /// The month's quantities from an org's stored counters of `period` (what
    /// `UsageStore::stored_counters` returns): each month bucket of `period`, org-wide into
    /// `meters`, per project into `projects`; other buckets are left out. `Overflow` when a
    /// sum does not fit exactly.
    pub fn from_counters(
        counters: impl IntoIterator<Item = (OwnedCounterKey, Decimal)>,
        period: Month,
    ) -> Result<MonthUsage, Overflow> {
        let mut out = MonthUsage::default();
        for (key, value) in counters {
            if key.granularity != Granularity::Month || Month::of(key.start) != period {
                continue;
            }
            let slot = match key.project {
                None => out.meters.entry(key.meter).or_default(),
                Some(project) => out
                    .projects
                    .entry(project)
                    .or_default()
                    .entry(key.meter)
                    .or_default(),
            };
            *slot = checked_sum([*slot, value])?;
        }
        Ok(out)
    }
}

/// One meter's line of a report. The contract's fields (`meter`, `quantity`, `included`,
/// `billable`, `unit_price`, `amount`, `tiers`) come first; the rest explain the amount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportLine {
    /// The meter.
    pub meter: MeterName,
    /// The month's quantity, in the meter's unit.
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    /// The plan's allowance, in the meter's unit (0 when the plan has none).
    #[serde(with = "rust_decimal::serde::str")]
    pub included: Decimal,
    /// `max(0, quantity − included)`, in the meter's unit.
    #[serde(with = "rust_decimal::serde::str")]
    pub billable: Decimal,
    /// List price of the last billable price unit (per package for a package price; the
    /// tier's price for tiered prices). `tiers` is the authoritative breakdown.
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    /// What is invoiced for this line: `round(exact_amount × (1 − discount_percent/100))`,
    /// rounded once to the cent, half away from zero.
    pub amount: Money,
    /// The price model's breakdown; the amounts add up to `exact_amount`.
    pub tiers: Vec<TierCharge>,
    /// Shown on invoices.
    pub description: String,
    /// The meter's unit (`bytes`, `calls`).
    pub unit: String,
    /// The unit prices are quoted in (`GB`, `1,000 calls`).
    pub price_unit: String,
    /// Meter units per price unit.
    #[serde(with = "rust_decimal::serde::str")]
    pub price_unit_size: Decimal,
    /// `billable / price_unit_size`: the quantity the price model priced.
    #[serde(with = "rust_decimal::serde::str")]
    pub billable_price_units: Decimal,
    /// The price applied.
    pub pricing: Pricing,
    /// The sum of the tier amounts, exact (before discount and rounding).
    #[serde(with = "rust_decimal::serde::str")]
    pub exact_amount: Decimal,
    /// `round(exact_amount)`: the line before discount, to the cent.
    pub list_amount: Money,
    /// The plan's discount on usage, in percent.
    #[serde(with = "rust_decimal::serde::str")]
    pub discount_percent: Decimal,
    /// `list_amount − amount`.
    pub discount: Money,
    /// How many ledger entries make up the line (see `tally_core::audit`), recorded by
    /// month close. `None` on reports stored before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_count: Option<u64>,
    /// The digest of the line's ledger entries (`sha256:<hex>`, see `tally_core::audit`),
    /// recorded by month close so a customer can check the entries they are shown are the
    /// ones billed. `None` on reports stored before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The plan that priced the line. `None` on reports stored before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanId>,
    /// The catalogue version that priced the line: its number, or `file` / `builtin` when
    /// no stored version was in force. `None` on reports stored before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalogue_version: Option<String>,
    /// The org's price overrides that changed the line (see `tally_core::overrides`);
    /// empty when it is at the plan's list price (and on reports stored before).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<OverrideId>,
}

/// A correction for a closed period, carried on a later report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdjustmentLine {
    /// The closed period the correction belongs to.
    pub period: Month,
    /// The meter.
    pub meter: MeterName,
    /// Why (for example "3 events applied after 2026-10 closed").
    pub reason: String,
    /// The quantity the closed period's invoice was computed from.
    #[serde(with = "rust_decimal::serde::str")]
    pub invoiced_quantity: Decimal,
    /// The quantity including the late events.
    #[serde(with = "rust_decimal::serde::str")]
    pub corrected_quantity: Decimal,
    /// Corrected line's list amount minus the invoiced line's.
    pub list_amount: Money,
    /// Corrected line's discount minus the invoiced line's.
    pub discount: Money,
    /// Corrected line's amount minus the invoiced line's: what is added to this invoice.
    pub amount: Money,
}

/// One project's share of one line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectLine {
    /// The meter.
    pub meter: MeterName,
    /// The project's month quantity (its weight in the split).
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    /// Its share of the line's amount.
    pub amount: Money,
}

/// One project's share of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectAllocation {
    /// The project.
    pub project_id: ProjectId,
    /// Its share of each line it used.
    pub lines: Vec<ProjectLine>,
    /// The sum of its shares.
    pub amount: Money,
}

/// One org's priced month, in the shape the contract gives for `tally bill`. Money and
/// quantities serialize as decimal strings in major units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    /// The organization.
    pub org_id: OrgId,
    /// The month, `YYYY-MM`.
    pub period: Month,
    /// The plan it was priced on.
    pub plan: PlanId,
    /// Always `usd`.
    pub currency: String,
    /// The plan's flat monthly fee (never discounted, not allocated to projects).
    pub flat_fee: Money,
    /// One line per meter the plan prices, in meter-name order.
    pub lines: Vec<ReportLine>,
    /// Corrections for closed periods (late events), added by month close.
    pub adjustments: Vec<AdjustmentLine>,
    /// Per-project shares of the lines, by project id.
    pub projects: Vec<ProjectAllocation>,
    /// `total − Σ projects.amount`: the flat fee, adjustments and anything no project used.
    pub unallocated: Money,
    /// `flat_fee + Σ list_amount` over lines and adjustments.
    pub subtotal: Money,
    /// `Σ discount` over lines and adjustments.
    pub discount: Money,
    /// `subtotal − discount`: what the invoice comes to.
    pub total: Money,
    /// The catalogue version that priced the month (a number, `file` or `builtin`). `None`
    /// on reports stored before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalogue_version: Option<String>,
    /// Every price override that applied to the month (the fee's, the discount's and the
    /// lines'); empty when none did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<OverrideId>,
    /// Per `time_weighted_sum` meter of the month's catalogue, each project's closing
    /// reading (the reading held at the month's end), recorded by month close and read
    /// back as the next month's carry-ins (`tally_core::ports::time_weighted_month`). An
    /// entry for every such meter, empty when nothing was read or carried; left out of
    /// reports without such meters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub closing_readings: crate::ports::ClosingReadings,
}

/// Rounds an exact amount to the cent, half away from zero, and shows two decimals. The
/// one rounding an invoice line gets.
pub fn round_to_cents(exact: Decimal) -> Money {
    let mut d = exact.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    d.rescale(2);
    Money::new(d)
}

fn cents(d: Decimal) -> Money {
    let mut d = d;
    d.rescale(2);
    Money::new(d)
}

fn invalid(meter: &MeterName, reason: impl Into<String>) -> PricingError {
    PricingError::Invalid {
        meter: meter.clone(),
        reason: reason.into(),
    }
}

/// Prices one meter's month quantity on a plan's price with a discount (percent, 0–100).
/// See the module docs for the steps.
pub fn price_line(
    price: &MeterPrice,
    quantity: Decimal,
    discount_percent: Decimal,
) -> Result<ReportLine, PricingError> {
    let meter = &price.meter;
    if quantity < Decimal::ZERO {
        return Err(PricingError::NegativeQuantity {
            meter: meter.clone(),
            quantity,
        });
    }
    if discount_percent < Decimal::ZERO || discount_percent > Decimal::ONE_HUNDRED {
        return Err(invalid(
            meter,
            format!("discount {discount_percent} % is outside 0–100 %"),
        ));
    }
    if price.price_unit_size <= Decimal::ZERO {
        return Err(invalid(meter, "price_unit_size must be positive"));
    }
    let included = price.included.unwrap_or(Decimal::ZERO);
    let billable = quantity
        .checked_sub(included)
        .ok_or_else(|| invalid(meter, "quantity out of range"))?
        .max(Decimal::ZERO);
    let billable_price_units = billable
        .checked_div(price.price_unit_size)
        .ok_or_else(|| invalid(meter, "quantity out of range"))?;
    if billable_price_units.checked_mul(price.price_unit_size) != Some(billable) {
        return Err(invalid(
            meter,
            format!(
                "{billable} {} do not convert exactly into units of {}",
                price.unit, price.price_unit_size
            ),
        ));
    }
    let billable_price_units = billable_price_units.normalize();
    let priced = price
        .pricing
        .price(billable_price_units)
        .map_err(|source| PricingError::Price {
            meter: meter.clone(),
            source,
        })?;
    let factor = (Decimal::ONE_HUNDRED - discount_percent) / Decimal::ONE_HUNDRED;
    let discounted = priced
        .amount
        .checked_mul(factor)
        .ok_or_else(|| invalid(meter, "amount out of range"))?;
    let list_amount = round_to_cents(priced.amount);
    let amount = round_to_cents(discounted);
    Ok(ReportLine {
        meter: meter.clone(),
        quantity,
        included,
        billable,
        unit_price: price.pricing.marginal_unit_price(billable_price_units),
        amount,
        tiers: priced.charges,
        description: price.description.clone(),
        unit: price.unit.clone(),
        price_unit: price.price_unit.clone(),
        price_unit_size: price.price_unit_size,
        billable_price_units,
        pricing: price.pricing.clone(),
        exact_amount: priced.amount,
        list_amount,
        discount_percent,
        discount: cents(list_amount.amount() - amount.amount()),
        event_count: None,
        digest: None,
        plan: None,
        catalogue_version: None,
        overrides: Vec::new(),
    })
}

/// Prices one org's month on `plan`: a line per meter the plan prices, the per-project
/// allocation, and the totals. Pure and deterministic: the same input gives the same
/// report. Refuses usage of a meter the plan does not price and negative quantities.
pub fn price_month(
    org_id: OrgId,
    period: Month,
    plan: &PlanSpec,
    usage: &MonthUsage,
) -> Result<UsageReport, PricingError> {
    let project_usage = usage.projects.values().flat_map(|m| m.iter());
    for (meter, quantity) in usage.meters.iter().chain(project_usage) {
        if !plan.meters.contains_key(meter) {
            return Err(PricingError::UnpricedMeter {
                plan: plan.id,
                meter: meter.clone(),
            });
        }
        if *quantity < Decimal::ZERO {
            return Err(PricingError::NegativeQuantity {
                meter: meter.clone(),
                quantity: *quantity,
            });
        }
    }

    let lines = plan
        .meters
        .values()
        .map(|price| {
            let quantity = usage
                .meters
                .get(&price.meter)
                .copied()
                .unwrap_or(Decimal::ZERO);
            let mut line = price_line(price, quantity, plan.discount_percent)?;
            line.plan = Some(plan.id);
            Ok(line)
        })
        .collect::<Result<Vec<_>, PricingError>>()?;

    let mut projects: Vec<ProjectAllocation> = usage
        .projects
        .keys()
        .map(|id| ProjectAllocation {
            project_id: id.clone(),
            lines: Vec::new(),
            amount: cents(Decimal::ZERO),
        })
        .collect();
    for line in &lines {
        let weights: Vec<Option<Decimal>> = usage
            .projects
            .values()
            .map(|m| m.get(&line.meter).copied())
            .collect();
        let plain: Vec<Decimal> = weights.iter().map(|w| w.unwrap_or(Decimal::ZERO)).collect();
        // No project used the meter: nothing to split by, the amount stays unallocated.
        let shares = allocate_cents(line.amount, &plain);
        for (i, (project, weight)) in projects.iter_mut().zip(&weights).enumerate() {
            let Some(quantity) = weight else { continue };
            let share = shares
                .as_ref()
                .and_then(|s| s.get(i).copied())
                .unwrap_or_else(|| cents(Decimal::ZERO));
            project.amount = project.amount + share;
            project.lines.push(ProjectLine {
                meter: line.meter.clone(),
                quantity: *quantity,
                amount: share,
            });
        }
    }

    let mut report = UsageReport {
        org_id,
        period,
        plan: plan.id,
        currency: CURRENCY.to_owned(),
        flat_fee: cents(plan.monthly_fee.amount()),
        lines,
        adjustments: Vec::new(),
        projects,
        unallocated: Money::ZERO,
        subtotal: Money::ZERO,
        discount: Money::ZERO,
        total: Money::ZERO,
        catalogue_version: None,
        overrides: Vec::new(),
        closing_readings: BTreeMap::new(),
    };
    report.recompute_totals();
    Ok(report)
}

/// The correction for a closed period whose `meter` was invoiced at `invoiced_quantity` but
/// now reads `corrected_quantity` (late events applied): the line recomputed on the closed
/// period's `plan` minus the line as invoiced, in list amount, discount and amount.
pub fn adjustment_line(
    plan: &PlanSpec,
    period: Month,
    meter: &MeterName,
    invoiced_quantity: Decimal,
    corrected_quantity: Decimal,
    reason: impl Into<String>,
) -> Result<AdjustmentLine, PricingError> {
    let price = plan
        .meters
        .get(meter)
        .ok_or_else(|| PricingError::UnpricedMeter {
            plan: plan.id,
            meter: meter.clone(),
        })?;
    let before = price_line(price, invoiced_quantity, plan.discount_percent)?;
    let after = price_line(price, corrected_quantity, plan.discount_percent)?;
    Ok(AdjustmentLine {
        period,
        meter: meter.clone(),
        reason: reason.into(),
        invoiced_quantity,
        corrected_quantity,
        list_amount: cents(after.list_amount.amount() - before.list_amount.amount()),
        discount: cents(after.discount.amount() - before.discount.amount()),
        amount: cents(after.amount.amount() - before.amount.amount()),
    })
}

impl UsageReport {
    /// Adds a correction for a closed period and updates the totals.
    pub fn add_adjustment(&mut self, adjustment: AdjustmentLine) {
        self.adjustments.push(adjustment);
        self.recompute_totals();
    }

    /// Recomputes `subtotal`, `discount`, `total` and `unallocated` from the fee, lines,
    /// adjustments and project shares (all whole cents, so the sums are exact).
    pub fn recompute_totals(&mut self) {
        let fee = self.flat_fee.amount();
        let mut subtotal = fee;
        let mut discount = Decimal::ZERO;
        let mut total = fee;
        for l in &self.lines {
            subtotal += l.list_amount.amount();
            discount += l.discount.amount();
            total += l.amount.amount();
        }
        for a in &self.adjustments {
            subtotal += a.list_amount.amount();
            discount += a.discount.amount();
            total += a.amount.amount();
        }
        let allocated: Decimal = self.projects.iter().map(|p| p.amount.amount()).sum();
        self.subtotal = cents(subtotal);
        self.discount = cents(discount);
        self.total = cents(total);
        self.unallocated = cents(total - allocated);
    }

    /// Every arithmetic rule of the report, checked: each line's tiers sum to its exact
    /// amount, its list amount and amount are that exact amount rounded once (without and
    /// with the discount), its discount is their difference; project shares sum to their
    /// line's amount (or to zero when unallocated); the totals add up. Returns the first
    /// rule broken.
    pub fn check(&self) -> Result<(), String> {
        for l in &self.lines {
            let m = &l.meter;
            let sum: Decimal = l.tiers.iter().map(|t| t.amount).sum();
            if sum != l.exact_amount {
                return Err(format!("{m}: tiers sum to {sum}, not {}", l.exact_amount));
            }
            if round_to_cents(l.exact_amount) != l.list_amount {
                return Err(format!("{m}: list amount is not the exact amount rounded"));
            }
            let factor = (Decimal::ONE_HUNDRED - l.discount_percent) / Decimal::ONE_HUNDRED;
            let discounted = l.exact_amount.checked_mul(factor);
            if discounted.map(round_to_cents) != Some(l.amount) {
                return Err(format!("{m}: amount is not the discounted amount rounded"));
            }
            if l.list_amount.amount() - l.discount.amount() != l.amount.amount() {
                return Err(format!("{m}: list amount − discount ≠ amount"));
            }
            let shares: Decimal = self
                .projects
                .iter()
                .flat_map(|p| p.lines.iter().filter(|pl| &pl.meter == m))
                .map(|pl| pl.amount.amount())
                .sum();
            if !shares.is_zero() && shares != l.amount.amount() {
                return Err(format!(
                    "{m}: project shares sum to {shares}, not {}",
                    l.amount
                ));
            }
        }
        for p in &self.projects {
            let sum: Decimal = p.lines.iter().map(|l| l.amount.amount()).sum();
            if sum != p.amount.amount() {
                return Err(format!(
                    "{}: lines sum to {sum}, not {}",
                    p.project_id, p.amount
                ));
            }
        }
        let mut copy = self.clone();
        copy.recompute_totals();
        if (copy.subtotal, copy.discount, copy.total, copy.unallocated)
            != (self.subtotal, self.discount, self.total, self.unallocated)
        {
            return Err("totals do not add up".to_owned());
        }
        if self.subtotal.amount() - self.discount.amount() != self.total.amount() {
            return Err("subtotal − discount ≠ total".to_owned());
        }
        Ok(())
    }
}
