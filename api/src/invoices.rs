//! `GET /v1/orgs/{org_id}/invoices/upcoming` (the month so far, priced, and projected to
//! month end) and `GET /v1/orgs/{org_id}/invoices` (the closed months' reports with their
//! Stripe status), for anyone who may read the org's usage (`usage.read`: every role).
//!
//! The upcoming invoice is `tally_core::upcoming::upcoming_invoice` (month close's
//! engine, `tally_core::report::price_month`, on the plan month close would bill and the
//! stored month counters; see that module for the projection), with the catalogue version
//! in force for the month and the org's price overrides applied exactly as month close
//! applies them (`tally_core::overrides`), so the preview's lines say which version and
//! overrides priced them. Overrides are read here, never written: only the operator sets
//! them (`tally org override`). Counters read are the
//! stored ones (what the aggregator applied, within its 200 ms batching of ingest).

use axum::Json;
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tally_core::period::Month;
use tally_core::plan::billed_plan;
use tally_core::ports::SyncStep;
use tally_core::report::{MonthUsage, PricingError, UsageReport};

use tally_core::overrides::apply_overrides;
use tally_core::ports::effective_version;
use tally_core::upcoming::{UpcomingInvoice, upcoming_invoice_held};

use crate::ApiState;
use crate::http::{ApiError, page_limit};
use crate::mgmt::{MgmtError, OrgCaller};
use crate::roles::Action;

/// Default page size of the invoice list.
pub const DEFAULT_INVOICES_PAGE: usize = 12;
/// Largest page size of the invoice list.
pub const MAX_INVOICES_PAGE: usize = 100;

fn pricing_failed(e: PricingError) -> ApiError {
    ApiError::Internal(format!("upcoming invoice: {e}"))
}

/// `GET /v1/orgs/{org_id}/invoices/upcoming` (`usage.read`).
pub(crate) async fn upcoming(at: OrgCaller) -> Result<Json<UpcomingInvoice>, MgmtError> {
    let (state, auth) = at.authorize(Action::UsageRead).await?;
    let org = state.org(&auth.org).await?;
    let now = state.clock.now();
    let period = Month::of(now);
    let history = state.tenants.plan_history(&org.id).await?;
    let plan = billed_plan(org.plan, &history, period);
    let counters = tally_core::ports::month_counters(&*state.usage, &org.id, period).await?;
    let mut usage = MonthUsage::from_counters(counters, period)
        .map_err(|e| ApiError::Internal(format!("upcoming invoice: {e}")))?;
    let (catalogue, version) = catalogue_of(&state, period).await?;
    let meters = catalogue.meter_catalogue();
    // Time-weighted meters: value × hours up to now, carried in as month close will (last
    // month's last reading, else its report's closing reading), and the readings held now,
    // which the projection holds to month end.
    let recorded = match &state.billing {
        Some(billing) => match billing.reports.get_report(&org.id, period.prev()).await? {
            Some(stored) => {
                serde_json::from_str::<UsageReport>(&stored.body)
                    .map_err(|e| {
                        ApiError::Internal(format!("the report of {}: {e}", stored.period))
                    })?
                    .closing_readings
            }
            None => Default::default(),
        },
        None => Default::default(),
    };
    let carry = tally_core::ports::month_carry_ins(
        &*state.usage,
        &meters,
        &org.id,
        period.prev(),
        &recorded,
    )
    .await?;
    let held = tally_core::ports::time_weighted_month(
        &*state.usage,
        &meters,
        &org.id,
        period,
        &carry,
        now,
        &mut usage,
    )
    .await?;
    let overrides = match &state.pricing {
        Some(p) => p.overrides.list_overrides(&org.id).await?,
        None => Vec::new(),
    };
    let priced = apply_overrides(catalogue.plan(plan), &version, &overrides, period)
        .map_err(pricing_failed)?;
    let invoice = upcoming_invoice_held(&org.id, &priced, &meters, &usage, &held, now)
        .map_err(pricing_failed)?;
    Ok(Json(invoice))
}

/// The catalogue that prices `period` and its label, as month close finds it
/// (`tally_billing::versions::catalogue_for`, which this crate may not call): the stored
/// version in force for the month, else the process's catalogue (`file`, or `builtin` when
/// it is the built-in one).
async fn catalogue_of(
    state: &ApiState,
    period: Month,
) -> Result<(Arc<tally_core::Catalogue>, String), MgmtError> {
    let fallback = state.prices()?;
    let Some(pricing) = &state.pricing else {
        return Ok((fallback.clone(), fallback_label(&fallback)));
    };
    let listed = pricing.versions.list_catalogue_versions().await?;
    let Some(number) = effective_version(&listed, period) else {
        return Ok((fallback.clone(), fallback_label(&fallback)));
    };
    let stored = pricing
        .versions
        .get_catalogue_version(number)
        .await?
        .ok_or_else(|| {
            ApiError::Internal(format!("catalogue version {number} was listed but is gone"))
        })?;
    let catalogue = tally_core::Catalogue::from_json(&stored.body, &format!("version {number}"))
        .map_err(|e| ApiError::Internal(format!("stored catalogue version {number}: {e}")))?;
    Ok((Arc::new(catalogue), number.to_string()))
}

