//! Per-org price overrides: a negotiated contract on top of the catalogue's plan.
//!
//! An operator gives one org a different price or allowance than its plan's list price
//! (`tally org override set`): a flat monthly fee, the discount on usage, a meter's
//! included quantity, or a meter's whole price (per unit, package, graduated, volume). Each
//! [`PriceOverride`] names the plan it was negotiated on and the months it covers; month
//! close and the upcoming invoice both price through [`apply_overrides`], so the preview
//! and the closed month cannot disagree. It lives in core (pure, no I/O) for that reason:
//! the two capability crates that price may not depend on each other.
//!
//! # Which months an override covers
//!
//! `start` is the first month it applies to (inclusive); `end`, when set, is the first
//! month it **no longer** applies to (exclusive), so `start 2026-07, end 2026-09` covers
//! July and August, and an override is ended "from September" by setting `end 2026-09`.
//! Exclusive ends chain without gaps or overlaps: a follow-up contract starts where the
//! previous one ends. `end = start` covers no month: an override cancelled before it began.
//!
//! An override applies to a month only while the org is billed on the override's `plan`
//! in that month ([`crate::plan::billed_plan`]): the contract was negotiated on that plan's
//! meters, and a plan change is a new contract.
//!
//! # Who wins
//!
//! Several overrides may cover one month. They are applied oldest first (`created_at`, then
//! id), so for the same target (the fee, the discount, one meter's allowance or price) the
//! newest wins and the ids of the ones that took effect are recorded on the report lines
//! (see [`PricedPlan`]).
//!
//! # What cannot happen
//!
//! A closed month is never re-priced: month close returns a stored report as stored, and
//! the operator commands refuse a `start` or `end` before the current month or in a closed
//! one, so no override can reach back into a billed month. No tenant route creates, edits
//! or ends an override.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::catalogue::{MeterPrice, PlanSpec};
use crate::pricing::Pricing;
use crate::report::{PricingError, UsageReport};
// The id lives with the other ids: the report names the overrides that priced it, and
// this module prices reports, so the id here would make the two import each other.
pub use crate::ids::OverrideId;
use crate::{MeterName, Money, Month, OrgId, PlanId};

/// Largest number of overrides one org may carry (ended ones included): a contract has a
/// handful, and month close reads them all for every month it prices.
pub const MAX_OVERRIDES_PER_ORG: usize = 100;

/// Longest `reason`, in bytes.
pub const MAX_REASON_BYTES: usize = 256;

/// Longest `created_by`, in bytes.
pub const MAX_CREATED_BY_BYTES: usize = 128;

/// Largest encoded [`OverrideChange`] (a price table), in bytes.
pub const MAX_CHANGE_BYTES: usize = 16 * 1024;

/// Most tiers a graduated or volume override may have.
pub const MAX_OVERRIDE_TIERS: usize = 32;

/// What an override changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OverrideChange {
    /// The plan's flat monthly fee (whole cents, >= 0).
    MonthlyFee {
        /// The fee.
        amount: Money,
    },
    /// The discount off usage amounts, in percent (0 to 100).
    DiscountPercent {
        /// The percentage.
        #[serde(with = "rust_decimal::serde::str")]
        percent: Decimal,
    },
    /// One meter's monthly allowance, in the meter's unit (>= 0).
    Included {
        /// The meter.
        meter: MeterName,
        /// The allowance.
        #[serde(with = "rust_decimal::serde::str")]
        quantity: Decimal,
    },
    /// One meter's price above the allowance, in the plan's price units of that meter.
    Price {
        /// The meter.
        meter: MeterName,
        /// The price.
        pricing: Pricing,
    },
}

impl OverrideChange {
    /// The meter it changes, if it changes one.
    pub fn meter(&self) -> Option<&MeterName> {
        match self {
            OverrideChange::Included { meter, .. } | OverrideChange::Price { meter, .. } => {
                Some(meter)
            }
            _ => None,
        }
    }

    /// What it targets, for "the newest wins": `fee`, `discount`, `included:<meter>`,
    /// `price:<meter>`.
    pub fn target(&self) -> String {
        match self {
            OverrideChange::MonthlyFee { .. } => "fee".into(),
            OverrideChange::DiscountPercent { .. } => "discount".into(),
            OverrideChange::Included { meter, .. } => format!("included:{meter}"),
            OverrideChange::Price { meter, .. } => format!("price:{meter}"),
        }
    }
}

