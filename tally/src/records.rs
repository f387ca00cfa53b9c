//! `tally usage`, `tally audit` and `tally report list|show`: what the operator reads
//! without minting a token and calling the HTTP API.
//!
//! `usage` is `GET /v1/usage` for any org: the same parameters, checked by the same code
//! (`tally_api::usage::UsageRequest`) with the same bounds and refusals, and `--json` prints
//! the same answer. `audit` is `GET /v1/orgs/{org_id}/audit` with the same filters
//! (`tally_api::audit::audit_query`). `report` reads the reports month close stored, with
//! their lines, and where the org's Stripe invoice for the month stands according to the
//! sync ledger (the steps `tally bill` recorded and the webhooks Stripe delivered).

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::Value;
use tally_api::audit::{AuditParams, AuditResponse};
use tally_api::usage::{UsageParams, UsageRequest, parse_mode};
use tally_billing::sync::FinalizeRecord;
use tally_billing::{AdjustmentLine, UsageReport};
use tally_core::ports::StoredReport;
use tally_core::tenant::{AuditOutcome, AuditRecord, KeyMode};
use tally_core::{Month, OrgId};

use crate::backend::Stores;
use crate::manage::{any_org, api_refusal, now, open, org_id, refusal};
use crate::output::{print, table_of, usage_headers, usage_row, when};
use crate::settings::Common;

/// `tally usage` flags: the query parameters of `GET /v1/usage`.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// The organization's id (org_…).
    #[arg(long)]
    org: String,
    /// The meter (one of the catalogue's).
    #[arg(long)]
    meter: String,
    /// Bucket width: month, day or hour.
    #[arg(long, default_value = "day")]
    granularity: String,
    /// Inclusive start, RFC 3339 or YYYY-MM-DD (midnight UTC); the start of the month of
    /// `--to` (or of now) by default. Moved back to the start of its bucket.
    #[arg(long)]
    from: Option<String>,
    /// Exclusive end, RFC 3339 or YYYY-MM-DD; now by default.
    #[arg(long)]
    to: Option<String>,
    /// One project (prj_…) instead of the whole organization.
    #[arg(long)]
    project: Option<String>,
    /// live (the default) or test: test-mode usage is kept apart and never billed.
    #[arg(long)]
    mode: Option<String>,
}

/// Runs `tally usage`.
pub async fn usage(common: &Common, args: UsageArgs) -> anyhow::Result<()> {
    let org = org_id(&args.org)?;
    let mode = parse_mode(args.mode.as_deref())
        .map_err(api_refusal)?
        .unwrap_or(KeyMode::Live);
    let params = UsageParams {
        meter: Some(args.meter),
        granularity: Some(args.granularity),
        from: args.from,
        to: args.to,
        project_id: args.project,
        org_id: Some(org.to_string()),
        mode: Some(mode.as_str().to_owned()),
        ..UsageParams::default()
    };
    let catalogue = common.load_catalogue()?.meter_catalogue();
    let req = UsageRequest::parse(&params, &catalogue, now()?).map_err(api_refusal)?;
    let store = open(common).await?;
    any_org(&store, &org).await?;
    if let Some(id) = &req.project
        && store
            .tenants
            .get_project(&org, id)
            .await
            .map_err(|e| refusal(e.into()))?
            .is_none()
    {
        return Err(api_refusal(tally_api::usage::project_not_found(id)));
    }
    let answer = tally_api::usage::read(&*store.usage, Some(&*store.series), &org, mode, req)
        .await
        .map_err(api_refusal)?;
    print(common.json, &answer, |u| {
        let head = format!(
            "{} {} usage of {}{}, by {}, {} to {}",
            u.meter,
            u.mode,
            u.org_id,
            u.project_id
                .as_deref()
                .map(|p| format!(" project {p}"))
                .unwrap_or_default(),
            u.granularity,
            u.from,
            u.to
        );
        let series = table_of(
            &["START", "VALUE"],
            &u.series,
            "no usage in this range",
            |p| vec![p.start.clone(), p.value.clone()],
        );
        format!("{head}\n{series}")
    })
}

/// `tally audit` flags: the filters of `GET /v1/orgs/{org_id}/audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The organization's id (org_…).
    #[arg(long)]
    org: String,
    /// Records at or after this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long)]
    from: Option<String>,
    /// Records before this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long)]
    to: Option<String>,
    /// Only this actor: a user id (usr_…), apikey:<key id>, or cli for the operator.
    #[arg(long)]
    user: Option<String>,
    /// Only this action (org.update, key.revoke, …).
    #[arg(long)]
    action: Option<String>,
    /// Only this resource (project:prj_…, key:key_…, …).
    #[arg(long)]
    resource: Option<String>,
    /// Page size, 1 to 200 (50 by default).
    #[arg(long)]
    limit: Option<String>,
    /// The next cursor a previous page printed.
    #[arg(long)]
    cursor: Option<String>,
}

