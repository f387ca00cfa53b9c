//! Month close: turning a finished month into one stored [`UsageReport`] per org.
//!
//! [`close_month`] is the one implementation behind `tally bill` and the scheduler in
//! `tally serve` (and the scheduled Lambda to come). It does all its I/O through the ports
//! in [`tally_core::ports`] and takes the time from a [`Clock`], so it runs the same on
//! SQLite and DynamoDB and tests pin the time.
//!
//! # Steps
//!
//! 1. **Refuse what has not ended.** The current month (or a later one) is refused, and so
//!    is an ended month still inside its grace period (`[end, end + grace)`, one hour by
//!    default): events stamped inside a month may still be on their way, and the grace
//!    period is the time they get.
//! 2. **Close the period** ([`UsageStore::close_period`], idempotent). From then on ingest
//!    refuses events for it (`period_closed`), after at most its cache of open periods (a
//!    few seconds).
//! 3. **Build and store the report of each org that existed in the month.** An org is
//!    billed for a month only if it existed during it: created before the month ended and
//!    not deleted before it began ([`existed_in`]). An org created later has nothing to
//!    bill for the month (no usage, and no flat fee for a month it never had); an org
//!    deleted before the month began is done being billed (its last month was the one it
//!    was deleted in, billed in full). Such orgs are left out of the run
//!    ([`CloseOutcome::not_in_period`] counts them), and `--org` naming one is refused
//!    ([`CloseError::OrgNotInPeriod`]). The org is read once, before its stored report, so
//!    a report stored for such an org by an earlier version is left in the store untouched
//!    but no longer returned (nor synced).
//!
//!    The month is priced with the catalogue version in force for it
//!    ([`crate::versions::catalogue_for`], read through [`ClosePorts::versions`] by every
//!    caller: `tally bill`, `tally serve`'s scheduler and the billing Lambda), else the file
//!    or built-in catalogue the caller passes, on the plan the org is billed on
//!    ([`billed_plan`]), with the org's price overrides covering the month applied
//!    ([`tally_core::overrides::apply_overrides`], the upcoming invoice's code too). Every
//!    line records the plan, the catalogue version (`3`, `file` or `builtin`) and the
//!    overrides that priced it.
//!
//!    If the org has a stored report for the month,
//!    that is the report: it is returned as stored and nothing is recomputed, so a rerun
//!    prints the same reports and never changes what an invoice was built from. Otherwise
//!    the org's month counters (org-wide and per project) are priced on its plan with
//!    [`price_month`], late usage of earlier months is added as adjustment lines (below),
//!    and the report is saved with [`ReportStore::save_report`], whose first write wins: of
//!    two runs racing, both return the report stored first.
//!
//! One org failing (a store error, a meter its plan does not price) does not stop the
//! others; the run reports which failed, and a rerun bills just those (the rest are stored).
//! A dry run does steps 1 and 3 without writing anything: no close, no save.
//!
//! # Late events become adjustments
//!
//! Closing a period stops ingest from accepting its events, but events ingest accepted just
//! before (in the queue, or accepted while ingest still had the month cached as open) are
//! applied by the aggregator afterwards, possibly after the report was stored. Their usage
//! is real and must be billed, but the report (and so the invoice) of the closed month
//! never changes. Instead, when the report of a later month is built, each of the org's
//! stored reports of the [`ADJUSTMENT_LOOKBACK_MONTHS`] months before it is compared with
//! that month's counters as they are now:
//!
//! - For each line, the quantity billed so far is the line's quantity, or the
//!   `corrected_quantity` of the latest adjustment for that (month, meter) on a report
//!   between the two (so usage already adjusted once is not billed twice).
//! - If the month counter now differs, an [`AdjustmentLine`] is added: the line priced again
//!   with the corrected quantity minus the line priced with the quantity billed so far,
//!   both with the closed month's own prices, allowance and discount (taken from its stored
//!   line, not from today's catalogue). The adjustments of a month telescope: whatever
//!   order the late events came in, the month is billed in total exactly what its final
//!   quantity costs.
//!
//! A `time_weighted_sum` line (value × hours, which its counter, the latest reading, cannot
//! check) is priced again from the readings stored now instead: the month's cells, carried
//! in from the last reading of the month before, else that month's recorded closing
//! reading. So a reading applied after its month closed (a replayed dead letter, queue lag
//! past the grace period) adjusts its month like a late event; and the month after takes
//! its carry-in the same way ([`month_carry_ins`]), so the reading moves that month's bill
//! too.
//!
//! This needs no extra bookkeeping on the hot path: the counters already hold the truth,
//! and the stored reports hold what was billed. It reads one counter series per line of
//! each looked-back report. The lookback bounds that work; late events come within seconds
//! or minutes of a close, so three months is ample.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rust_decimal::Decimal;
use tally_core::counter::checked_sum;
use tally_core::overrides::apply_overrides;
use tally_core::plan::billed_plan;
use tally_core::ports::{
    CarryIns, CatalogueStore, Clock, ClosingReadings, CounterQuery, MAX_REPORT_BODY_BYTES,
    OrgStore, OverrideStore, ReportStore, StoreError, StoredReport, UsageStore, carry_ins_after,
    keeps_readings, month_carry_ins, month_counters, month_totals, time_weighted_month,
};
use tally_core::tenant::Org;
use tally_core::{Granularity, MeterName, Money, Month, OrgId};

