//! Tally's billing: where metering becomes money.
//!
//! What lives here now, all pure except month close (the only other I/O is reading a
//! catalogue file at load):
//!
//! - [`catalogue`]: the catalogue as the composition root loads it. The catalogue is data,
//!   one file that defines meters, plans with their limits, and prices; core parses and
//!   validates it ([`tally_core::catalogue`], built in as `core/catalogue.json`, errors
//!   that name the plan, meter and field). [`Catalogue::builtin`] or [`Catalogue::load`]
//!   gives the one catalogue whose views are core's [`tally_core::Plan`]s and
//!   [`tally_core::MeterCatalogue`] (what ingest and the API enforce) and the priced plans
//!   billing charges with, so limits and prices cannot disagree.
//! - [`versions`]: the catalogue versions the operator publishes (`tally catalogue apply`)
//!   and which one prices a month; the versioning rule is its module doc.
//! - [`pricing`]: the price models (per unit, package, graduated and volume tiers), exact in
//!   `rust_decimal`, never floats; they live in core beside the catalogue.
//! - [`report`]: [`price_month`] turns a plan and an org's month quantities into a
//!   [`UsageReport`] (the shape `tally bill` prints): a line per meter with its tier
//!   breakdown, the discount on usage, each line rounded once to the cent, per-project
//!   allocation, totals, and room for adjustment lines.
//! - [`allocate`]: the largest-remainder split that makes project shares add up to the cent.
//! - [`close`]: month close, the one piece here that does I/O, and only through the ports
//!   in `tally-core` (so it runs on SQLite and DynamoDB alike) with time from a `Clock`:
//!   [`close_month`] refuses the current month and the grace period, closes the period so
//!   ingest refuses it, prices each org's month counters and stores the report once, and
//!   turns late events into adjustment lines on the next report. A month bills only the
//!   orgs that existed in it. `tally bill`, the `tally serve` scheduler and the billing
//!   Lambda all run it.
//! - [`digest`]: the event count and entry digest month close records on each new line, so
//!   a customer can audit it against an export of the ledger (`tally verify-report`).
//! - [`schedule`]: which months the schedulers close, oldest first: every ended month
//!   still open since the earliest org was created, at most
//!   [`schedule::MAX_CATCH_UP_MONTHS`] back, so a missed month-end is caught up on the
//!   next run and no month is left open forever.
//! - [`sync`]: the exactly-once Stripe invoice sync of a report, a recorded sequence of
//!   steps (customer, draft invoice, one item per entry, finalize) with idempotency keys
//!   from (org, period, step), results in the [`tally_core::ports::SyncLedger`], through the
//!   [`tally_core::ports::InvoiceProvider`] port (`tally-stripe` is the adapter).
//! - [`period_sync`]: [`sync_period`], the sync of every report of a billed period, which
//!   `tally bill`, the `tally serve` scheduler and the billing Lambda all call.
//! - [`webhook`]: `invoice.paid` / `invoice.payment_failed`, signature checked, recorded in
//!   the sync ledger; [`webhook::router`] is its HTTP route (`POST /v1/stripe/webhook`) for
//!   `tally serve` and the webhook Lambda.
//!
//! - [`fanout`]: billing at scale as per-org work items: the monthly run closes the months
//!   due and enqueues one (org, period) item per org, consumers bill each item with the
//!   same per-org steps as `tally bill`, and a daily catch-up re-enqueues orgs still
//!   missing a report or an invoice (the billing Lambda's queue).
//! - [`alerts`]: plan-limit alerts at 80 % and 100 % of each allowance, claimed once per
//!   threshold and month in the [`tally_core::ports::AlertLedger`] outbox and sent through
//!   the [`alerts::AlertSender`] port (`tally-notify` is the signed-webhook adapter).
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

pub mod alerts;
pub mod allocate;
pub mod catalogue;
pub mod close;
pub mod digest;
pub mod error;
pub mod fanout;
pub mod period_sync;
/// The price models, which live in core beside the catalogue that names them.
pub use tally_core::pricing;
pub mod report;
pub mod schedule;
pub mod sync;
pub mod versions;
pub mod webhook;

pub use catalogue::{BUILTIN_JSON, CURRENCY, Catalogue, MeterPrice, MeterSpec, PlanSpec};
pub use close::{
    CloseError, CloseOutcome, ClosePorts, CloseRequest, NoProgress, OrgError, Progress, close_month,
};
pub use error::{CatalogueError, PricingError, Problem};
pub use period_sync::{
    OrgSync, PeriodSync, PeriodSyncOptions, PeriodSyncPorts, sync_org_report, sync_period,
};
pub use pricing::{PriceError, Pricing, Tier, TierCharge};
pub use report::{
    AdjustmentLine, MonthUsage, ProjectAllocation, ProjectLine, ReportLine, UsageReport,
    adjustment_line, price_line, price_month, round_to_cents,
};
pub use sync::{
    FinalizeRecord, InvoiceSync, PlannedItem, RetryPolicy, Sleeper, SyncError, SyncOutcome,
    SyncStep, idempotency_key, planned_items,
};