/// Runs `tally audit`: one page of the org's audit trail, newest first.
pub async fn audit(common: &Common, args: AuditArgs) -> anyhow::Result<()> {
    let org = org_id(&args.org)?;
    let params = AuditParams {
        from: args.from,
        to: args.to,
        user: args.user,
        action: args.action,
        resource: args.resource,
        limit: args.limit,
        cursor: args.cursor,
    };
    let query = tally_api::audit::audit_query(org.clone(), params, now()?).map_err(api_refusal)?;
    let store = open(common).await?;
    any_org(&store, &org).await?;
    let page = store
        .tenants
        .list_audit(&query)
        .await
        .map_err(|e| refusal(e.into()))?;
    let answer = AuditResponse {
        records: page.records,
        next_cursor: page.next,
    };
    print(common.json, &answer, |a| {
        let mut out = table_of(
            &["AT", "ACTOR", "ACTION", "RESOURCE", "OUTCOME", "REASON"],
            &a.records,
            "no audit records",
            audit_row,
        );
        if let Some(c) = &a.next_cursor {
            out.push_str(&format!("\nmore: pass --cursor {c}"));
        }
        out
    })
}

/// A row of `tally audit`.
fn audit_row(r: &AuditRecord) -> Vec<String> {
    vec![
        when(Some(r.at)),
        r.actor.clone(),
        r.action.clone(),
        r.resource.clone(),
        match r.outcome {
            AuditOutcome::Allowed => "allowed".to_owned(),
            AuditOutcome::Refused => "refused".to_owned(),
        },
        r.reason.clone().unwrap_or_else(|| "-".to_owned()),
    ]
}

/// `tally report …`
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// List the stored usage reports, oldest month first, with their totals and where each
    /// Stripe invoice stands.
    List {
        /// Only this organization (all by default).
        #[arg(long)]
        org: Option<String>,
        /// Only this month, YYYY-MM.
        #[arg(long)]
        period: Option<String>,
    },
    /// Show one stored report: its lines, adjustments and totals, and its Stripe invoice.
    Show {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
        /// The month, YYYY-MM.
        #[arg(long)]
        period: String,
    },
}

/// Where an org's Stripe invoice for a month stands, from the sync ledger.
#[derive(Debug, Serialize)]
struct StripeState {
    /// `not_synced` (no step recorded: Stripe off, or not run yet), `in_progress` (a rerun
    /// of `tally bill` resumes), `finalized`, `paid` or `payment_failed` (as Stripe's
    /// webhooks said).
    status: &'static str,
    /// The Stripe customer, once recorded.
    customer: Option<String>,
    /// The Stripe invoice, once created.
    invoice: Option<String>,
    /// Stripe's invoice status at finalizing (`open`, or `paid` for a zero total).
    invoice_status: Option<String>,
    /// The invoice total in minor units, as Stripe reported it at finalizing.
    total_minor: Option<i64>,
    /// How many invoice items were added.
    items: usize,
}

async fn stripe_state(store: &Stores, org: &OrgId, period: Month) -> anyhow::Result<StripeState> {
    let steps = store
        .sync
        .list_steps(org, period)
        .await
        .map_err(|e| refusal(e.into()))?;
    let customer = store
        .sync
        .get_customer(org)
        .await
        .map_err(|e| refusal(e.into()))?;
    let step = |name: &str| steps.iter().find(|s| s.step == name).map(|s| &s.result);
    let finalized = step("finalize").and_then(|r| FinalizeRecord::decode(r));
    let status = if step("webhook:invoice.paid").is_some() {
        "paid"
    } else if step("webhook:invoice.payment_failed").is_some() {
        "payment_failed"
    } else if finalized.is_some() {
        "finalized"
    } else if steps.is_empty() {
        "not_synced"
    } else {
        "in_progress"
    };
    Ok(StripeState {
        status,
        customer: if steps.is_empty() { None } else { customer },
        invoice: step("invoice").cloned(),
        invoice_status: finalized.as_ref().map(|f| f.status.clone()),
        total_minor: finalized.map(|f| f.total_minor),
        items: steps.iter().filter(|s| s.step.starts_with("item:")).count(),
    })
}

/// One stored report as `tally report` prints it.
#[derive(Debug, Serialize)]
struct ReportOut {
    org_id: OrgId,
    period: Month,
    stored_at: chrono::DateTime<chrono::Utc>,
    /// The report as month close stored it (the shape `tally bill --json` prints).
    report: Value,
    stripe: StripeState,
}

async fn report_out(store: &Stores, stored: StoredReport) -> anyhow::Result<ReportOut> {
    let report: Value = serde_json::from_str(&stored.body)
        .with_context(|| format!("the stored report of {} {}", stored.org_id, stored.period))?;
    Ok(ReportOut {
        stripe: stripe_state(store, &stored.org_id, stored.period).await?,
        org_id: stored.org_id,
        period: stored.period,
        stored_at: stored.created_at,
        report,
    })
}

