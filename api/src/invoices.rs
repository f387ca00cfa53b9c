//! `GET /v1/orgs/{org_id}/invoices/upcoming` (the month so far, priced, and projected to
//! month end) and `GET /v1/orgs/{org_id}/invoices` (the closed months' reports with their
//! Stripe status), for anyone who may read the org's usage (`usage.read`: every role).
//!
//! The upcoming invoice is `tally_core::upcoming::upcoming_invoice` (month close's
//! engine, `tally_core::report::price_month`, on the plan month close would bill and the
//! stored month counters; see that module for the projection). Counters read are the
//! stored ones (what the aggregator applied, within its 200 ms batching of ingest).

use axum::Json;
use axum::extract::Query;
use axum::extract::State;
use axum::extract::rejection::QueryRejection;
use serde::{Deserialize, Serialize};
use tally_core::period::Month;
use tally_core::plan::billed_plan;
use tally_core::ports::SyncStep;
use tally_core::report::{MonthUsage, PricingError, UsageReport};
use tally_core::upcoming::{UpcomingInvoice, upcoming_invoice};

use crate::ApiState;
use crate::auth::Caller;
use crate::http::ApiError;
use crate::mgmt::{MgmtError, PathParams};
use crate::roles::Action;

/// Default page size of the invoice list.
pub const DEFAULT_INVOICES_PAGE: usize = 12;
/// Largest page size of the invoice list.
pub const MAX_INVOICES_PAGE: usize = 100;

fn pricing_failed(e: PricingError) -> ApiError {
    ApiError::Internal(format!("upcoming invoice: {e}"))
}

/// `GET /v1/orgs/{org_id}/invoices/upcoming` (`usage.read`).
pub(crate) async fn upcoming(
    State(state): State<ApiState>,
    caller: Caller,
    PathParams(org): PathParams<String>,
) -> Result<Json<UpcomingInvoice>, MgmtError> {
    let auth = caller.authorize(&state, &org, Action::UsageRead).await?;
    let org = state.org(&auth.org).await?;
    let now = state.clock.now();
    let period = Month::of(now);
    let history = state.tenants.plan_history(&org.id).await?;
    let plan = billed_plan(org.plan, &history, period);
    let counters = state.usage.stored_counters(&org.id, period).await?;
    let usage = MonthUsage::from_counters(counters, period)
        .map_err(|e| ApiError::Internal(format!("upcoming invoice: {e}")))?;
    let prices = state.prices()?;
    let invoice = upcoming_invoice(&org.id, prices.plan(plan), &state.catalogue, &usage, now)
        .map_err(pricing_failed)?;
    Ok(Json(invoice))
}

/// Where a closed month's Stripe invoice stands, from the sync ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeStatus {
    /// `not_synced` (nothing recorded: Stripe off, or not run yet), `in_progress` (a rerun
    /// resumes), `finalized`, `paid` or `payment_failed` (as Stripe's webhooks said).
    pub status: String,
    /// The Stripe invoice id, once created.
    pub invoice_id: Option<String>,
    /// The invoice's hosted page, when one is recorded (the sync does not record it yet, so
    /// this is `null` today).
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
    State(state): State<ApiState>,
    caller: Caller,
    PathParams(org): PathParams<String>,
    query: Result<Query<InvoicesParams>, QueryRejection>,
) -> Result<Json<InvoicesResponse>, MgmtError> {
    let auth = caller.authorize(&state, &org, Action::UsageRead).await?;
    let Query(params) = query.map_err(|e| bad("query", format!("invalid query: {e}")))?;
    let limit = match params.limit.as_deref() {
        None => DEFAULT_INVOICES_PAGE,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_INVOICES_PAGE).contains(n))
            .ok_or_else(|| bad("limit", format!("limit must be 1 to {MAX_INVOICES_PAGE}")))?,
    };
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