/// One org's override of one price or allowance, for a range of months.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceOverride {
    /// Its id.
    pub id: OverrideId,
    /// The org it belongs to.
    pub org_id: OrgId,
    /// The plan it was negotiated on; it applies only in months billed on this plan.
    pub plan: PlanId,
    /// What it changes.
    pub change: OverrideChange,
    /// The first month it applies to (inclusive).
    pub start: Month,
    /// The first month it no longer applies to (exclusive); `None`: open-ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Month>,
    /// Why (the contract's reference), at most [`MAX_REASON_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who set it (`cli`), at most [`MAX_CREATED_BY_BYTES`].
    pub created_by: String,
    /// When it was set.
    pub created_at: DateTime<Utc>,
}

impl PriceOverride {
    /// Whether it covers `month` (`start <= month < end`).
    pub fn covers(&self, month: Month) -> bool {
        self.start <= month && self.end.is_none_or(|end| month < end)
    }
}

/// Why an override is refused, naming the field. The CLI prints it and exits non-zero; a
/// store refusing one on write answers [`crate::ports::StoreError::Corrupt`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct OverrideError {
    /// The field at fault (`meter`, `price.tiers[1].up_to`, `end`, ...).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl OverrideError {
    fn field(field: impl Into<String>, message: impl Into<String>) -> OverrideError {
        OverrideError {
            field: field.into(),
            message: message.into(),
        }
    }
}

fn whole_cents(d: Decimal) -> bool {
    (d * Decimal::ONE_HUNDRED).fract().is_zero()
}

/// Checks an override's own bounds (no plan needed): the month range, the text fields, the
/// change's numbers and size. Stores run it before they write.
pub fn check_override(o: &PriceOverride) -> Result<(), OverrideError> {
    if let Some(end) = o.end
        && end < o.start
    {
        return Err(OverrideError::field(
            "end",
            format!(
                "{end} must not be before start {} (end is the first month no longer \
                 covered; end = start cancels an override before it begins)",
                o.start
            ),
        ));
    }
    if o.created_by.is_empty()
        || o.created_by.len() > MAX_CREATED_BY_BYTES
        || o.created_by.chars().any(char::is_control)
    {
        return Err(OverrideError::field(
            "created_by",
            format!("must be 1 to {MAX_CREATED_BY_BYTES} bytes without control characters"),
        ));
    }
    if let Some(r) = &o.reason
        && (r.is_empty() || r.len() > MAX_REASON_BYTES || r.chars().any(char::is_control))
    {
        return Err(OverrideError::field(
            "reason",
            format!("must be 1 to {MAX_REASON_BYTES} bytes without control characters"),
        ));
    }
    match &o.change {
        OverrideChange::MonthlyFee { amount } => {
            let a = amount.amount();
            if a < Decimal::ZERO || !whole_cents(a) {
                return Err(OverrideError::field(
                    "monthly_fee",
                    format!("{a} must be >= 0 and whole cents"),
                ));
            }
        }
        OverrideChange::DiscountPercent { percent } => {
            if *percent < Decimal::ZERO || *percent > Decimal::ONE_HUNDRED {
                return Err(OverrideError::field(
                    "discount_percent",
                    format!("{percent} is outside 0 to 100"),
                ));
            }
        }
        OverrideChange::Included { quantity, .. } => {
            if *quantity < Decimal::ZERO {
                return Err(OverrideError::field(
                    "included",
                    format!("{quantity} must not be negative"),
                ));
            }
        }
        OverrideChange::Price { pricing, .. } => {
            if let Pricing::Graduated { tiers } | Pricing::Volume { tiers } = pricing
                && tiers.len() > MAX_OVERRIDE_TIERS
            {
                return Err(OverrideError::field(
                    "price.tiers",
                    format!("at most {MAX_OVERRIDE_TIERS} tiers, got {}", tiers.len()),
                ));
            }
            if let Some(p) = pricing.problems().first() {
                return Err(OverrideError::field(
                    format!("price.{}", p.field),
                    p.message.clone(),
                ));
            }
        }
    }
    let size = serde_json::to_string(&o.change).map_or(usize::MAX, |s| s.len());
    if size > MAX_CHANGE_BYTES {
        return Err(OverrideError::field(
            "change",
            format!("is {size} bytes encoded; at most {MAX_CHANGE_BYTES}"),
        ));
    }
    Ok(())
}