use crate::catalogue::{Catalogue, MeterPrice};
use crate::error::PricingError;
use crate::report::{AdjustmentLine, MonthUsage, UsageReport, price_line, price_month};
use crate::versions::{VersionError, Versioned, catalogue_for};

/// The grace period when none is given: one hour after a month ends.
pub const DEFAULT_GRACE: Duration = Duration::hours(1);

/// The longest grace period accepted: a week, the same week after which ingest takes no
/// more events for a month ([`tally_core::period::MAX_LATE_WINDOW`]). A longer one would
/// leave a month open for late events well into the next month's billing.
pub const MAX_GRACE: Duration = tally_core::period::MAX_LATE_WINDOW;

/// How many months before the one being billed are checked for late usage.
pub const ADJUSTMENT_LOOKBACK_MONTHS: usize = 3;

/// The ports month close works through. Capability code, so no adapter in sight.
#[derive(Clone, Copy)]
pub struct ClosePorts<'a> {
    /// Orgs (their plan) and projects.
    pub tenants: &'a dyn OrgStore,
    /// Counters and closed periods.
    pub usage: &'a dyn UsageStore,
    /// Where reports are kept.
    pub reports: &'a dyn ReportStore,
    /// The published catalogue versions: the one in force for the month prices it.
    pub versions: &'a dyn CatalogueStore,
    /// Each org's price overrides.
    pub overrides: &'a dyn OverrideStore,
    /// Where "now" comes from.
    pub clock: &'a dyn Clock,
}

impl<'a> ClosePorts<'a> {
    /// Every store from one backend that holds them all (SQLite, DynamoDB, memory), with
    /// `clock`.
    pub fn of<S>(store: &'a S, clock: &'a dyn Clock) -> Self
    where
        S: OrgStore + UsageStore + ReportStore + CatalogueStore + OverrideStore,
    {
        ClosePorts {
            tenants: store,
            usage: store,
            reports: store,
            versions: store,
            overrides: store,
            clock,
        }
    }
}

/// What to close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    /// The month to bill.
    pub period: Month,
    /// One org only; `None` bills every org.
    pub org: Option<OrgId>,
    /// Compute the reports without closing the period or storing anything.
    pub dry_run: bool,
    /// How long after the month's end it stays open ([`DEFAULT_GRACE`]; at most
    /// [`MAX_GRACE`]).
    pub grace: Duration,
}

impl CloseRequest {
    /// A request to bill every org for `period` with the default grace period.
    pub fn new(period: Month) -> Self {
        CloseRequest {
            period,
            org: None,
            dry_run: false,
            grace: DEFAULT_GRACE,
        }
    }
}

