//! Tally's billing: where metering becomes money.
//!
//! What lives here now, all pure (the only I/O is reading a catalogue file at load):
//!
//! - [`catalogue`]: the plan catalogue as data. `billing/plans.toml` is the built-in
//!   default ([`Catalogue::builtin`]); [`Catalogue::load`] reads a replacement. It is
//!   validated at load with errors that name the plan, meter and field, and it converts to
//!   core's [`tally_core::Plan`] and [`tally_core::MeterCatalogue`] (what ingest and the
//!   API enforce), so limits and prices come from one file.
//! - [`pricing`]: the price models (per unit, package, graduated and volume tiers), exact in
//!   `rust_decimal`, never floats.
//! - [`report`]: [`price_month`] turns a plan and an org's month quantities into a
//!   [`UsageReport`] (the shape `tally bill` prints): a line per meter with its tier
//!   breakdown, the discount on usage, each line rounded once to the cent, per-project
//!   allocation, totals, and room for adjustment lines.
//! - [`allocate`]: the largest-remainder split that makes project shares add up to the cent.
//!
//! What comes later, on top of this and written against the ports in `tally-core` so it runs
//! on SQLite and DynamoDB alike: month close (refusing the current month and the grace
//! period, closing the period so ingest refuses it, reading the month counters, turning
//! late events into adjustment lines), plan-limit alerts, and the exactly-once Stripe
//! invoice sync with its ledger of steps.
//!
//! Money rules, from the design: amounts stay exact through every step; a percentage
//! discount applies to the exact usage amount, never to the flat fee; each invoice line is
//! rounded once, to the cent, half away from zero; subtotal, discount and total are sums of
//! cent amounts and agree to the cent. See [`report`] for where each step happens.
//!
//! ```
//! use std::collections::BTreeMap;
//! use rust_decimal::Decimal;
//! use tally_billing::{Catalogue, MonthUsage};
//! use tally_core::{MeterName, Month, OrgId, PlanId};
//!
//! let catalogue = Catalogue::builtin()?;
//! let usage = MonthUsage {
//!     // 250,000 calls on starter: 150,000 over the allowance at $0.50 per 1,000 = $75.00,
//!     // 10 % off = $67.50, plus the $29.00 fee.
//!     meters: BTreeMap::from([(MeterName::parse("api_calls")?, Decimal::from(250_000))]),
//!     projects: BTreeMap::new(),
//! };
//! let report = catalogue.price_month(
//!     OrgId::parse("org_acme")?,
//!     Month::parse("2026-10")?,
//!     PlanId::Starter,
//!     &usage,
//! )?;
//! assert_eq!(report.total.to_string(), "96.50");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod allocate;
pub mod catalogue;
pub mod error;
pub mod pricing;
pub mod report;

pub use catalogue::{BUILTIN_TOML, CURRENCY, Catalogue, MeterPrice, MeterSpec, PlanSpec};
pub use error::{CatalogueError, PricingError, Problem};
pub use pricing::{PriceError, Pricing, Tier, TierCharge};
pub use report::{
    AdjustmentLine, MonthUsage, ProjectAllocation, ProjectLine, ReportLine, UsageReport,
    adjustment_line, price_line, price_month, round_to_cents,
};