/// Checks an override against the plan it is set on: its bounds ([`check_override`]), the
/// plan is the override's, and a meter it names is one the plan prices.
pub fn check_override_on(o: &PriceOverride, plan: &PlanSpec) -> Result<(), OverrideError> {
    check_override(o)?;
    if plan.id != o.plan {
        return Err(OverrideError::field(
            "plan",
            format!("the override is for {}, not {}", o.plan, plan.id),
        ));
    }
    if let Some(meter) = o.change.meter()
        && !plan.meters.contains_key(meter)
    {
        return Err(OverrideError::field(
            "meter",
            format!(
                "plan {} has no price for meter {meter} (it prices: {})",
                plan.id,
                plan.meters
                    .keys()
                    .map(MeterName::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    Ok(())
}

/// A plan with an org's overrides for one month applied, and where each price came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedPlan {
    /// The plan as priced: the catalogue's, with the overrides applied.
    pub spec: PlanSpec,
    /// Which catalogue priced it: the version number, or `file` / `builtin` when no stored
    /// version is in force.
    pub catalogue_version: String,
    /// The overrides that changed the fee or the discount (report level).
    pub plan_overrides: Vec<OverrideId>,
    /// Per meter, the overrides that changed its line (its allowance, its price, or the
    /// discount every line gets).
    pub meter_overrides: BTreeMap<MeterName, Vec<OverrideId>>,
}

impl PricedPlan {
    /// The catalogue's plan as is, with no override.
    pub fn list(spec: &PlanSpec, catalogue_version: impl Into<String>) -> PricedPlan {
        PricedPlan {
            spec: spec.clone(),
            catalogue_version: catalogue_version.into(),
            plan_overrides: Vec::new(),
            meter_overrides: BTreeMap::new(),
        }
    }

    /// The price of `meter` for override `id` to change, with `id` recorded among the
    /// meter's overrides; `None` when the plan does not price `meter`.
    fn overridden_price(&mut self, meter: &MeterName, id: &OverrideId) -> Option<&mut MeterPrice> {
        let price = self.spec.meters.get_mut(meter)?;
        add_override(&mut self.meter_overrides, meter, id);
        Some(price)
    }

    /// Writes where the report's prices came from on it and on each of its lines: the plan,
    /// the catalogue version, and the overrides that applied.
    pub fn stamp(&self, report: &mut UsageReport) {
        report.catalogue_version = Some(self.catalogue_version.clone());
        let mut all: Vec<OverrideId> = self.plan_overrides.clone();
        for line in &mut report.lines {
            line.plan = Some(self.spec.id);
            line.catalogue_version = Some(self.catalogue_version.clone());
            line.overrides = self
                .meter_overrides
                .get(&line.meter)
                .cloned()
                .unwrap_or_default();
            all.extend(line.overrides.iter().cloned());
        }
        all.sort();
        all.dedup();
        report.overrides = all;
    }
}

/// Records that override `id` changed `meter`'s line.
fn add_override(
    meter_overrides: &mut BTreeMap<MeterName, Vec<OverrideId>>,
    meter: &MeterName,
    id: &OverrideId,
) {
    meter_overrides
        .entry(meter.clone())
        .or_default()
        .push(id.clone());
}

/// The plan `base` (the catalogue's, for the plan the org is billed on in `month`) with
/// every override of `overrides` that covers `month` and is for that plan applied, oldest
/// first (the newest wins per target). An override naming a meter the plan no longer
/// prices is refused ([`PricingError::Invalid`]), never skipped: month close reports the
/// org and the operator ends the override.
pub fn apply_overrides(
    base: &PlanSpec,
    catalogue_version: &str,
    overrides: &[PriceOverride],
    month: Month,
) -> Result<PricedPlan, PricingError> {
    let mut out = PricedPlan::list(base, catalogue_version);
    let mut active: Vec<&PriceOverride> = overrides
        .iter()
        .filter(|o| o.plan == base.id && o.covers(month))
        .collect();
    active.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    // The newest override per target is the one in force.
    let mut winners: BTreeMap<String, &PriceOverride> = BTreeMap::new();
    for o in active {
        winners.insert(o.change.target(), o);
    }
    let mut discount: Option<&OverrideId> = None;
    for o in winners.values() {
        let missing = |meter: &MeterName| PricingError::Invalid {
            meter: meter.clone(),
            reason: format!(
                "override {} names meter {meter}, which plan {} no longer prices; end the override",
                o.id, base.id
            ),
        };
        match &o.change {
            OverrideChange::MonthlyFee { amount } => {
                out.spec.monthly_fee = *amount;
                out.plan_overrides.push(o.id.clone());
            }
            OverrideChange::DiscountPercent { percent } => {
                out.spec.discount_percent = *percent;
                out.plan_overrides.push(o.id.clone());
                discount = Some(&o.id);
            }
            OverrideChange::Included { meter, quantity } => {
                let price = out.overridden_price(meter, &o.id);
                price.ok_or_else(|| missing(meter))?.included = Some(*quantity);
            }
            OverrideChange::Price { meter, pricing } => {
                let price = out.overridden_price(meter, &o.id);
                price.ok_or_else(|| missing(meter))?.pricing = pricing.clone();
            }
        }
    }
    if let Some(id) = discount {
        for meter in out.spec.meters.keys() {
            add_override(&mut out.meter_overrides, meter, id);
        }
    }
    for ids in out.meter_overrides.values_mut() {
        ids.sort();
        ids.dedup();
    }
    out.plan_overrides.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::Catalogue;

    fn m(s: &str) -> Month {
        Month::parse(s).unwrap()
    }

    fn ovr(n: u8, change: OverrideChange, start: &str, end: Option<&str>) -> PriceOverride {
        PriceOverride {
            id: OverrideId::from_random([n; 8]),
            org_id: OrgId::parse("org_test").unwrap(),
            plan: PlanId::Pro,
            change,
            start: m(start),
            end: end.map(m),
            reason: None,
            created_by: "cli".into(),
            created_at: DateTime::UNIX_EPOCH + chrono::Duration::seconds(i64::from(n)),
        }
    }

    fn api_calls() -> MeterName {
        MeterName::parse("api_calls").unwrap()
    }

    #[test]
    fn the_end_month_is_exclusive() {
        let o = ovr(
            1,
            OverrideChange::DiscountPercent {
                percent: Decimal::TEN,
            },
            "2026-07",
            Some("2026-09"),
        );
        assert!(!o.covers(m("2026-06")));
        assert!(o.covers(m("2026-07")));
        assert!(o.covers(m("2026-08")));
        assert!(!o.covers(m("2026-09")));
    }

    #[test]
    fn the_newest_override_of_a_target_wins_and_is_recorded() {
        let catalogue = Catalogue::builtin().unwrap();
        let pro = catalogue.plan(PlanId::Pro);
        let older = ovr(
            1,
            OverrideChange::Included {
                meter: api_calls(),
                quantity: Decimal::from(5),
            },
            "2026-01",
            None,
        );
        let newer = ovr(
            2,
            OverrideChange::Included {
                meter: api_calls(),
                quantity: Decimal::from(7),
            },
            "2026-01",
            None,
        );
        // Listed newest first, applied oldest first all the same.
        let priced = apply_overrides(pro, "3", &[newer.clone(), older], m("2026-02")).unwrap();
        assert_eq!(
            priced.spec.meters[&api_calls()].included,
            Some(Decimal::from(7))
        );
        assert_eq!(priced.meter_overrides[&api_calls()], vec![newer.id]);
        // Not on the override's plan: nothing applies.
        let starter = catalogue.plan(PlanId::Starter);
        let other = apply_overrides(
            starter,
            "3",
            &[ovr(
                3,
                OverrideChange::MonthlyFee {
                    amount: Money::new(Decimal::ONE),
                },
                "2026-01",
                None,
            )],
            m("2026-02"),
        )
        .unwrap();
        assert_eq!(other.spec, *starter);
    }

    #[test]
    fn bounds_are_checked_naming_the_field() {
        let catalogue = Catalogue::builtin().unwrap();
        let pro = catalogue.plan(PlanId::Pro);
        let cases = [
            (
                ovr(
                    1,
                    OverrideChange::MonthlyFee {
                        amount: Money::new(Decimal::new(1001, 3)),
                    },
                    "2026-01",
                    None,
                ),
                "monthly_fee",
            ),
            (
                ovr(
                    1,
                    OverrideChange::DiscountPercent {
                        percent: Decimal::from(101),
                    },
                    "2026-01",
                    None,
                ),
                "discount_percent",
            ),
            (
                ovr(
                    1,
                    OverrideChange::Included {
                        meter: MeterName::parse("llm_tokens").unwrap(),
                        quantity: Decimal::ONE,
                    },
                    "2026-01",
                    None,
                ),
                "meter",
            ),
            (
                ovr(
                    1,
                    OverrideChange::Price {
                        meter: api_calls(),
                        pricing: Pricing::PerUnit {
                            unit_price: Decimal::NEGATIVE_ONE,
                        },
                    },
                    "2026-01",
                    None,
                ),
                "price.unit_price",
            ),
            (
                ovr(
                    1,
                    OverrideChange::DiscountPercent {
                        percent: Decimal::ONE,
                    },
                    "2026-03",
                    Some("2026-02"),
                ),
                "end",
            ),
        ];
        for (bad, field) in cases {
            let e = check_override_on(&bad, pro).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        assert!(OverrideId::parse("ovr_0123456789abcdef").is_ok());
        assert_eq!(OverrideId::parse("ovr_XYZ").unwrap_err().field(), "id");
    }
}