/// A report's field as text, `-` when absent.
fn field(report: &Value, name: &str) -> String {
    match &report[name] {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// What `tally report list --json` prints.
#[derive(Serialize)]
struct ReportsOut {
    reports: Vec<ReportOut>,
}

/// Runs a `report` command.
pub async fn report(common: &Common, cmd: ReportCommand) -> anyhow::Result<()> {
    match cmd {
        ReportCommand::List { org, period } => {
            let org = org.as_deref().map(org_id).transpose()?;
            let period = period
                .as_deref()
                .map(|p| Month::parse(p).context("--period"))
                .transpose()?;
            let store = open(common).await?;
            let orgs = match org {
                Some(o) => {
                    any_org(&store, &o).await?;
                    vec![o]
                }
                None => store.tenants.list_org_ids().await?,
            };
            let mut reports = Vec::new();
            for o in &orgs {
                for stored in store.reports.list_reports(o).await? {
                    if period.is_none_or(|p| p == stored.period) {
                        reports.push(report_out(&store, stored).await?);
                    }
                }
            }
            print(common.json, &ReportsOut { reports }, |r| {
                table_of(
                    &[
                        "ORG", "PERIOD", "PLAN", "TOTAL", "CURRENCY", "STORED", "STRIPE", "INVOICE",
                    ],
                    &r.reports,
                    "no stored reports",
                    report_row,
                )
            })
        }
        ReportCommand::Show { org, period } => {
            let org = org_id(&org)?;
            let period = Month::parse(&period).context("--period")?;
            let store = open(common).await?;
            any_org(&store, &org).await?;
            let stored = store
                .reports
                .get_report(&org, period)
                .await?
                .ok_or_else(|| {
                    api_refusal(tally_api::ApiError::not_found(
                        "period",
                        format!(
                            "no stored report of {org} for {period} (has tally bill closed it?)"
                        ),
                    ))
                })?;
            let out = report_out(&store, stored).await?;
            print(common.json, &out, show_report)
        }
    }
}

/// A row of `tally report list`.
fn report_row(o: &ReportOut) -> Vec<String> {
    vec![
        o.org_id.to_string(),
        o.period.to_string(),
        field(&o.report, "plan"),
        field(&o.report, "total"),
        field(&o.report, "currency"),
        when(Some(o.stored_at)),
        o.stripe.status.to_owned(),
        o.stripe.invoice.clone().unwrap_or_else(|| "-".to_owned()),
    ]
}

/// A row of the adjustments of `tally report show`.
fn adjustment_row(a: &AdjustmentLine) -> Vec<String> {
    vec![
        a.period.to_string(),
        a.meter.to_string(),
        a.invoiced_quantity.to_string(),
        a.corrected_quantity.to_string(),
        a.amount.to_string(),
        a.reason.clone(),
    ]
}

/// The human text of `tally report show`: the lines as a table, then the totals and the
/// invoice. A report this build cannot read as a `UsageReport` is shown as its JSON.
fn show_report(o: &ReportOut) -> String {
    let Ok(r) = serde_json::from_value::<UsageReport>(o.report.clone()) else {
        return serde_json::to_string_pretty(&o.report).unwrap_or_default();
    };
    let mut out = vec![format!(
        "report of {} for {} on plan {} ({}), stored {}",
        r.org_id,
        r.period,
        r.plan,
        r.currency,
        when(Some(o.stored_at))
    )];
    out.push(table_of(
        &usage_headers(&["UNIT PRICE", "DISCOUNT", "AMOUNT"]),
        &r.lines,
        "no usage lines",
        |l| {
            usage_row(
                [&l.meter, &l.quantity, &l.included, &l.billable],
                [
                    l.unit_price.to_string(),
                    l.discount.to_string(),
                    l.amount.to_string(),
                ],
            )
        },
    ));
    if !r.adjustments.is_empty() {
        out.push("adjustments:".to_owned());
        out.push(table_of(
            &[
                "PERIOD",
                "METER",
                "INVOICED",
                "CORRECTED",
                "AMOUNT",
                "REASON",
            ],
            &r.adjustments,
            "",
            adjustment_row,
        ));
    }
    out.push(format!(
        "flat fee {}, subtotal {}, discount {}, total {}",
        r.flat_fee, r.subtotal, r.discount, r.total
    ));
    let s = &o.stripe;
    out.push(format!(
        "stripe: {}{}{}",
        s.status,
        s.invoice
            .as_deref()
            .map(|i| format!(", invoice {i}"))
            .unwrap_or_default(),
        s.invoice_status
            .as_deref()
            .map(|st| format!(" ({st})"))
            .unwrap_or_default()
    ));
    out.join("\n")
}