fn fallback_label(catalogue: &tally_core::Catalogue) -> String {
    if tally_core::Catalogue::builtin().is_ok_and(|b| b == *catalogue) {
        "builtin".into()
    } else {
        "file".into()
    }
}

/// Where a closed month's Stripe invoice stands, from the sync ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeStatus {
    /// `not_synced` (nothing recorded: Stripe off, or not run yet), `in_progress` (a rerun
    /// resumes), `finalized`, `paid` or `payment_failed` (as Stripe's webhooks said).
    pub status: String,
    /// The Stripe invoice id, once created.
    pub invoice_id: Option<String>,
    /// The invoice's hosted page (Stripe's `hosted_invoice_url`), recorded by the sync when
    /// it finalizes the invoice; `null` before that, or when Stripe gave none.
    pub hosted_url: Option<String>,
}

/// The Stripe status of a month from its recorded sync steps (the same reading as `tally
/// report`).
pub fn stripe_status(steps: &[SyncStep]) -> StripeStatus {
    let step = |name: &str| steps.iter().find(|s| s.step == name).map(|s| &s.result);
    let status = if step("webhook:invoice.paid").is_some() {
        "paid"
    } else if step("webhook:invoice.payment_failed").is_some() {
        "payment_failed"
    } else if step("finalize").is_some() {
        "finalized"
    } else if steps.is_empty() {
        "not_synced"
    } else {
        "in_progress"
    };
    StripeStatus {
        status: status.to_owned(),
        invoice_id: step("invoice").cloned(),
        hosted_url: step("hosted_url").cloned(),
    }
}

/// One closed month in the invoice list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceSummary {
    /// The month, `YYYY-MM`.
    pub period: String,
    /// The plan it was billed on.
    pub plan: String,
    /// `usd`.
    pub currency: String,
    /// The report's total.
    pub total: String,
    /// When month close stored the report.
    pub closed_at: String,
    /// Its Stripe invoice.
    pub stripe: StripeStatus,
    /// The catalogue version that priced it (a number, `file` or `builtin`); absent on
    /// reports stored before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalogue_version: Option<String>,
    /// The price overrides that applied to the month; absent when none did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<String>,
}

impl InvoiceSummary {
    /// The summary of a stored report and its Stripe sync steps, as the API and
    /// `tally invoice list` show it; fails if the stored report does not decode.
    pub fn of(
        stored: &tally_core::ports::StoredReport,
        steps: &[SyncStep],
    ) -> Result<Self, serde_json::Error> {
        let report: UsageReport = serde_json::from_str(&stored.body)?;
        Ok(Self {
            period: stored.period.to_string(),
            plan: report.plan.as_str().to_owned(),
            currency: report.currency,
            total: report.total.to_string(),
            closed_at: stored
                .created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            stripe: stripe_status(steps),
            catalogue_version: report.catalogue_version,
            overrides: report.overrides.iter().map(ToString::to_string).collect(),
        })
    }
}

/// The answer of `GET /v1/orgs/{org_id}/invoices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoicesResponse {
    /// Closed months, newest first.
    pub invoices: Vec<InvoiceSummary>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<String>,
}

/// The query of the list.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct InvoicesParams {
    /// Page size, 1 to 100 (default 12).
    pub limit: Option<String>,
    /// Only months before this one, `YYYY-MM` (the previous page's `next_before`).
    pub before: Option<String>,
}

fn bad(field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_query", field, message.into())
}

/// `GET /v1/orgs/{org_id}/invoices` (`usage.read`).
pub(crate) async fn list(
    at: OrgCaller,
    query: Result<Query<InvoicesParams>, QueryRejection>,
) -> Result<Json<InvoicesResponse>, MgmtError> {
    let (state, auth) = at.authorize(Action::UsageRead).await?;
    let Query(params) = query.map_err(|e| bad("query", format!("invalid query: {e}")))?;
    let limit = page_limit(
        params.limit.as_deref(),
        DEFAULT_INVOICES_PAGE,
        MAX_INVOICES_PAGE,
    )
    .map_err(|m| bad("limit", m))?;
    let before = match params.before.as_deref() {
        None => None,
        Some(s) if s.len() <= 7 => {
            Some(Month::parse(s).map_err(|_| bad("before", "before must be a month, YYYY-MM"))?)
        }
        Some(_) => return Err(bad("before", "before must be a month, YYYY-MM").into()),
    };
    let billing = state.billing()?;
    let org = state.org(&auth.org).await?;
    let mut stored = billing.reports.list_reports(&org.id).await?;
    stored.retain(|r| before.is_none_or(|b| r.period < b));
    stored.sort_by_key(|r| std::cmp::Reverse(r.period));
    let more = stored.len() > limit;
    stored.truncate(limit);
    let mut invoices = Vec::with_capacity(stored.len());
    for r in &stored {
        let steps = billing.sync.list_steps(&org.id, r.period).await?;
        invoices.push(
            InvoiceSummary::of(r, &steps).map_err(|e| {
                ApiError::Internal(format!("the stored report of {}: {e}", r.period))
            })?,
        );
    }
    let next_before = more
        .then(|| stored.last().map(|r| r.period.to_string()))
        .flatten();
    Ok(Json(InvoicesResponse {
        invoices,
        next_before,
    }))
}