/// Hears about a run's progress (the CLI draws a progress bar with it). Every method
/// defaults to doing nothing.
pub trait Progress: Send + Sync {
    /// The run is about to bill `orgs` orgs.
    fn start(&self, orgs: usize) {
        let _ = orgs;
    }
    /// One org is done (billed or failed).
    fn org_done(&self, org: &OrgId) {
        let _ = org;
    }
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseOutcome {
    /// The month.
    pub period: Month,
    /// Whether it was a dry run (nothing was written).
    pub dry_run: bool,
    /// One report per org, in org id order: the stored one (or, in a dry run, the one that
    /// would be stored).
    pub reports: Vec<UsageReport>,
    /// How many of them this run stored (the rest were stored before, or it was a dry run).
    pub stored_now: usize,
    /// Orgs left out because they did not exist in the month (created after it ended, or
    /// deleted before it began; see [`existed_in`]).
    pub not_in_period: usize,
}

/// Why a month could not be closed. Each variant says what the operator sees.
#[derive(Debug, thiserror::Error)]
pub enum CloseError {
    /// The month has not ended yet: it is the current month or a later one.
    #[error(
        "period {period} has not ended yet (it is now {}); it can be billed from {}",
        rfc3339(.now),
        rfc3339(.billable_from)
    )]
    NotEnded {
        /// The month asked for.
        period: Month,
        /// The clock's now.
        now: DateTime<Utc>,
        /// End of the month plus the grace period.
        billable_from: DateTime<Utc>,
    },
    /// The month has ended but is inside its grace period, still open for late events.
    #[error(
        "period {period} is still inside its grace period of {grace_minutes} minute(s) (it is now {}); it can be billed from {}",
        rfc3339(.now),
        rfc3339(.billable_from)
    )]
    InGracePeriod {
        /// The month asked for.
        period: Month,
        /// The grace period, in minutes.
        grace_minutes: i64,
        /// The clock's now.
        now: DateTime<Utc>,
        /// End of the month plus the grace period.
        billable_from: DateTime<Utc>,
    },
    /// A request field is out of bounds.
    #[error("{field}: {reason}")]
    Invalid {
        /// The offending field (`grace_period`).
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// `--org` names an org that does not exist.
    #[error("no organization {0}")]
    UnknownOrg(OrgId),
    /// `--org` names an org that did not exist during the month (created after it ended, or
    /// deleted before it began): it has nothing to bill for it. Nothing is closed or
    /// stored; `tally bill` exits non-zero with this message.
    #[error(
        "organization {org} did not exist in {period} ({}); there is nothing to bill it for that month",
        lifetime(.created_at, .deleted_at)
    )]
    OrgNotInPeriod {
        /// The org asked for.
        org: OrgId,
        /// The month asked for.
        period: Month,
        /// When the org was created.
        created_at: DateTime<Utc>,
        /// When it was deleted, if it was.
        deleted_at: Option<DateTime<Utc>>,
    },
    /// The store failed before any org was billed (listing orgs, closing the period).
    #[error("{what}: {source}")]
    Store {
        /// What was being done.
        what: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The catalogue version in force for the month could not be read (or no longer
    /// validates); nothing was closed or stored.
    #[error("the catalogue of {period}: {source}")]
    Catalogue {
        /// The month.
        period: Month,
        /// Why.
        #[source]
        source: VersionError,
    },
    /// Some orgs could not be billed; every other org's report is stored, and a rerun
    /// bills the rest.
    #[error("{} of {total} org(s) could not be billed for {period}: {}", failed.len(), join(failed))]
    OrgsFailed {
        /// The month.
        period: Month,
        /// How many orgs the run billed or tried to (those that existed in the month).
        total: usize,
        /// Each failed org with its reason.
        failed: Vec<(OrgId, OrgError)>,
    },
}

fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn lifetime(created_at: &DateTime<Utc>, deleted_at: &Option<DateTime<Utc>>) -> String {
    match deleted_at {
        Some(deleted) => format!(
            "created {}, deleted {}",
            rfc3339(created_at),
            rfc3339(deleted)
        ),
        None => format!("created {}", rfc3339(created_at)),
    }
}

fn join(failed: &[(OrgId, OrgError)]) -> String {
    failed
        .iter()
        .map(|(org, e)| format!("{org}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why one org's report could not be built or stored.
#[derive(Debug, thiserror::Error)]
pub enum OrgError {
    /// The store failed; retrying may help.
    #[error("{what}: {source}")]
    Store {
        /// What was being read or written.
        what: &'static str,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The org disappeared while the run went on.
    #[error("the organization no longer exists")]
    Gone,
    /// The org's usage is too large to sum exactly; this org's report is not made (the run
    /// goes on with the others), and an operator looks at its counters.
    #[error("the month's usage is too large to sum exactly; its counters need a look")]
    Overflow,
    /// The month could not be priced (for example usage of a meter the plan has no price
    /// for).
    #[error("cannot price the month: {0}")]
    Pricing(#[from] PricingError),
    /// A stored report does not decode: a bug or a manual edit.
    #[error("stored report for {period} is unreadable: {reason}")]
    CorruptReport {
        /// Its month.
        period: Month,
        /// The decoder's message.
        reason: String,
    },
    /// The report is too big to store.
    #[error("the report is {bytes} bytes of JSON, over the {MAX_REPORT_BODY_BYTES}-byte limit")]
    TooLarge {
        /// Its size.
        bytes: usize,
    },
}

fn store(what: &'static str) -> impl FnOnce(StoreError) -> OrgError {
    move |source| OrgError::Store { what, source }
}

/// Checks that `period` may be billed at `now` with `grace`.
pub fn check_billable(
    period: Month,
    now: DateTime<Utc>,
    grace: Duration,
) -> Result<(), CloseError> {
    if grace < Duration::zero() || grace > MAX_GRACE {
        return Err(CloseError::Invalid {
            field: "grace_period",
            reason: format!(
                "must be between 0 and {} days, got {} minute(s)",
                MAX_GRACE.num_days(),
                grace.num_minutes()
            ),
        });
    }
    let billable_from = period.end() + grace;
    if now < period.end() {
        return Err(CloseError::NotEnded {
            period,
            now,
            billable_from,
        });
    }
    if now < billable_from {
        return Err(CloseError::InGracePeriod {
            period,
            grace_minutes: grace.num_minutes(),
            now,
            billable_from,
        });
    }
    Ok(())
}

/// Whether `org` existed during `period`, and so is billed for it: created before the month
/// ended and not deleted before it began. An org deleted during the month existed in it and
/// is billed for it in full (there is no proration).
pub fn existed_in(org: &Org, period: Month) -> bool {
    org.created_at < period.end()
        && org
            .deleted_at
            .is_none_or(|deleted| deleted > period.start())
}

/// The month before `now`'s, once its grace period has passed (the month a scheduler
/// bills); `None` while it is still inside the grace period.
pub fn previous_month_if_due(now: DateTime<Utc>, grace: Duration) -> Option<Month> {
    let prev = Month::of(now).prev();
    (now >= prev.end() + grace).then_some(prev)
}

/// Closes the previous month if its grace period has passed and it is still open, without
/// building reports (the scheduled Lambda's step until it runs [`close_month`]). Returns the
/// month if this call closed it; `None` if it was closed already or is not due.
pub async fn close_previous_month_if_due(
    usage: &dyn UsageStore,
    now: DateTime<Utc>,
    grace: Duration,
) -> Result<Option<Month>, StoreError> {
    let Some(prev) = previous_month_if_due(now, grace) else {
        return Ok(None);
    };
    if usage.is_period_closed(prev).await? {
        return Ok(None);
    }
    usage.close_period(prev, now).await?;
    Ok(Some(prev))
}

/// Closes `request.period` and builds and stores each org's report (see the
/// [module doc](self)). Running it again returns the same reports.
pub async fn close_month(
    ports: ClosePorts<'_>,
    catalogue: &Catalogue,
    request: &CloseRequest,
    progress: &dyn Progress,
) -> Result<CloseOutcome, CloseError> {
    let period = request.period;
    let now = ports.clock.now();
    check_billable(period, now, request.grace)?;

    // An org named by `--org` is read (and refused) before anything is closed; the others
    // are read one at a time as they are billed, so each org is read once.
    let orgs: Vec<(OrgId, Option<Org>)> = match &request.org {
        Some(id) => {
            let found = ports
                .tenants
                .get_org(id)
                .await
                .map_err(|source| CloseError::Store {
                    what: format!("cannot read organization {id}"),
                    source,
                })?;
            let Some(org) = found else {
                return Err(CloseError::UnknownOrg(id.clone()));
            };
            if !existed_in(&org, period) {
                return Err(CloseError::OrgNotInPeriod {
                    org: org.id,
                    period,
                    created_at: org.created_at,
                    deleted_at: org.deleted_at,
                });
            }
            vec![(id.clone(), Some(org))]
        }
        None => {
            let mut ids =
                ports
                    .tenants
                    .list_org_ids()
                    .await
                    .map_err(|source| CloseError::Store {
                        what: "cannot list organizations".to_owned(),
                        source,
                    })?;
            ids.sort();
            ids.dedup();
            ids.into_iter().map(|id| (id, None)).collect()
        }
    };

    // The version in force for the month, else `catalogue` (the file or built-in one):
    // read before anything is closed, so a store that cannot say leaves the month open.
    let priced = catalogue_for(ports.versions, catalogue, period)
        .await
        .map_err(|source| CloseError::Catalogue { period, source })?;

    if !request.dry_run {
        ports
            .usage
            .close_period(period, now)
            .await
            .map_err(|source| CloseError::Store {
                what: format!("cannot close period {period}"),
                source,
            })?;
    }

    progress.start(orgs.len());
    let mut reports = Vec::with_capacity(orgs.len());
    let mut failed = Vec::new();
    let mut stored_now = 0;
    let mut not_in_period = 0;
    for (id, org) in orgs {
        let org = match org {
            Some(org) => Ok(org),
            None => read_org(ports.tenants, &id).await,
        };
        let billed = match org {
            Ok(org) if !existed_in(&org, period) => {
                not_in_period += 1;
                None
            }
            Ok(org) => Some(bill_org(ports, &priced, &org, period, request.dry_run, now).await),
            Err(e) => Some(Err(e)),
        };
        match billed {
            None => {}
            Some(Ok((report, new))) => {
                reports.push(report);
                stored_now += usize::from(new);
            }
            Some(Err(e)) => failed.push((id.clone(), e)),
        }
        progress.org_done(&id);
    }
    if !failed.is_empty() {
        return Err(CloseError::OrgsFailed {
            period,
            total: reports.len() + failed.len(),
            failed,
        });
    }
    Ok(CloseOutcome {
        period,
        dry_run: request.dry_run,
        reports,
        stored_now,
        not_in_period,
    })
}

/// One listed org, which must still be there.
async fn read_org(tenants: &dyn OrgStore, id: &OrgId) -> Result<Org, OrgError> {
    tenants
        .get_org(id)
        .await
        .map_err(store("cannot read the organization"))?
        .ok_or(OrgError::Gone)
}

fn decode(stored: &StoredReport) -> Result<UsageReport, OrgError> {
    serde_json::from_str(&stored.body).map_err(|e| OrgError::CorruptReport {
        period: stored.period,
        reason: e.to_string(),
    })
}

/// One org's report for `period`: the stored one, or a new one (stored unless `dry_run`).
/// The flag says whether this call stored it.
///
/// The per-org step of [`close_month`]: its loop over every org calls it for each, and so
/// does a run for one org (`tally bill --org`, the billing queue's consumer through
/// [`crate::fanout::bill_item`]). It neither checks that the period may be billed nor that
/// `org` existed in it ([`check_billable`], [`existed_in`]): [`close_month`] does both
/// first. Idempotent: the first stored report wins and is returned ever after.
pub async fn bill_org(
    ports: ClosePorts<'_>,
    priced: &Versioned,
    org: &Org,
    period: Month,
    dry_run: bool,
    now: DateTime<Utc>,
) -> Result<(UsageReport, bool), OrgError> {
    let org_id = &org.id;
    if let Some(stored) = ports
        .reports
        .get_report(org_id, period)
        .await
        .map_err(store("cannot read the stored report"))?
    {
        return Ok((decode(&stored)?, false));
    }
    // The plan is the highest in force during the month, not the one the org has now:
    // a change just before close cannot reprice the month gone by.
    let history = ports
        .tenants
        .plan_history(org_id)
        .await
        .map_err(store("cannot read the plan history"))?;
    let plan = billed_plan(org.plan, &history, period);
    let mut usage = month_usage(ports.usage, org_id, period).await?;
    let meters = priced.catalogue.meter_catalogue();
    let recorded = previous_closing_readings(ports.reports, org_id, period).await?;
    let carry = month_carry_ins(ports.usage, &meters, org_id, period.prev(), &recorded)
        .await
        .map_err(store("cannot read the month before's readings"))?;
    let closing = time_weighted_month(
        ports.usage,
        &meters,
        org_id,
        period,
        &carry,
        period.end(),
        &mut usage,
    )
    .await
    .map_err(store("cannot read the month's readings"))?;
    let overrides = ports
        .overrides
        .list_overrides(org_id)
        .await
        .map_err(store("cannot read the price overrides"))?;
    let plan = apply_overrides(
        priced.catalogue.plan(plan),
        &priced.label(),
        &overrides,
        period,
    )?;
    let mut report = price_month(org_id.clone(), period, &plan.spec, &usage)?;
    plan.stamp(&mut report);
    report.closing_readings = closing;
    crate::digest::record_line_digests(ports.usage, org_id, period, &mut report.lines)
        .await
        .map_err(store("cannot read the month's ledger"))?;
    for adjustment in late_adjustments(ports, org_id, period).await? {
        report.add_adjustment(adjustment);
    }
    if dry_run {
        return Ok((report, false));
    }
    let body = serde_json::to_string(&report).map_err(|e| OrgError::CorruptReport {
        period,
        reason: format!("cannot encode: {e}"),
    })?;
    if body.len() > MAX_REPORT_BODY_BYTES {
        return Err(OrgError::TooLarge { bytes: body.len() });
    }
    let candidate = StoredReport {
        org_id: org_id.clone(),
        period,
        body,
        created_at: now,
    };
    let stored = ports
        .reports
        .save_report(&candidate)
        .await
        .map_err(store("cannot store the report"))?;
    let new = stored == candidate;
    Ok((decode(&stored)?, new))
}

/// The closing readings month close recorded with the org's report of the month before
/// `period`: this month's carry-ins where that month has no reading of a project (the
/// month's own readings come first, [`month_carry_ins`], so one applied after it closed
/// counts). None without that report (a new org); month close bills months in order, so
/// the report is there when it should be.
async fn previous_closing_readings(
    reports: &dyn ReportStore,
    org: &OrgId,
    period: Month,
) -> Result<ClosingReadings, OrgError> {
    let previous = reports
        .get_report(org, period.prev())
        .await
        .map_err(store("cannot read the month before's report"))?;
    Ok(match previous {
        Some(stored) => decode(&stored)?.closing_readings,
        None => ClosingReadings::new(),
    })
}

/// The org's month counters: org-wide and per project, each meter's month bucket.
async fn month_usage(
    usage: &dyn UsageStore,
    org: &OrgId,
    period: Month,
) -> Result<MonthUsage, OrgError> {
    let counters = month_counters(usage, org, period)
        .await
        .map_err(store("cannot read the month's counters"))?;
    MonthUsage::from_counters(counters, period).map_err(|_| OrgError::Overflow)
}

/// The org-wide month counter of one meter, now: what month close compares late usage
/// against and what plan-limit alerts compare allowances against.
pub(crate) async fn month_counter(
    usage: &dyn UsageStore,
    org: &OrgId,
    period: Month,
    meter: &MeterName,
) -> Result<Decimal, StoreError> {
    let series = usage
        .counter_series(&CounterQuery {
            org: org.clone(),
            project: None,
            meter: meter.clone(),
            granularity: Granularity::Month,
            from: period.start(),
            to: period.end(),
        })
        .await?;
    checked_sum(series.iter().map(|c| c.value))
        .map_err(|e| StoreError::Corrupt(format!("the month counters of {org} for {meter}: {e}")))
}

/// A closed month's time-weighted quantity of `meter` now, as month close would price it
/// with the readings stored now: the month's value × hours summed over the projects, each
/// carried in from its last reading of the month before, else `recorded` (the closing
/// readings of the month before's report).
async fn time_weighted_now(
    usage: &dyn UsageStore,
    org: &OrgId,
    month: Month,
    meter: &MeterName,
    recorded: Option<&CarryIns>,
) -> Result<Decimal, StoreError> {
    let store = keeps_readings(usage, meter)?;
    let recorded = recorded.cloned().unwrap_or_default();
    let carry = carry_ins_after(store, org, meter, month.prev(), &recorded).await?;
    let totals = month_totals(store, org, meter, month, &carry, month.end()).await?;
    checked_sum(totals.values().map(|t| t.value_hours))
        .map_err(|e| StoreError::Corrupt(format!("the time-weighted total of {meter}: {e}")))
}

/// Adjustment lines for usage applied to earlier months after their reports were stored
/// (see the [module doc](self)).
async fn late_adjustments(
    ports: ClosePorts<'_>,
    org: &OrgId,
    period: Month,
) -> Result<Vec<AdjustmentLine>, OrgError> {
    let mut oldest = period;
    for _ in 0..ADJUSTMENT_LOOKBACK_MONTHS {
        oldest = oldest.prev();
    }
    let stored = ports
        .reports
        .list_reports(org)
        .await
        .map_err(store("cannot list the org's reports"))?;
    let earlier = stored
        .iter()
        .filter(|r| r.period >= oldest && r.period < period)
        .map(decode)
        .collect::<Result<Vec<_>, _>>()?;
    // The report before the oldest, for its closing readings only (the carry-ins of the
    // oldest's time-weighted lines).
    let before = stored
        .iter()
        .find(|r| r.period == oldest.prev())
        .map(decode)
        .transpose()?;
    let none = ClosingReadings::new();
    let closing_of = |month: Month| {
        earlier
            .iter()
            .chain(&before)
            .find(|r| r.period == month)
            .map_or(&none, |r| &r.closing_readings)
    };

    // What each (month, meter) was billed so far: adjustments on later reports supersede
    // the line (reports are oldest first, so the last one seen is the latest).
    let mut billed: BTreeMap<(Month, MeterName), Decimal> = BTreeMap::new();
    for report in &earlier {
        for line in &report.lines {
            billed.insert((report.period, line.meter.clone()), line.quantity);
        }
    }
    for report in &earlier {
        for adj in &report.adjustments {
            if let Some(q) = billed.get_mut(&(adj.period, adj.meter.clone())) {
                *q = adj.corrected_quantity;
            }
        }
    }

    let mut out = Vec::new();
    for report in &earlier {
        for line in &report.lines {
            let so_far = billed
                .get(&(report.period, line.meter.clone()))
                .copied()
                .unwrap_or(line.quantity);
            // A time-weighted meter's line is value × hours, which its counter (the latest
            // reading) cannot check: it is priced again from the readings as they are now.
            let now = if report.closing_readings.contains_key(&line.meter) {
                let recorded = closing_of(report.period.prev()).get(&line.meter);
                time_weighted_now(ports.usage, org, report.period, &line.meter, recorded).await
            } else {
                month_counter(ports.usage, org, report.period, &line.meter).await
            }
            .map_err(store("cannot read a closed month's counter"))?;
            if now == so_far {
                continue;
            }
            // The closed month's own price for the meter, as its line recorded it.
            let price = MeterPrice {
                meter: line.meter.clone(),
                description: line.description.clone(),
                unit: line.unit.clone(),
                price_unit: line.price_unit.clone(),
                price_unit_size: line.price_unit_size,
                included: Some(line.included).filter(|i| !i.is_zero()),
                pricing: line.pricing.clone(),
            };
            let before = price_line(&price, so_far, line.discount_percent)?;
            let after = price_line(&price, now, line.discount_percent)?;
            let diff = |a: Money, b: Money| {
                let mut d = a.amount() - b.amount();
                d.rescale(2);
                Money::new(d)
            };
            out.push(AdjustmentLine {
                period: report.period,
                meter: line.meter.clone(),
                reason: format!(
                    "usage applied after {} was billed: {} → {} {}",
                    report.period,
                    so_far.normalize(),
                    now.normalize(),
                    line.unit
                ),
                invoiced_quantity: so_far,
                corrected_quantity: now,
                list_amount: diff(after.list_amount, before.list_amount),
                discount: diff(after.discount, before.discount),
                amount: diff(after.amount, before.amount),
            });
        }
    }
    Ok(out)
}
